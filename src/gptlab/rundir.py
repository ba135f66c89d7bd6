"""The run folder: the names of the files a run writes, the training.log line and its parser,
metrics.json (its statuses, reading and writing), the lock held while a run writes, and clearing
an old run for overwrite=true. Training, resume, sweeps and reports all go through this module."""

from __future__ import annotations

import fcntl
import json
import os
import re
import socket
import tempfile
from pathlib import Path

from gptlab.errors import ConfigError, NonFiniteLossError

BEST, LAST = "best.ckpt", "last.ckpt"
# export_weights=true: weights, model shape and tokenizer only, as safetensors (loading it runs no code);
# runs of older versions wrote EXPORT_PT, a torch pickle, still read with weights_only=True
EXPORT, EXPORT_PT = "weights.safetensors", "weights.pt"
TRAINING_LOG = "training.log"  # one line per evaluation: "step N: train loss X, val loss Y"
METRICS = "metrics.json"  # written last: status ok when a run completed (failed / diverged otherwise)
EVAL = "eval.json"  # eval_only=true: its own result, beside (never in place of) a run's history
CONFIG = "config.yaml"  # the settings that ran, resolved
LR_FIND_JSON, LR_FIND_PNG = "lr_find.json", "lr_find.png"
LOCK = ".lock"  # held (flock) while a run writes the folder; holds the writer's pid

CSV_METRICS = "csv/metrics.csv"  # logger=csv: Lightning's CSVLogger's rows (conf/logger/csv.yaml)

# What a training run writes into its folder: overwrite=true removes these and nothing else.
RUN_FILES = (
    BEST,
    LAST,
    EXPORT,
    EXPORT_PT,
    TRAINING_LOG,
    METRICS,
    EVAL,
    CONFIG,
    LR_FIND_JSON,
    LR_FIND_PNG,
    "hparams.yaml",
    CSV_METRICS,
    "csv/hparams.yaml",
)
EVENTS_GLOB = "events.out.tfevents.*"  # TensorBoard's event files
FAILED_LEGACY = "failed.json"  # how failed runs of older sweeps were marked, before metrics.json carried a status

# Keys that say where a run is and how it was started, not what it trains: two runs that differ
# only in these trained the same (report columns, HPARAMS, resume's comparison leave them out).
PLACE_KEYS = (
    "out_dir",
    "resume",
    "init_from",
    "ckpt_path",
    "overwrite",
    "eval_only",
    "device",
    "profile",
    "data.root",
    "data.path",
    "logger",  # where a run is logged, the logger group's nodes with it (logger.wandb.project, ...)
    "wandb_log",
    "wandb_project",
    "wandb_run_name",
)


def is_place_key(key: str) -> bool:
    """key, or the node it is in (logger.csv.name), is one of PLACE_KEYS."""
    return any(key == k or key.startswith(k + ".") for k in PLACE_KEYS)


# training.log: one line per evaluation, the format the guide's plot_loss.py parses
EVAL_LINE = "step {step}: train loss {train:.4f}, val loss {val:.4f}"
EVAL_RE = re.compile(r"step (\d+): train loss ([\d.]+), val loss ([\d.]+)")

# metrics.json's status: ok (finished), failed, diverged (NaN/inf); eval_only is eval.json's
STATUSES = ("ok", "failed", "diverged", "eval_only")


def eval_line(step: int, train: float, val: float) -> str:
    return EVAL_LINE.format(step=step, train=train, val=val)


def parse_log(path: Path) -> tuple[list[int], list[float], list[float]]:
    """Steps, train losses and val losses of a training.log (other lines are skipped)."""
    steps, train, val = [], [], []
    with open(path) as f:
        for line in f:
            m = EVAL_RE.search(line)
            if m:
                steps.append(int(m.group(1)))
                train.append(float(m.group(2)))
                val.append(float(m.group(3)))
    return steps, train, val


def read_metrics(run_dir: Path) -> dict | None:
    """A run's metrics.json, or None when it has none. A damaged file reads as a failed run
    (status failed, the reason in error), never as an exception: sweeps and reports go on."""
    f = Path(run_dir) / METRICS
    if not f.is_file():
        return None
    try:
        m = json.loads(f.read_text())
    except (OSError, ValueError) as e:
        return {"status": "failed", "error": f"{METRICS} is unreadable ({type(e).__name__}); the run's files are kept"}
    if not isinstance(m, dict):
        return {"status": "failed", "error": f"{METRICS} holds no record"}
    m.setdefault("status", "ok")  # metrics.json from before statuses: finished runs
    return m


def run_status(run_dir: Path) -> str | None:
    """The status in a run's metrics.json (ok, failed, diverged), or None when there is none."""
    m = read_metrics(run_dir)
    return None if m is None else m["status"]


def write_text_atomic(path: Path, text: str) -> None:
    """A small text file (metrics.json, eval.json) that is either absent or complete: readers
    decide from these files whether a run finished."""
    write_atomic(Path(path), lambda f: f.write(text.encode("utf-8")))


def write_atomic(path: Path, write) -> None:
    """write(f) to path through a temporary file in the same folder and an atomic rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the usual permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


TMP_SUFFIX = ".tmp"  # .<name>.<random>.tmp: a write in progress


def write_metrics(run_dir: Path, metrics: dict) -> None:
    write_text_atomic(Path(run_dir) / METRICS, json.dumps(metrics, indent=1))


def write_eval(run_dir: Path, result: dict) -> None:
    """eval_only's result, beside the run's own files."""
    write_text_atomic(Path(run_dir) / EVAL, json.dumps(result, indent=1))


def write_failure(run_dir: Path, error: BaseException, partial: dict | None = None) -> None:
    """metrics.json of a run that did not finish: status diverged (NaN/inf) or failed, the error,
    and whatever the run measured before it stopped (partial)."""
    text = str(error).splitlines()[0] if str(error) else ""
    status = "diverged" if isinstance(error, NonFiniteLossError) else "failed"
    write_metrics(run_dir, {**(partial or {}), "status": status, "error": f"{type(error).__name__}: {text}"})


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
