"""Time spent inside each callback's hooks during a real training run, from Lightning's
SimpleProfiler: what the debugging checks (monitor.*) and the other callbacks cost, as a share of
the training loop -- a figure that machine noise does not swamp, unlike a side-by-side timing.

    python scripts/hook_cost.py max_iters=500          # any train overrides; the CPU recipe without a GPU
"""

from __future__ import annotations

import sys
import tempfile

import lightning as L
from lightning.pytorch.profilers import SimpleProfiler

from gptlab.cli import common as cli
from gptlab.training.run import train

MONITORS = ("GradientMonitor", "LayerGradients", "InitialLossCheck", "PlateauHint")


def main(overrides: list[str]) -> None:
    profiler = SimpleProfiler()
    trainer_init = L.Trainer.__init__

    def with_profiler(self, *args, **kwargs):  # train() builds its own Trainer: hand it the profiler
        trainer_init(self, *args, **{**kwargs, "profiler": profiler})

    L.Trainer.__init__ = with_profiler
    with tempfile.TemporaryDirectory() as run_dir:
        ov = ["sample_tokens=0", *overrides]
        metrics = train(cli.compose("train", ov), run_dir, cli.explicit_keys(ov), typed=cli.typed_keys(ov))
    total = {k: sum(v) for k, v in profiler.recorded_durations.items()}
    loop = total["run_training_epoch"]  # the fit loop: training steps and the evaluations inside it
    hooks = {k: v for k, v in total.items() if k.startswith("[Callback]")}
    print(f"training loop {loop:.2f} s over {metrics['iters']} steps ({metrics['tokens_per_s']:,.0f} tokens/s)")
    for name in (*MONITORS, None):
        part = {
            k: v
            for k, v in hooks.items()
            if (name is None and not any(m in k for m in MONITORS)) or (name and name in k)
        }
        label = name or "all other callbacks"
        print(f"  {label:<22} {sum(part.values()) * 1000:9.1f} ms  {100 * sum(part.values()) / loop:6.2f}% of the loop")
        if name is None:
            for k, v in sorted(part.items(), key=lambda kv: -kv[1])[:5]:
                print(f"      {v * 1000:9.1f} ms  {k.split(']', 1)[1][:90]}")
    mon = sum(v for k, v in hooks.items() if any(m in k for m in MONITORS))
    print(f"debugging checks (monitor.*) together: {100 * mon / loop:.2f}% of the training loop")


if __name__ == "__main__":
    main(sys.argv[1:])
