"""Where a training step's time goes, through gptlab's path or the bench's plain loop: torch.profiler
over a few optimizer steps after a warm-up, summarised as

- wall ms per step, host (CPU) ms per step spent inside torch's ops, and on a GPU the kernels' busy
  ms per step: a GPU busy far less than the wall time is waiting on the host (launch overhead or
  syncs);
- the calls that make the host wait for the device (`aten::_local_scalar_dense` behind `.item()`,
  `cudaStreamSynchronize`, `cudaDeviceSynchronize`, device-to-host copies), counted per step;
- the top operators by self time (device time on a GPU, host time on a CPU).

    python scripts/profile_step.py --side gptlab [--warmup 20 --steps 10 --out DIR] [train overrides ...]
    python scripts/profile_step.py --side plain model=baby compile=true dtype=bfloat16

Writes profile_<side>.txt into --out (default: $OUT, else the current folder) and prints it.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile, schedule

from gptlab.bench.plain_loop import train_plain
from gptlab.cli import common as cli

# host-side calls that wait for the device
SYNCS = ("aten::_local_scalar_dense", "cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize")


class StepProfiler:
    """Steps the profiler at the end of every optimizer step, and times the profiled ones."""

    def __init__(self, warmup: int, steps: int, cuda: bool):
        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
        # wait through the warm-up (compiling, allocator growth), then record `steps` steps
        self.prof = profile(activities=acts, schedule=schedule(wait=warmup, warmup=1, active=steps, repeat=1))
        self.warmup, self.steps, self.cuda = warmup, steps, cuda
        self.step_s: list[float] = []
        self._t: float | None = None
        self.prof.start()

    def on_step(self, step: int) -> None:
        if self.cuda:
            torch.cuda.synchronize()  # the step's kernels belong to the step (a cost both sides pay)
        now = time.perf_counter()
        if self._t is not None and self.warmup + 1 < step <= self.warmup + 1 + self.steps:
            self.step_s.append(now - self._t)
        self._t = now
        self.prof.step()

    def stop(self) -> None:
        self.prof.stop()


def run_side(side: str, cfg, run_dir: Path, sp: StepProfiler) -> None:
    if side == "plain":
        train_plain(cfg, run_dir, on_step=lambda step, loss: sp.on_step(step))
        return
    import lightning as L  # only on this side: the plain loop runs without Lightning

    from gptlab.training.run import train

    class Hook(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if (batch_idx + 1) % trainer.accumulate_grad_batches == 0:
                sp.on_step(trainer.global_step)

    cli.setup_console_logging()
    train(cfg, run_dir, callbacks=[Hook()])


def summary(side: str, sp: StepProfiler, label: str) -> str:
    events = sp.prof.key_averages()
    n = max(1, len(sp.step_s))
    by_name = {e.key: e for e in events}
    host_us = sum(e.self_cpu_time_total for e in events)
    lines = [
        f"profile of {label}: {len(sp.step_s)} optimizer steps after {sp.warmup} warm-up",
        f"wall per step: median {1000 * statistics.median(sp.step_s):.3f} ms "
        f"(min {1000 * min(sp.step_s):.3f}, max {1000 * max(sp.step_s):.3f})",
        f"host time inside torch ops: {host_us / 1000 / n:.3f} ms per step",
    ]
    sort = "self_cpu_time_total"
    if sp.cuda:
        busy = sum(getattr(e, "self_device_time_total", 0) for e in events)
        lines.append(f"GPU kernels busy: {busy / 1000 / n:.3f} ms per step")
        sort = "self_device_time_total"
    for name in (*SYNCS, "cudaMemcpyAsync", "aten::item"):
        if name in by_name:
            lines.append(f"{name}: {by_name[name].count / n:.2f} calls per step")
    lines += ["", events.table(sort_by=sort, row_limit=30, max_name_column_width=60)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--side", choices=("gptlab", "plain"), required=True)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--out", default=os.environ.get("OUT", "."))
    p.add_argument("overrides", nargs="*")
    args = p.parse_args(argv)
    max_iters = args.warmup + args.steps + 2
    cfg = cli.compose(
        "train",
        [*args.overrides, f"max_iters={max_iters}", f"lr_decay_iters={max_iters}", "sample_tokens=0"],
    )
    cfg.warmup_iters = min(int(cfg.warmup_iters), max_iters)
    cfg.eval_interval = cfg.log_interval = max_iters  # no evaluation or log line among the profiled steps
    cfg.eval_iters = 1
    sp = StepProfiler(args.warmup, args.steps, torch.cuda.is_available() and cfg.device != "cpu")
    with tempfile.TemporaryDirectory(prefix="gptlab-profile-") as d:
        cfg.out_dir = str(Path(d) / "run")
        run_side(args.side, cfg, Path(d) / "run", sp)
    sp.stop()
    label = " ".join([args.side, *args.overrides])
    text = summary(args.side, sp, label)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / f"profile_{args.side}.txt").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    sys.exit(main())
