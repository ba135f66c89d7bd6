"""What makes a stopped run continue as if it had never stopped.

Lightning's checkpoints already hold the weights, the optimizer, the LR scheduler, the loop
counters, each callback's ``state_dict`` and the DataModule's sampler state. Added here: the torch
random number generators (dropout masks), a clean stop on SIGTERM / SIGINT with a checkpoint, and
the decisions of ``init_from=resume`` / ``resume=true``: which checkpoint to continue from, and
whether a run already finished.
"""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Checkpoint

from gptlab.errors import ConfigError, RunInterrupted
from gptlab.model import SWITCH_DEFAULTS
from gptlab.rundir import BEST, LAST, METRICS, PLACE_KEYS, run_status
from gptlab.training.callbacks.logs import NonFiniteGuard
from gptlab.training.checkpoint import checkpoint_step

log = logging.getLogger("gptlab")

FINISHED = METRICS  # written last: status ok when a run completed (failed / diverged otherwise)


def newest_checkpoint(run_dir: Path) -> Path | None:
    """The checkpoint in run_dir written at the highest step: last.ckpt, or best.ckpt when it is
    newer (a run with always_save_checkpoint=false writes last.ckpt only when it ends, so a killed
    run leaves best.ckpt as its latest state)."""
    found = [p for p in (Path(run_dir) / LAST, Path(run_dir) / BEST) if p.is_file()]
    if not found:
        return None
    return max(found, key=checkpoint_step)  # ties: last.ckpt (listed first)


def run_state(run_dir: Path) -> str:
    """'finished' (metrics.json with status ok), 'stopped' (a checkpoint, not finished), or 'new'."""
    run_dir = Path(run_dir)
    if run_status(run_dir) == "ok":
        return "finished"
    if (run_dir / LAST).is_file() or (run_dir / BEST).is_file():
        return "stopped"
    return "new"


def starting_point(
    run_dir: Path, init_from: str, ckpt_path: str | None, resume: bool, overwrite: bool, eval_only: bool
) -> Path | str | None:
    """Where a run starts: a checkpoint to continue from, None (from scratch), or FINISHED when
    resume=true finds the run already complete."""
    run_dir = Path(run_dir)
    if ckpt_path in ("last", "best"):  # the run folder's own checkpoint, by name
        ckpt_path = str(run_dir / (LAST if ckpt_path == "last" else BEST))
    if ckpt_path and not resume:
        init_from = "resume"  # a checkpoint named is a checkpoint continued (as Lightning's ckpt_path), never ignored
    if resume:  # resume=true: whatever state the folder is in, carry on from there
        state = run_state(run_dir)
        if state == "finished" and not eval_only:
            return FINISHED
        if state != "new":
            return newest_checkpoint(run_dir)
        if init_from != "resume":
            return None
    if init_from == "resume":
        ckpt = Path(ckpt_path) if ckpt_path else newest_checkpoint(run_dir)
        if ckpt is None or not ckpt.is_file():
            raise ConfigError(
                f"init_from=resume but there is no checkpoint at {ckpt or run_dir / LAST}; "
                "give ckpt_path=FILE or train from scratch"
            )
        return ckpt
    if not overwrite and not eval_only and any((run_dir / n).exists() for n in (BEST, LAST)):
        raise ConfigError(
            f"{run_dir} already holds a run's checkpoints. Continue it with init_from=resume (or resume=true), "
            "start over with overwrite=true, or choose another out_dir."
        )
    return None


# A resumed run may change its settings. Most apply from the resume on and are recorded; these
# cannot, because the checkpoint's optimizer and LR-scheduler state hold them and would silently
# win (docs/reliability.md, "Resuming with changed settings").
RESUME_REFUSES = ("learning_rate", "weight_decay", "beta1", "beta2", "optimizer", "muon_lr", "muon_momentum")
# Settings added after some checkpoints were written: such a checkpoint's run had these values.
ADDED_DEFAULTS = {
    "optimizer": "adamw",
    "muon_lr": 0.02,
    "muon_momentum": 0.95,
    **SWITCH_DEFAULTS,
    "peak_tflops": None,
    "callbacks": {},
}
# Where the run is and how it was started (rundir.PLACE_KEYS), the report's question, Hydra's own
# node, and the device (a run may continue on other hardware): not settings of the training itself.
RESUME_IGNORES = (*PLACE_KEYS, "report", "hydra")


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def resume_changes(saved: dict, now: dict) -> dict[str, tuple]:
    """The settings that differ between a checkpoint's run and the run resuming it, as
    {key: (old, new)}; raises ConfigError for those in RESUME_REFUSES."""
    a, b = ({**ADDED_DEFAULTS, **_flat(saved)} if saved else {}), _flat(now)
    skip = lambda k: any(k == i or k.startswith(i + ".") for i in RESUME_IGNORES)  # noqa: E731
    changed = {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if not skip(k) and a.get(k) != b.get(k)}
    refused = {k: v for k, v in changed.items() if k in RESUME_REFUSES}
    if refused and a:
        listed = ", ".join(f"{k} (checkpoint {old}, now {new})" for k, (old, new) in refused.items())
        raise ConfigError(
            f"a resumed run cannot change {listed}: the checkpoint's optimizer state holds them. Resume with the "
            "checkpoint's values, or start a new run from its weights in another out_dir"
        )
    return changed if a else {}


