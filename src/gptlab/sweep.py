"""Sweeps that survive their failures: the Hydra side of `python -m gptlab.train -m ...`.

A run of a sweep that fails (bad settings, NaN divergence, a crash) writes ``failed.json`` in its
folder and the sweep goes on with the next run; ``SweepReport``, a Hydra callback named in
conf/train.yaml, lists the failed runs when the sweep ends, writes ``sweep.json`` next to them
and sets the exit status. Like the entry points, this module knows Hydra; the library does not.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig

from gptlab.checkpoint import write_text_atomic
from gptlab.resume import FINISHED

log = logging.getLogger("gptlab")

FAILED = "failed.json"  # why a run of a sweep failed; removed when the run is started again
SUMMARY = "sweep.json"  # in the sweep folder: every run, its status and best val loss or error


def record_failure(run_dir: Path, error: BaseException) -> None:
    text = str(error).splitlines()[0] if str(error) else ""
    write_text_atomic(Path(run_dir) / FAILED, json.dumps({"error": text, "type": type(error).__name__}, indent=1))


def clear_failure(run_dir: Path) -> None:
    (Path(run_dir) / FAILED).unlink(missing_ok=True)


def job_outcome(run_dir: Path) -> dict:
    """What a run's folder says about it: finished (metrics.json), failed (failed.json, why),
    or stopped (neither: killed, or still running)."""
    run_dir = Path(run_dir)
    if (run_dir / FINISHED).is_file():
        return {"status": "finished", "best_val_loss": json.loads((run_dir / FINISHED).read_text()).get("best_val_loss")}
    if (run_dir / FAILED).is_file():
        f = json.loads((run_dir / FAILED).read_text())
        return {"status": "failed", "error": f"{f['type']}: {f['error']}"}
    return {"status": "stopped"}


class SweepReport(Callback):
    """At the end of a multirun: one line per failed run (its folder and why), sweep.json, and
    exit status 1 when any run failed (0 when all finished)."""

    def __init__(self) -> None:
        self.jobs: list[dict] = []

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self.jobs = []

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        if config.hydra.mode != RunMode.MULTIRUN:
            return
        run_dir = Path(config.hydra.runtime.output_dir)
        rec = {"dir": str(run_dir), "overrides": list(job_return.overrides or []), **job_outcome(run_dir)}
        if job_return.status == JobStatus.FAILED:  # an exception the task did not catch
            e = job_return._return_value
            rec.update(status="failed", error=f"{type(e).__name__}: {e}")
        self.jobs.append(rec)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        failed = [j for j in self.jobs if j["status"] != "finished"]
        write_text_atomic(sweep_dir / SUMMARY, json.dumps({"runs": len(self.jobs), "failed": len(failed), "jobs": self.jobs}, indent=1))
        done = [j for j in self.jobs if j["status"] == "finished" and j.get("best_val_loss") is not None]
        if done:
            best = min(done, key=lambda j: j["best_val_loss"])
            log.info(f"best val loss {best['best_val_loss']:.4f}: {best['dir']}")
        if not failed:
            log.info(f"sweep finished: all {len(self.jobs)} runs completed ({sweep_dir / SUMMARY})")
            return
        lines = [f"sweep finished with {len(failed)} of {len(self.jobs)} runs failed ({sweep_dir / SUMMARY}):"]
        lines += [f"  {j['dir']}: {j.get('error', j['status'])}" for j in failed]
        print("\n".join(lines), file=sys.stderr, flush=True)
        # Hydra hands nothing back from a multirun to its caller, so the exit status is set here
        sys.exit(1)
