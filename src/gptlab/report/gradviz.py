"""Per-layer gradient heatmap and verdict for a finished (or running) run:
`python -m gptlab.gradviz <run dir> [--out FILE] [--ratio 1000]`.

Reads the run's TensorBoard events, or the CSV logger's csv/metrics.csv (the `grad_layer/*`
scalars that LayerGradients writes every monitor.layer_interval steps) and writes a PNG: one row
per layer group in forward order, one column per recorded step, colour = log10 of the gradient
norm. Then prints which layers, if any, had vanishing or exploding gradients and when.
"""

from __future__ import annotations

import argparse
import csv
import math
import re
import sys
from pathlib import Path

import numpy as np

from gptlab.analysis import diagnose
from gptlab.errors import GptlabError
from gptlab.rundir import CSV_METRICS, EVENTS_GLOB

TAG = "grad_layer/"


def layer_order(name: str) -> tuple:
    """Forward-pass order: embeddings, then each block's ln / attn / mlp, then ln_f."""
    m = re.fullmatch(r"h(\d+)\.(\w+)", name)
    if m:
        return (1, int(m.group(1)), {"ln": 0, "attn": 1, "mlp": 2}.get(m.group(2), 3))
    return ({"wte/head": 0, "wpe": 0}.get(name, 2), 0, 0 if name == "wte/head" else 1)


def read_layer_norms(run_dir: Path) -> tuple[list[str], list[int], np.ndarray]:
    """(layers, steps, norms[layer, step]) from the run's TensorBoard event files, or from the CSV
    logger's csv/metrics.csv (logger=csv); NaN where missing."""
    if not run_dir.is_dir():
        raise GptlabError(f"'{run_dir}' is not a run folder")
    if any(run_dir.glob(EVENTS_GLOB)) or not (run_dir / CSV_METRICS).is_file():
        series = _from_events(run_dir)
    else:
        series = _from_csv(run_dir / CSV_METRICS)
    if not series:
        raise GptlabError(
            f"no per-layer gradient norms in '{run_dir}': they are written every monitor.layer_interval "
            "steps (default 250) to TensorBoard or the CSV logger; train longer than one interval, or set a smaller "
            "monitor.layer_interval, with logger=tensorboard or logger=csv among the loggers"
        )
    layers = sorted(series, key=layer_order)
    steps = sorted({s for v in series.values() for s in v})
    norms = np.array([[series[name].get(s, math.nan) for s in steps] for name in layers])
    return layers, steps, norms


def _from_events(run_dir: Path) -> dict[str, dict[int, float]]:
    # only here: tensorboard's event reader is heavy and only this reads event files back
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    ea.Reload()
    tags = [t for t in ea.Tags().get("scalars", []) if t.startswith(TAG)]
    return {t[len(TAG) :]: {e.step: e.value for e in ea.Scalars(t)} for t in tags}


def _from_csv(path: Path) -> dict[str, dict[int, float]]:
    # Lightning's CSVLogger: a step column and one column per metric, empty where a row lacks it
    series: dict[str, dict[int, float]] = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            for k, v in row.items():
                if k and k.startswith(TAG) and v:
                    series.setdefault(k[len(TAG) :], {})[int(row["step"])] = float(v)
    return series


def plot(layers: list[str], steps: list[int], norms: np.ndarray, out: Path, title: str) -> None:
    import matplotlib  # only here: matplotlib (~0.7 s to import) loads once there is something to draw

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # only here: after choosing the Agg backend (no display)

    with np.errstate(divide="ignore", invalid="ignore"):
        logn = np.log10(norms)
    fig, ax = plt.subplots(figsize=(max(6, 0.5 * len(steps) + 3), max(3, 0.32 * len(layers) + 1.5)))
    im = ax.imshow(logn, aspect="auto", cmap="viridis", interpolation="nearest")
    ax.set_yticks(range(len(layers)), layers)
    stride = max(1, len(steps) // 12)
    ax.set_xticks(range(0, len(steps), stride), [str(s) for s in steps[::stride]], rotation=45)
    ax.set_xlabel("step")
    ax.set_title(title)
    fig.colorbar(im, ax=ax, label="log10 gradient norm")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def verdict(layers: list[str], steps: list[int], norms: np.ndarray, ratio: float) -> list[str]:
    """One line per layer that was flagged at some recorded step, with the steps; or a clean bill."""
    seen: dict[str, list[int]] = {}
    for j, step in enumerate(steps):
        col = {name: float(norms[i, j]) for i, name in enumerate(layers) if not math.isnan(norms[i, j])}
        for line in diagnose(col, ratio):
            name, kind = line.split(": ", 1)
            seen.setdefault(f"{name}: {kind.split(' ')[0]}", []).append(step)
    if not seen:
        final = norms[:, -1]
        spread = np.nanmax(final) / max(np.nanmin(final), 1e-30)
        return [
            f"healthy: no layer vanishing or exploding at any of {len(steps)} recorded steps "
            f"(at step {steps[-1]} the largest layer norm is {spread:.0f}x the smallest)"
        ]
    return [f"{k} at step(s) {', '.join(map(str, v[:8]))}{' ...' if len(v) > 8 else ''}" for k, v in seen.items()]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m gptlab.gradviz", description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", type=Path, help="a run folder (holds events.out.tfevents.*)")
    ap.add_argument("--out", type=Path, default=None, help="PNG path (default: <run dir>/grad_heatmap.png)")
    ap.add_argument(
        "--ratio", type=float, default=1000.0, help="how far from the median layer counts as vanishing/exploding"
    )
    args = ap.parse_args(argv)
    try:
        layers, steps, norms = read_layer_norms(args.run_dir)
    except GptlabError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = args.out or args.run_dir / "grad_heatmap.png"
    plot(layers, steps, norms, out, f"gradient norm per layer — {args.run_dir.name}")
    print(f"wrote {out} ({len(layers)} layers x {len(steps)} steps)")
    for line in verdict(layers, steps, norms, args.ratio):
        print(line)
    return 0
