"""torch.compile per run: a fresh start for every run of a process, and a fallback to eager said out loud.

Hydra's basic launcher runs the jobs of a `-m` sweep one after another in one process. Dynamo keeps
its guards per code object (GPT.forward), not per model, so every job of a sweep adds its shapes,
dropout and train/eval modes to the same cache; at `torch._dynamo.config.recompile_limit` (8) it
stops compiling that function and runs it eagerly from then on, with one warning in the log. Here
each run starts from a dynamo as fresh as a new process (`torch._dynamo.reset()`), which keeps the
on-disk caches (inductor's FX graph cache, AOTAutograd's): a job whose graphs an earlier job
already built loads their kernels instead of generating them again.
"""

from __future__ import annotations

import logging
import time

import lightning as L
import torch

log = logging.getLogger("gptlab")

# dynamo's own logger, where it reports a recompile limit hit before running the frame eagerly
_DYNAMO_LOG = "torch._dynamo.convert_frame"
_LIMIT_HIT = "torch._dynamo hit config."


def fresh_start() -> None:
    """Forget every compiled graph and guard of earlier runs in this process (files on disk stay)."""
    torch._dynamo.reset()


def compile_model(model: torch.nn.Module, backend: str = "inductor", mode: str = "default") -> torch.nn.Module:
    """model wrapped by torch.compile after a fresh start of dynamo: the run's own recompile budget.
    mode: inductor's (default, reduce-overhead, max-autotune, max-autotune-no-cudagraphs)."""
    fresh_start()
    # torch.compile refuses a mode next to a backend other than inductor, even mode="default"
    return torch.compile(model, backend=backend, **({"mode": mode} if backend == "inductor" else {}))


class _FallbackHandler(logging.Handler):
    # dynamo offers no callback for a recompile limit hit; its warning on this logger is the signal
    def __init__(self, watch: CompileWatch):
        super().__init__(logging.WARNING)
        self.watch = watch

    def emit(self, record: logging.LogRecord) -> None:
        msg = record.getMessage()
        if msg.startswith(_LIMIT_HIT):
            self.watch.fell_back(msg)


class CompileWatch(L.Callback):
    """Time to the first optimizer step (first_step_s; compiling is most of it under compile=true)
    and, under compile=true, whether the model ran compiled to the end (compiled, compile_fallback)."""

    def __init__(self, compiled: bool):
        self.compile = compiled
        self.fallback: str | None = None
        self.first_step_s: float | None = None
        self._t0: float | None = None
        self._start_step = 0
        self._graphs0 = 0
        self._handler = _FallbackHandler(self)

    def fell_back(self, message: str) -> None:
        if self.fallback is not None:
            return
        lines = [s.strip() for s in message.splitlines()]
        # "torch._dynamo hit config.recompile_limit (8)", the function, the last guard that failed
        self.fallback = "; ".join(s for s in lines[:3] if s)
        log.warning(
            f"compile=true: torch.compile gave up and the model runs UNCOMPILED from here on ({self.fallback}); "
            "metrics.json records it as compile_fallback"
        )

    def setup(self, trainer, pl_module, stage: str) -> None:
        if self._t0 is None:  # the step-0 evaluation's setup comes first: it compiles the eval graph
            self._t0 = time.perf_counter()
            self._graphs0 = _graphs()
            if self.compile:
                dynamo_log = logging.getLogger(_DYNAMO_LOG)
                for h in [h for h in dynamo_log.handlers if isinstance(h, _FallbackHandler)]:
                    dynamo_log.removeHandler(h)  # an earlier run's, left by a run that failed before teardown
                dynamo_log.addHandler(self._handler)

    def teardown(self, trainer, pl_module, stage: str) -> None:
        if stage == "fit":
            logging.getLogger(_DYNAMO_LOG).removeHandler(self._handler)

    def on_train_start(self, trainer, pl_module) -> None:
        self._start_step = int(trainer.global_step)  # after a resume: the checkpoint's step, restored by now

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if self.first_step_s is None and trainer.global_step > self._start_step:
            if pl_module.device.type == "cuda":
                torch.cuda.synchronize(pl_module.device)  # once: the step's kernels, not only their launch
            self.first_step_s = round(time.perf_counter() - self._t0, 3)

    def results(self) -> dict:
        """metrics.json's keys: compiled (true: every step ran through torch.compile's graphs),
        compile_fallback (why it stopped compiling, or null), first_step_s."""
        graphs = _graphs() - self._graphs0
        if self.compile and graphs == 0 and self.fallback is None and self.first_step_s is not None:
            # dynamo stays silent on a function it gave up on earlier in this process
            self.fell_back("torch.compile captured no graph in this run: dynamo ran the model eagerly")
        return {
            "compiled": bool(self.compile and self.fallback is None and graphs > 0),
            "compile_fallback": self.fallback,
            "compiled_graphs": graphs if self.compile else 0,
            "first_step_s": self.first_step_s,
        }


def _graphs() -> int:
    # graphs dynamo captured in this process (a counter that reset() leaves alone)
    return int(torch._dynamo.utils.counters["stats"]["unique_graphs"])
