"""Lightning callbacks, one job each: the training.log writer, progress lines, the final
evaluation, and the non-finite loss guard."""

from __future__ import annotations

import logging
import math
import re
import time
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_only

from gptlab import startup
from gptlab.analysis import bits, loss_units, perplexity
from gptlab.errors import NonFiniteLossError
from gptlab.rundir import BEST, LAST, eval_line, write_text_atomic
from gptlab.training.loggers import log_by_tokens, log_metrics, log_text
from gptlab.training.scalars import ScalarSeries

log = logging.getLogger("gptlab")

# The line format of training.log. The guide's plot_loss.py reads it with
# r'step (\d+): train loss ([\d.]+), val loss ([\d.]+)' -- keep the two in step.


class TrainingLog(L.Callback):
    """After every evaluation: one line in <run dir>/training.log and on the console, and the
    history kept for metrics.json."""

    def __init__(
        self,
        path: str | Path,
        append: bool = False,
        tokens_per_step: int = 0,
        resumed: tuple[int, dict] | None = None,
        bits: tuple[str, float] = ("bpc", 1.0),
    ):
        self.path = Path(path)
        # ("bpc", 1) for char tokens; ("bpb", the val split's bytes per token) for BPE: val/bpc or val/bpb
        self.bits_unit, self.bytes_per_token = bits
        self.append = append
        self.tokens_per_step = tokens_per_step  # for the losses against tokens seen (TensorBoard by_tokens/)
        self.history: list[dict] = []
        self._replay: list[dict] = []  # evaluations restored from a checkpoint, logged again on resume
        self.resumes: list[dict] = []  # settings changed at each resume, kept in checkpoints for metrics.json
        self._resumed = resumed  # (step, {key: (old, new)}) of this resume, recorded once fit has started
        # wall-clock seconds at each evaluation since the run began (evaluations included; a resumed
        # run counts on from its checkpoint's last evaluation): what a change buys per second
        self._t0: float | None = None
        self._time_before = 0.0

    @rank_zero_only
    def setup(self, trainer, pl_module, stage: str) -> None:
        if self._t0 is None:
            self._t0 = time.perf_counter()  # the step-0 evaluation's setup, or a resumed fit's
        if not self.append and not self.history:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text("")
            self.append = True  # fit after the step-0 validate: keep appending

    @rank_zero_only
    def on_validation_end(self, trainer, pl_module) -> None:
        ev = pl_module.last_eval
        if "train" not in ev or "val" not in ev or trainer.sanity_checking:
            return
        rec = {"step": int(trainer.global_step), "train_loss": ev["train"], "val_loss": ev["val"]}
        rec["wall_time_s"] = round(self._time_before + time.perf_counter() - (self._t0 or time.perf_counter()), 3)
        self.history.append(rec)
        line = eval_line(rec["step"], rec["train_loss"], rec["val_loss"])
        with open(self.path, "a") as f:
            f.write(line + "\n")
        log.info(line)
        ppl, b = perplexity(rec["val_loss"]), bits(rec["val_loss"], self.bytes_per_token)
        units = {"val/ppl": ppl, f"val/{self.bits_unit}": b}
        log_metrics(trainer, {k: v for k, v in units.items() if v is not None}, step=rec["step"])
        if self.tokens_per_step:
            self._log_by_tokens(trainer, rec)

    def state_dict(self) -> dict:
        return {
            "history": self.history,
            "resumes": self.resumes,
        }  # in checkpoints: metrics.json of a resumed run covers it all

    def on_fit_start(self, trainer, pl_module) -> None:
        if self._resumed:
            step, changed = self._resumed
            self.resumes.append({"step": step, "changed": {k: list(v) for k, v in changed.items()}})
            self._resumed = None
            if rank_zero_only.rank == 0:
                # not an evaluation line: the guide's parse_log and gptlab's both skip it
                with open(self.path, "a") as f:
                    f.write(
                        f"# resumed at step {step} with "
                        + ", ".join(f"{k}={new} (was {old})" for k, (old, new) in changed.items())
                        + "\n"
                    )
        if rank_zero_only.rank != 0:
            return
        if self._replay and self.tokens_per_step:
            # a resumed run's TensorBoard writer purges every event at or after its first step, in all
            # tags (the CSV logger drops those rows alike) -- by_tokens/ steps (tokens) are far larger
            # than optimizer steps, so the whole curve would go; write the evaluations before the
            # checkpoint again, to those loggers only
            for rec in self._replay:
                self._log_by_tokens(trainer, rec, replay=True)
            self._replay = []

    def _log_by_tokens(self, trainer, rec: dict, replay: bool = False) -> None:
        # the same losses with tokens seen as the x axis: runs with different batch sizes compare fairly
        log_by_tokens(
            trainer,
            {"by_tokens/train_loss": rec["train_loss"], "by_tokens/val_loss": rec["val_loss"]},
            step=rec["step"],
            tokens=rec["step"] * self.tokens_per_step,
            replay=replay,
        )

    def load_state_dict(self, state: dict) -> None:
        self.history = list(state.get("history", []))
        self.resumes = list(state.get("resumes", []))
        self._time_before = float(self.history[-1].get("wall_time_s", 0.0)) if self.history else 0.0
        self._replay = list(self.history)
        if self.history and rank_zero_only.rank == 0 and self.path.is_file():
            # lines after the checkpoint's last evaluation belong to a stretch the resumed run
            # repeats (a run killed between an evaluation and its checkpoint); drop them so that
            # no step appears twice
            last = self.history[-1]["step"]
            lines = self.path.read_text().splitlines(keepends=True)
            keep = [ln for ln in lines if not ((m := re.match(r"step (\d+):", ln)) and int(m.group(1)) > last)]
            if len(keep) != len(lines):
                write_text_atomic(self.path, "".join(keep))

    def val_units(self, final: float | None, best: float | None) -> dict:
        """metrics.json's perplexity and bits per character / byte of the final and best val loss."""
        units = loss_units(final, best, self.bits_unit, self.bytes_per_token)
        if self.bits_unit == "bpb":
            units["val_bytes_per_token"] = self.bytes_per_token
        return units

    def best(self) -> dict | None:
        finite = [r for r in self.history if math.isfinite(r["val_loss"])]
        return min(finite, key=lambda r: r["val_loss"]) if finite else None


