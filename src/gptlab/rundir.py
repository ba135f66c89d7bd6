"""The run folder: what a run writes there, a lock held while it writes, and clearing an old run
for overwrite=true. Every other module names these files through this one."""

from __future__ import annotations

import fcntl
import os
import socket
from pathlib import Path

from gptlab.errors import ConfigError

BEST, LAST = "best.ckpt", "last.ckpt"
EXPORT = "weights.pt"  # export_weights=true: weights, model shape and tokenizer only
TRAINING_LOG = "training.log"  # one line per evaluation: "step N: train loss X, val loss Y"
METRICS = "metrics.json"  # written last: status ok when a run completed (failed / diverged otherwise)
EVAL = "eval.json"  # eval_only=true: its own result, beside (never in place of) a run's history
CONFIG = "config.yaml"  # the settings that ran, resolved
LR_FIND_JSON, LR_FIND_PNG = "lr_find.json", "lr_find.png"
LOCK = ".lock"  # held (flock) while a run writes the folder; holds the writer's pid

# What a training run writes into its folder: overwrite=true removes these and nothing else.
RUN_FILES = (BEST, LAST, EXPORT, TRAINING_LOG, METRICS, EVAL, CONFIG, LR_FIND_JSON, LR_FIND_PNG, "hparams.yaml")
EVENTS_GLOB = "events.out.tfevents.*"  # TensorBoard's event files


def run_files(run_dir: Path) -> list[Path]:
    """The files of an earlier run in run_dir (as RUN_FILES and TensorBoard events)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    found = [run_dir / n for n in RUN_FILES if (run_dir / n).is_file()]
    return found + sorted(run_dir.glob(EVENTS_GLOB))


def clear_run(run_dir: Path) -> list[Path]:
    """overwrite=true: remove the earlier run's files before the new run writes anything, so
    that a later resume can never continue from the old run's checkpoints or mix the two logs.
    Only files gptlab writes are removed; anything else in the folder stays."""
    removed = run_files(run_dir)
    for p in removed:
        p.unlink(missing_ok=True)
    return removed


class RunLock:
    """One run at a time in a folder. An flock on <run>/.lock: the kernel releases it when the
    process ends however it ends, so the lock of a killed run is never stale -- the next run
    simply takes it. Use as a context manager; under DDP only rank 0 takes it."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / LOCK
        self.fd: int | None = None

    def __enter__(self) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 200).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise ConfigError(
                f"{self.path.parent} is in use by another run (pid {holder}); wait for it to end, "
                "or give this run another out_dir"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} on {socket.gethostname()}\n".encode())
        self.fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self.fd is not None:
            os.close(self.fd)  # releases the flock; the file stays (removing it would race a waiting run)
            self.fd = None