class RngState(L.Callback):
    """Keeps torch's random number generators in checkpoints, so dropout draws the same masks
    after a resume as it would have without the stop. (Lightning's checkpoints do not hold them;
    the batch sampler's numpy generator is saved by GPTDataModule.)"""

    def state_dict(self) -> dict:
        state = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state: dict) -> None:
        torch.set_rng_state(state["torch"])
        cuda = state.get("cuda")
        if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)


class StopOnSignal(Checkpoint):
    """SIGTERM (a cluster pre-empting the job, `kill`), SIGINT (Ctrl+C), or SIGUSR1 / SIGUSR2
    (SLURM's warning before a time limit or pre-emption, `--signal=USR1@120`; submitit asks for
    USR2): finish the optimizer step in progress -- and its evaluation, when one is due -- save
    the full training state to last.ckpt, and raise RunInterrupted (exit status 128 + signal).

    SIGUSR1 / SIGUSR2 are then passed on to the handler they replaced, if any: submitit's requeues
    the job (up to its max_num_timeout), and the requeued job runs the same command, which
    continues with resume=true. Lightning's own SLURM auto-requeue handler is not used (build_trainer
    turns it off): it saves mid-step to hpc_ckpt_N.ckpt, which a later fresh run in the folder
    would silently load, and leaves the job running until SLURM kills it.

    Lightning's own SIGTERM handling stops after any micro-batch -- under gradient accumulation
    possibly in the middle of an optimizer step, whose partial gradients no checkpoint holds --
    and ends with exit status 0, which looks like success. A second signal stops at once,
    without saving. A Checkpoint subclass so that Lightning runs it after ModelCheckpoint: the
    state saved after an evaluation includes that evaluation's best.ckpt bookkeeping.
    """

    # SLURM's warning signals (POSIX only): USR1 (sbatch --signal=USR1@120), USR2 (submitit's)
    REQUEUE = tuple(getattr(signal, n) for n in ("SIGUSR1", "SIGUSR2") if hasattr(signal, n))
    SIGNALS = (signal.SIGTERM, signal.SIGINT, *REQUEUE)

    def __init__(self, ckpt_path: str | Path):
        self.ckpt_path = Path(ckpt_path)
        self.received: int | None = None
        self._after_validation = False
        self._previous: dict = {}

    def on_train_start(self, trainer, pl_module) -> None:
        # after Lightning installed its handlers (in Trainer._run); they come back in teardown
        if threading.current_thread() is not threading.main_thread():
            return  # only the main thread can set handlers (and receives signals)
        for s in self.SIGNALS:
            self._previous[s] = signal.getsignal(s)
            signal.signal(s, self._handle)

    def _handle(self, signum, frame) -> None:
        if self.received is not None:
            self._restore()
            raise KeyboardInterrupt  # the second signal: stop now
        self.received = signum
        log.info(
            f"received {signal.Signals(signum).name}: saving a checkpoint after this optimizer step "
            "(send it again to stop without saving)"
        )

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if (batch_idx + 1) % trainer.accumulate_grad_batches != 0:
            return  # mid-accumulation: the step's gradients are not complete yet
        # every process must agree, or those that stop would leave the others waiting (one
        # all-reduce per step under DDP; none on one device)
        if not trainer.strategy.reduce_boolean_decision(self.received is not None, all=False):
            return
        if _validation_follows(trainer):
            # stop after it: a checkpoint taken before it would make the resumed run skip it
            self._after_validation = True
            return
        self._stop(trainer)

    def on_validation_end(self, trainer, pl_module) -> None:
        if self._after_validation and trainer.state.fn == "fit" and not trainer.sanity_checking:
            self._stop(trainer)

    def _stop(self, trainer) -> None:
        signum = self.received or signal.SIGTERM  # another rank received it
        for cb in trainer.callbacks:  # never save a diverged state: the NaN guard looks first
            if isinstance(cb, NonFiniteGuard):
                cb.check(trainer)
        trainer.save_checkpoint(self.ckpt_path, weights_only=False)
        passed_on = self._previous.get(signum) if signum == self.received and signum in self.REQUEUE else None
        self._restore()
        if callable(passed_on):
            log.info(
                f"{signal.Signals(signum).name}: checkpoint saved; passing the signal on (a job scheduler's requeue)"
            )
            try:
                passed_on(signum, None)
            except SystemExit:
                pass  # submitit's requeue ends the process itself; ours reports the stop first
        raise RunInterrupted(
            f"{signal.Signals(signum).name} at optimizer step {trainer.global_step}: "
            f"the training state is saved in {self.ckpt_path}.",
            signum,
            str(self.ckpt_path.parent),
        )

    def on_exception(self, trainer, pl_module, exception) -> None:
        self._restore()

    def on_train_end(self, trainer, pl_module) -> None:
        self._restore()

    def _restore(self) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous = {}


def _validation_follows(trainer) -> bool:
    """Whether Lightning evaluates right after this optimizer step: every val_check_batch
    micro-batches (val_check_interval), or because a stop was requested (FinalEvaluation)."""
    if trainer.should_stop:
        return True
    every = getattr(trainer, "val_check_batch", None)
    if not every or every == float("inf"):
        return False
    return (trainer.fit_loop.epoch_loop.total_batch_idx + 1) % int(every) == 0