class ProgressLog(L.Callback):
    """Every log_interval optimizer steps: step/max_iters, loss, ms per step, tokens/s, MFU, learning
    rate and the time left, to the console and the logger. The loss is read from the device only
    here, so training does not wait on a host sync every step; time spent evaluating is not
    counted as step time (but is in the time left).

    Packed and padded batches (dicts) say how many of their slots hold real tokens: tokens/s then
    counts those only, and the line adds the padding efficiency (real tokens / slots).

    MFU (training.flops): tokens/s x the model's FLOPs per token over peak_flops (one device's)
    x the processes; without a peak (CPUs, GPUs not in the table) the line has none."""

    def __init__(self, log_interval: int, tokens_per_step: int, grad_monitor=None, peak_flops: float | None = None):
        self.log_interval = max(1, int(log_interval))
        self.tokens_per_step = tokens_per_step
        self.grad_monitor = grad_monitor  # a GradientMonitor whose latest figures join the line
        self.peak_flops = peak_flops  # one device's dense peak FLOP/s, or None: no MFU
        self._flops = 0.0  # the model's training FLOPs per token x processes / peak_flops: tok/s -> MFU
        self._fit_t0, self._fit_step0 = 0.0, 0  # for the time left: evaluations included
        self._t0 = None
        self._steps_at_t0 = 0
        self._eval_time = 0.0
        self._eval_t0 = None
        self._last_logged = -1
        self.train_time = 0.0  # seconds in training steps, evaluation excluded
        self.trained_steps = 0
        self.trained_tokens = 0  # real tokens when batches count them
        self._real = self._slots = 0  # of dict batches since the last line (counted on the host)
        self.real_tokens = self.slots = 0  # all the run's dict batches (this process)
        self.curve: list[list] = []  # [step, mean training loss over the interval]: metrics.json's train_curve

    def on_train_start(self, trainer, pl_module) -> None:
        self._t0 = time.perf_counter()
        self._steps_at_t0 = trainer.global_step
        self._fit_t0, self._fit_step0 = self._t0, trainer.global_step
        if self.peak_flops:
            self._flops = pl_module.model.flops_per_token() / (self.peak_flops * trainer.world_size)

    def on_validation_start(self, trainer, pl_module) -> None:
        if trainer.training or trainer.state.fn == "fit":
            self._eval_t0 = time.perf_counter()

    def on_validation_end(self, trainer, pl_module) -> None:
        if self._eval_t0 is not None:
            self._eval_time += time.perf_counter() - self._eval_t0
            self._eval_t0 = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if isinstance(batch, dict):
            self._real += batch["real"]
            self._slots += batch["x"].numel()
        step = trainer.global_step
        # act once per optimizer step, after its last micro-batch
        if step == self._last_logged or step % self.log_interval != 0 or step == 0:
            return
        if (batch_idx + 1) % trainer.accumulate_grad_batches != 0:
            return
        self._last_logged = step
        loss_t = pl_module.pop_train_loss()
        if loss_t is None:
            return
        loss = float(loss_t)  # the one host sync per log_interval
        now = time.perf_counter()
        steps = step - self._steps_at_t0
        elapsed = now - self._t0 - self._eval_time
        self.train_time += elapsed
        self.trained_steps += steps
        self._t0, self._steps_at_t0, self._eval_time = now, step, 0.0
        ms = 1000.0 * elapsed / max(steps, 1)
        tokens, efficiency = self.tokens_per_step * steps, None
        if self._slots:  # every process draws alike batches: scale this one's count to all of them
            tokens, efficiency = self._real * trainer.world_size, self._real / self._slots
            self.real_tokens, self.slots = self.real_tokens + self._real, self.slots + self._slots
            self._real = self._slots = 0
        self.trained_tokens += tokens
        tok_s = tokens / max(elapsed, 1e-9)
        lr = trainer.optimizers[0].param_groups[0]["lr"]
        self.curve.append([step, round(loss, 5)])
        metrics = {"train/batch_loss": loss, "train/lr": lr, "perf/tokens_per_sec": tok_s, "perf/ms_per_step": ms}
        if efficiency is not None:
            metrics["perf/padding_efficiency"] = efficiency
        if self._flops:
            metrics["perf/mfu"] = tok_s * self._flops
        log_metrics(trainer, metrics, step=step)
        if trainer.is_global_zero:
            log.info(self._line(trainer, step, loss, ms, tok_s, lr, efficiency, now))

    def _line(self, trainer, step, loss, ms, tok_s, lr, efficiency, now) -> str:
        line = f"iter {step}/{trainer.max_steps}: loss {loss:.4f}, {ms:.1f} ms/step, {tok_s:,.0f} tok/s"
        if self._flops:
            line += f", MFU {tok_s * self._flops:.1%}"
        line += f", lr {lr:.2e}"
        if efficiency is not None:
            line += f", padding efficiency {efficiency:.1%}"
        g = self.grad_monitor.latest if self.grad_monitor is not None else None
        if g is not None:
            line += f", grad norm {g['last']:.2f}" + (f" (clipped {g['clipped_frac']:.0%})" if g["clipped"] else "")
        # the time left at this run's pace so far, evaluations included
        per_step = (now - self._fit_t0) / max(step - self._fit_step0, 1)
        return line + f", ETA {duration(per_step * max(trainer.max_steps - step, 0))}"

    def state_dict(self) -> dict:
        return {"curve": self.curve}  # a resumed run's train_curve starts where the stopped one ended

    def load_state_dict(self, state: dict) -> None:
        self.curve = [list(p) for p in state.get("curve", [])]

    @property
    def tokens_per_second(self) -> float | None:
        if self.trained_steps == 0 or self.train_time <= 0:
            return None
        return self.trained_tokens / self.train_time

    @property
    def mfu(self) -> float | None:
        """MFU over the logged training steps (this process's view); None without a peak."""
        tok_s = self.tokens_per_second
        return tok_s * self._flops if tok_s is not None and self._flops else None

    @property
    def padding_efficiency(self) -> float | None:
        """Real tokens / slots over the logged training batches; None for random windows."""
        return self.real_tokens / self.slots if self.slots else None


