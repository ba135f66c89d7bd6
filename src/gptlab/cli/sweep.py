"""Sweeps that survive their failures: the Hydra side of `python -m gptlab.train -m ...`.

A run of a sweep that fails (bad settings, NaN divergence, a crash) writes ``metrics.json`` with
status failed or diverged in its folder and the sweep goes on with the next run; ``SweepReport``,
a Hydra callback named in conf/train.yaml, lists the failed runs when the sweep ends, writes
``sweep.json`` next to them and sets the exit status. It reads the run folders, so it works with
any launcher (sequential, joblib's processes, SLURM jobs). Like the entry points, this module
knows Hydra; the library does not.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.utils import JobReturn, JobStatus
from hydra.errors import HydraException
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from gptlab.rundir import EVAL, METRICS, read_metrics, run_status, write_failure, write_text_atomic

log = logging.getLogger("gptlab")

SUMMARY = "sweep.json"  # in the sweep folder: every run, its status and best val loss or error


def _rank() -> int:
    """This process's rank as Lightning reads it from the launcher's environment (0 without DDP)."""
    # only here: importing Lightning at the top would load it (~1 s) for every refused `gptlab train`
    from lightning.pytorch.utilities import rank_zero_only

    return rank_zero_only.rank


def record_failure(run_dir: Path, error: BaseException) -> None:
    """A sweep job that failed: keep the metrics.json train wrote if it got that far (a failure
    after a completed run keeps its measurements, with the status changed)."""
    if _rank() != 0:
        return  # under DDP (or SLURM tasks) rank 0 writes the run's files
    status = run_status(run_dir)
    if status is None:
        write_failure(run_dir, error)
    elif status in ("ok", "eval_only"):
        write_failure(run_dir, error, read_metrics(run_dir))


def clear_failure(run_dir: Path) -> None:
    """Before a job starts again: a failed attempt's metrics.json goes (a finished one stays)."""
    if _rank() == 0 and run_status(run_dir) in ("failed", "diverged"):
        (Path(run_dir) / METRICS).unlink(missing_ok=True)


def job_outcome(run_dir: Path) -> dict:
    """What a run's folder says about it: ok, failed or diverged (metrics.json: status, best val
    loss or error), or stopped (no metrics.json: killed, or still running)."""
    run_dir = Path(run_dir)
    f = run_dir / METRICS
    if not f.is_file() and (run_dir / EVAL).is_file():
        return {"status": "eval_only", "val_loss": json.loads((run_dir / EVAL).read_text()).get("val_loss")}
    m = read_metrics(run_dir)
    if m is None:
        return {"status": "stopped"}
    status = m["status"]
    if status == "ok":
        return {"status": "ok", "best_val_loss": m.get("best_val_loss")}
    return {"status": status, "error": m.get("error", "")}


def job_dirs(sweep_dir: Path, since: float = 0.0) -> list[Path]:
    """The job folders of a sweep (each holds Hydra's .hydra/), in job-number order. since: only
    jobs Hydra started at or after this time (it rewrites .hydra/ for every job it launches, so
    folders left from an earlier sweep into the same out_dir are not counted)."""
    sweep_dir = Path(sweep_dir)
    dirs = [d for d in sweep_dir.iterdir() if (d / ".hydra" / "overrides.yaml").is_file()] if sweep_dir.is_dir() else []
    dirs = [d for d in dirs if (d / ".hydra" / "overrides.yaml").stat().st_mtime >= since]

    def number(d: Path):
        head = d.name.split("_", 1)[0]
        return (int(head), d.name) if head.isdigit() else (1 << 30, d.name)

    return sorted(dirs, key=number)


def job_count(config: DictConfig) -> int | None:
    """How many jobs a multirun launches: Hydra's basic sweeper's own expansion of the experiment's
    sweeper.params and the command line's sweeps; a sweeper's n_trials (Optuna); else None."""
    sweeper = config.hydra.sweeper
    if not str(sweeper.get("_target_", "")).endswith("BasicSweeper"):
        n = sweeper.get("n_trials")
        return int(n) if isinstance(n, int) else None
    loader = GlobalHydra.instance().config_loader() if GlobalHydra.instance().is_initialized() else None
    args = [f"{k}={v}" for k, v in (sweeper.get("params") or {}).items()] + list(config.hydra.overrides.task)
    try:
        overrides = OverridesParser.create(config_loader=loader).parse_overrides(args)
        return sum(len(batch) for batch in BasicSweeper.split_arguments(overrides, None))
    except HydraException:
        return None  # the sweeper itself says what is wrong