class EvalClock(L.Callback):
    """Seconds spent in evaluations (eval_s) and the run's wall time they are a share of: from each
    evaluation's start (after NonFiniteGuard's read, which waits for the training steps queued on a
    GPU) to the end of the callbacks after it, samples (EvalSamples) included; the checkpoint written
    on a new best val loss is not (Lightning runs checkpoint callbacks after all others). The run's
    clock starts where TrainingLog's does; a resumed run counts on from its checkpoint's figures."""

    def __init__(self):
        self.eval_s = 0.0
        self._t0: float | None = None
        self._run_before = 0.0  # the run's seconds before this process (a resume)
        self._eval_t0: float | None = None

    def setup(self, trainer, pl_module, stage: str) -> None:
        if self._t0 is None:
            self._t0 = time.perf_counter()  # the step-0 evaluation's setup, or a resumed fit's

    def on_validation_start(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            self._eval_t0 = time.perf_counter()

    def on_validation_end(self, trainer, pl_module) -> None:
        self.eval_s += self._in_progress()
        self._eval_t0 = None

    def _in_progress(self) -> float:
        return 0.0 if self._eval_t0 is None else time.perf_counter() - self._eval_t0

    def run_s(self) -> float:
        return self._run_before + (0.0 if self._t0 is None else time.perf_counter() - self._t0)

    def state_dict(self) -> dict:
        # a checkpoint written during an evaluation (best.ckpt) counts it up to now
        return {"eval_s": self.eval_s + self._in_progress(), "run_s": self.run_s()}

    def load_state_dict(self, state: dict) -> None:
        self.eval_s, self._run_before = float(state.get("eval_s", 0.0)), float(state.get("run_s", 0.0))

    def results(self) -> dict:
        """metrics.json's eval_s and eval_share (of the run's wall time, evaluations included)."""
        run_s = self.run_s()
        return {"eval_s": round(self.eval_s, 3), "eval_share": round(self.eval_s / run_s, 4) if run_s > 0 else None}


def duration(seconds: float) -> str:
    """45s, 3m12s, 2h05m: a time to read at a glance."""
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


class StartupLine(L.Callback):
    """`ready in 3.1 s (command to step 0: imports 2.2 s, ...)` when the first training step of
    this process begins; gptlab.startup keeps the phases, metrics.json records them."""

    def __init__(self):
        self._evaluated = False

    def on_validation_start(self, trainer, pl_module) -> None:
        if startup.CLOCK.total is None and not self._evaluated:  # the step-0 evaluation (fresh runs)
            startup.mark("trainer")
            self._evaluated = True

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if startup.CLOCK.total is not None:
            return
        startup.CLOCK.ready("step-0 eval" if self._evaluated else "trainer")
        if trainer.is_global_zero:
            log.info(startup.CLOCK.line())


class FinalEvaluation(L.Callback):
    """Evaluate once more when training ends between two eval_interval marks, so the last
    reported val loss belongs to the final weights."""

    def __init__(self, max_iters: int, eval_interval: int):
        self.max_iters, self.eval_interval = max_iters, eval_interval

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step >= self.max_iters and trainer.global_step % self.eval_interval != 0:
            # Lightning validates when a stop is requested, then ends the fit
            trainer.should_stop = True


def _kept(trainer) -> str:
    """Which checkpoints hold the last good weights: only the ones that exist."""
    run_dir = Path(trainer.default_root_dir)
    kept = [name for name in (BEST, LAST) if (run_dir / name).is_file()]
    if not kept:
        return " (and none had been written before it)"
    return f" ({' / '.join(kept)} {'holds' if len(kept) == 1 else 'hold'} the last good weights)"


class NonFiniteGuard(L.Callback):
    """Stop at the first NaN/inf loss or gradient, before it can reach a checkpoint.

    Each micro-batch's loss and each optimizer step's gradient norm are copied into a device
    buffer (one small kernel, no sync); they are read in one go every check_interval steps and before every
    evaluation, which is when checkpoints are written. Under float16 a non-finite gradient is
    normal (the grad scaler skips that step and lowers its scale), so only the loss is checked there.
    """

    def __init__(self, check_interval: int, learning_rate: float, dtype: str):
        self.check_interval = max(1, int(check_interval))
        self.learning_rate, self.dtype = learning_rate, dtype
        # "loss"/"gradient" -> (optimizer step numbers, their values) since the last check
        self._seen = {kind: ([], ScalarSeries()) for kind in ("loss", "gradient")}

    def _note(self, kind: str, value: torch.Tensor, step: int) -> None:
        steps, values = self._seen[kind]
        steps.append(step)
        values.append(value)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        # 1-based number of the optimizer step this micro-batch belongs to (global_step has already
        # counted it after the last micro-batch of an accumulation cycle)
        stepped = (batch_idx + 1) % trainer.accumulate_grad_batches == 0
        n = trainer.global_step if stepped else trainer.global_step + 1
        if loss is not None:
            self._note("loss", loss, n)
        if stepped and self.dtype != "float16" and getattr(pl_module, "last_grad_norm", None) is not None:
            self._note("gradient", pl_module.last_grad_norm, n)
        if stepped and trainer.global_step % self.check_interval == 0:
            self.check(trainer)

    def on_validation_start(self, trainer, pl_module) -> None:
        if trainer.state.fn == "fit":
            self.check(trainer)

    def on_train_end(self, trainer, pl_module) -> None:
        self.check(trainer)

    def check(self, trainer) -> None:
        bad = {}
        for kind, (steps, values) in self._seen.items():
            if not len(values):
                continue
            where = torch.nonzero(~torch.isfinite(values.values()))  # the host sync
            if where.numel():
                bad[kind] = steps[int(where[0, 0])]
            steps.clear(), values.clear()
        if not bad:
            return
        kind, step = min(bad.items(), key=lambda kv: kv[1])
        fixes = [f"learning_rate={self.learning_rate / 10:g} (a tenth of now)", "grad_clip=1.0"]
        if self.dtype == "float16":
            fixes.append("dtype=bfloat16 or dtype=float32 instead of float16")
        raise NonFiniteLossError(
            f"the training {kind} became NaN/inf in optimizer step {step}; training stopped there and no "
            f"checkpoint was written after it{_kept(trainer)}. Try: {', '.join(fixes)}."
        )


def generate_sample(model, tokenizer, n_tokens: int, seed: int, suppress: list[int] | None = None) -> str:
    """n_tokens generated from a newline (or the end-of-text token) with its own seeded generator,
    so sampling never moves the training's random streams; the model's mode is restored."""
    was_training = model.training
    model.eval()
    dev = next(model.parameters()).device
    if tokenizer.eot_token is not None:
        start = tokenizer.eot_token
    else:
        start = int(tokenizer.encode("\n")[0]) if "\n" in getattr(tokenizer, "stoi", {}) else 0
    gen = torch.Generator(device=dev).manual_seed(seed)
    with torch.inference_mode():  # ~10% faster than no_grad for this token-by-token loop on CPU
        out = model.generate(
            torch.tensor([[start]], device=dev),
            n_tokens,
            temperature=0.8,
            top_k=200,
            generator=gen,
            suppress_tokens=suppress,
        )
    model.train(was_training)
    return tokenizer.decode(out[0, 1:].tolist())


class EvalSamples(L.Callback):
    """After evaluations during training: a short generated text under samples/eval (TensorBoard's
    TEXT tab, a W&B table, MLflow text artifacts), so the dashboard shows what the model writes as
    its loss falls.

    Generating goes one token at a time (~5 ms a token for the CPU recipe's model on 2 cores), so
    the samples are kept to `budget` of the training time: an evaluation skips its sample when
    the samples so far plus this one would take more than that share of the time since training
    started (the first one's cost is estimated from one forward pass). The last evaluation always
    has one. Rank 0 generates alone: the weights are whole on every rank (not under FSDP, where
    this callback is left out)."""

    def __init__(self, n_tokens: int, tokenizer, seed: int, suppress: list[int] | None = None, budget: float = 0.01):
        self.n_tokens, self.tokenizer, self.seed, self.suppress = n_tokens, tokenizer, seed, suppress
        self.budget = budget
        self._t_start: float | None = None
        self._spent = 0.0  # seconds spent generating since training started
        self._cost: float | None = None  # seconds the last sample took

    def on_train_start(self, trainer, pl_module) -> None:
        self._t_start = time.perf_counter()

    def _estimate(self, model) -> float:
        # one forward pass over the longest context generation will see, times the tokens
        ctx = min(self.n_tokens, model.config.block_size)
        dev = next(model.parameters()).device
        was_training = model.training
        model.eval()
        with torch.inference_mode():
            idx = torch.zeros((1, ctx), dtype=torch.long, device=dev)
            t = time.perf_counter()
            float(model(idx)[0][0, -1, 0])  # reading a value waits for the GPU
            cost = self.n_tokens * (time.perf_counter() - t)
        model.train(was_training)
        return cost

    def _due(self, trainer, pl_module) -> bool:
        if self._t_start is None:
            return False  # evaluations outside training: the step-0 one is a random model's text
        if self.budget >= 1 or trainer.global_step >= trainer.max_steps:
            return True
        if self._cost is None:
            self._cost = self._estimate(pl_module.model)
        return self._spent + self._cost <= self.budget * (time.perf_counter() - self._t_start)

    def exclude(self, seconds: float) -> None:
        """Leave out of the training time a pause that is not training (the bench's turns)."""
        if self._t_start is not None:
            self._t_start += seconds

    @rank_zero_only
    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking or not trainer.loggers or "val" not in pl_module.last_eval:
            return
        if not self._due(trainer, pl_module):
            return
        t = time.perf_counter()
        text = generate_sample(pl_module.model, self.tokenizer, self.n_tokens, self.seed, self.suppress)
        self._cost = time.perf_counter() - t
        self._spent += self._cost
        caption = f"step {trainer.global_step}, val loss {pl_module.last_eval['val']:.4f}"
        log_text(trainer, "samples/eval", caption, text, trainer.global_step)