class SweepReport(Callback):
    """Each job starts with `job i/N` and, once a job has finished, the time left at the mean
    duration of the finished ones. At the end of a multirun: one line per failed run (its folder
    and why), sweep.json, and exit status 1 when any run failed (0 when all finished).

    The outcome of each job is read from its folder, not collected in on_job_end: launchers that
    run jobs in other processes (joblib) or on other machines (SLURM) call on_job_end there. For
    the same reason the time left is given only under the basic launcher, which runs the jobs one
    after another in this process."""

    def __init__(self) -> None:
        self.crashed: dict[str, str] = {}  # run dir -> an exception the job did not catch (this process's jobs)
        self.started = 0.0
        self.total: int | None = None  # jobs in the sweep
        self.sequential = False  # the basic launcher: jobs one after another, in this process
        self.durations: list[float] = []  # seconds of each finished job
        self._job_t0 = 0.0
        self._skipping = False  # resume=true and this job's run had finished: it takes no time

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self.crashed = {}
        self.started = time.time()
        self.total = job_count(config)
        self.sequential = str(config.hydra.launcher.get("_target_", "")).endswith("BasicLauncher")
        self.durations = []

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        if config.hydra.mode != RunMode.MULTIRUN or _rank() != 0:
            return
        self._job_t0 = time.time()
        done = read_metrics(Path(config.hydra.runtime.output_dir)) if config.get("resume") else None
        self._skipping = bool(done and done["status"] == "ok")
        log.info(
            job_line(
                int(config.hydra.job.num),
                self.total,
                Path(config.hydra.runtime.output_dir).name,
                self.durations if self.sequential else [],
            )
        )

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        if config.hydra.mode != RunMode.MULTIRUN:
            return
        if not self._skipping:  # a skipped job's ~0 s would make the time left look short
            self.durations.append(time.time() - self._job_t0)
        if job_return.status == JobStatus.FAILED:
            e = job_return._return_value
            self.crashed[str(Path(config.hydra.runtime.output_dir).resolve())] = f"{type(e).__name__}: {e}"

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        jobs, failed = write_summary(sweep_dir, since=self.started - 5, crashed=self.crashed)
        done = [j for j in jobs if j["status"] == "ok" and j.get("best_val_loss") is not None]
        if done:
            best = min(done, key=lambda j: j["best_val_loss"])
            log.info(f"best val loss {best['best_val_loss']:.4f}: {best['dir']}")
        if not failed:
            log.info(
                f"sweep finished: all {len(jobs)} runs completed ({sweep_dir / SUMMARY}); "
                f"compare them: python -m gptlab.report {sweep_dir}"
            )
            return
        lines = [f"sweep finished with {len(failed)} of {len(jobs)} runs failed ({sweep_dir / SUMMARY}):"]
        lines += [f"  {j['dir']}: {j['status']}: {j.get('error', '')}" for j in failed]
        print("\n".join(lines), file=sys.stderr, flush=True)
        # Hydra hands nothing back from a multirun to its caller, so the exit status is set here
        sys.exit(1)


def job_line(num: int, total: int | None, name: str, durations: list[float]) -> str:
    """`job 3/8: 2_dropout=0.2 | 2 finished, 1m05s each: ETA 6m30s` (num counts from 0)."""
    line = f"job {num + 1}/{total}: {name}" if total else f"job {num + 1}: {name}"
    if not durations or not total:
        return line
    from gptlab.training.callbacks.logs import duration  # only here: that module loads Lightning

    mean = sum(durations) / len(durations)
    left = max(total - num, 1)  # this job and the ones after it
    return line + f" | {len(durations)} finished, {duration(mean)} each: ETA {duration(mean * left)}"


def write_summary(
    sweep_dir: Path, since: float, crashed: dict[str, str] | None = None, stopped: bool = False
) -> tuple[list[dict], list[dict]]:
    """sweep.json from the job folders Hydra started at or after `since`: every run's folder,
    overrides and outcome. crashed: run dir -> an exception its job did not catch. Returns
    (jobs, the ones that did not finish). stopped: the sweep was stopped before its end."""
    crashed = crashed or {}
    jobs = []
    for d in job_dirs(Path(sweep_dir).resolve(), since=since):  # absolute paths: unambiguous in sweep.json
        rec = {"dir": str(d), "overrides": _overrides(d), **job_outcome(d)}
        if str(d) in crashed:
            rec.update(status="failed", error=crashed[str(d)])
        jobs.append(rec)
    failed = [j for j in jobs if j["status"] not in ("ok", "eval_only")]
    summary = {"runs": len(jobs), "failed": len(failed), "jobs": jobs}
    if stopped:
        summary["stopped"] = True  # the runs not started yet are not listed
    write_text_atomic(Path(sweep_dir) / SUMMARY, json.dumps(summary, indent=1))
    return jobs, failed


def write_stopped_summary(sweep_dir: Path) -> None:
    """A sweep stopped by a signal (Hydra's on_multirun_end never runs): sweep.json with the runs
    so far -- finished, failed, and the interrupted one as stopped; the ones not started are absent."""
    if _rank() != 0:
        return
    # Hydra's sweeper writes multirun.yaml as the sweep starts: older job folders are an earlier sweep's
    started = Path(sweep_dir) / "multirun.yaml"
    jobs, _ = write_summary(sweep_dir, since=started.stat().st_mtime - 5 if started.is_file() else 0, stopped=True)
    done = sum(j["status"] == "ok" for j in jobs)
    log.info(f"sweep stopped: {done} of the {len(jobs)} runs started finished ({Path(sweep_dir) / SUMMARY})")


def _overrides(run_dir: Path) -> list[str]:
    f = run_dir / ".hydra" / "overrides.yaml"
    return [str(o) for o in OmegaConf.load(f)] if f.is_file() else []
