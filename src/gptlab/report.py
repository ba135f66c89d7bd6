"""Compare the runs of a sweep: `python -m gptlab.report <sweep dir>`.

Reads what each run folder under the sweep wrote -- metrics.json, training.log,
.hydra/overrides.yaml and config.yaml; files only, never a live Trainer -- and writes
<sweep dir>/report.md (printed too) with a table of the swept settings and their losses, a verdict
for the question the experiment asks, and <sweep dir>/comparison.png with the val-loss curves
(the guide's "tool 2: compare several experiments").

The question comes from the runs' own config, the `report:` node an experiment sets (see
conf/train.yaml): the column it is about (`metric`), which direction answers yes (`goal`), the
run the others are measured against (`baseline`), and optionally a second column that pays for it
(`cost`). Without one, the verdict names the run with the lowest best val loss.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import OmegaConf

from gptlab import cli
from gptlab.errors import ConfigError

# The guide's plot_loss.py pattern for training.log lines (gptlab.callbacks.EVAL_LINE writes them)
EVAL_RE = re.compile(r"step (\d+): train loss ([\d.]+), val loss ([\d.]+)")
COLUMNS = {  # metric name -> table heading
    "final_train_loss": "final train",
    "final_val_loss": "final val",
    "gap": "gap (val - train)",
    "best_val_loss": "best val",
}


@dataclass
class Run:
    path: Path
    metrics: dict
    overrides: dict[str, str]  # key -> value as typed on the command line / in the sweep
    report: dict  # the `report:` node of the run's config, or {}
    steps: list[int] = field(default_factory=list)
    train_curve: list[float] = field(default_factory=list)
    val_curve: list[float] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.path.name

    def value(self, metric: str) -> float | None:
        if metric == "gap":
            t, v = self.metrics.get("final_train_loss"), self.metrics.get("final_val_loss")
            return None if t is None or v is None else v - t
        v = self.metrics.get(metric)
        return float(v) if isinstance(v, (int, float)) else None


def parse_log(path: Path) -> tuple[list[int], list[float], list[float]]:
    steps, train, val = [], [], []
    if path.is_file():
        for line in path.read_text().splitlines():
            m = EVAL_RE.search(line)
            if m:
                steps.append(int(m.group(1)))
                train.append(float(m.group(2)))
                val.append(float(m.group(3)))
    return steps, train, val


def _overrides(run_dir: Path) -> dict[str, str]:
    f = run_dir / ".hydra" / "overrides.yaml"
    items = list(OmegaConf.load(f)) if f.is_file() else None
    if not items:  # not a Hydra job: a multirun folder is named <job number>_<key=value,...>
        items = run_dir.name.split("_", 1)[1].split(",") if re.match(r"\d+_.+=", run_dir.name) else []
    out = {}
    for item in items:
        if "=" in item:
            key, value = item.split("=", 1)
            out[key.lstrip("+~")] = value
    return out


def load_runs(sweep_dir: Path) -> list[Run]:
    """Every run folder under sweep_dir that finished (holds metrics.json), in job order."""
    if not sweep_dir.is_dir():
        raise ConfigError(f"'{sweep_dir}' is not a folder; give the sweep's output folder (its out_dir)")
    runs = []
    for mfile in sweep_dir.rglob("metrics.json"):
        d = mfile.parent
        cfg_file = d / "config.yaml"
        node = OmegaConf.load(cfg_file).get("report") if cfg_file.is_file() else None
        run = Run(d, json.loads(mfile.read_text()), _overrides(d), OmegaConf.to_container(node) if node else {})
        run.steps, run.train_curve, run.val_curve = parse_log(d / "training.log")
        runs.append(run)
    if not runs:
        raise ConfigError(f"no finished runs under '{sweep_dir}' (no metrics.json); did the sweep run to the end?")

    def order(r: Run):
        m = re.match(r"(\d+)_", r.name)
        return (int(m.group(1)) if m else math.inf, str(r.path))

    return sorted(runs, key=order)


def swept_keys(runs: list[Run]) -> list[str]:
    """Keys set to different values in different runs: what the sweep varied."""
    keys = sorted({k for r in runs for k in r.overrides})
    return [k for k in keys if len({r.overrides.get(k) for r in runs}) > 1]


def label(run: Run, keys: list[str]) -> str:
    return ", ".join(f"{k}={run.overrides.get(k, '-')}" for k in keys) or run.name


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.4f}"


def table(runs: list[Run], keys: list[str]) -> str:
    head = ["run", *keys, *COLUMNS.values(), "best at step", "steps", "stopped", "time"]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in runs:
        m = r.metrics
        cells = [r.name, *(r.overrides.get(k, "-") for k in keys), *(_fmt(r.value(c)) for c in COLUMNS),
                 str(m.get("best_step", "-")), str(m.get("iters", "-")), m.get("stop_reason", "-"),
                 f"{m['wall_time_s']:.0f} s" if m.get("wall_time_s") is not None else "-"]
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def _same(a: str, b: str) -> bool:
    try:
        return float(a) == float(b)  # 0 and 0.0 are the same setting
    except ValueError:
        return a.strip() == b.strip()


def _matches(run: Run, spec: str) -> bool:
    key, _, value = spec.partition("=")
    have = run.overrides.get(key.strip())
    return have is not None and _same(have, value)


def verdict(runs: list[Run], keys: list[str]) -> str:
    """One line answering the experiment's question (its `report:` node) from the numbers."""
    spec = next((r.report for r in runs if r.report), {})
    metric = spec.get("metric") or "best_val_loss"
    if metric not in COLUMNS:
        raise ConfigError(f"report.metric must be one of {', '.join(COLUMNS)}, got '{metric}'")
    lower = (spec.get("goal") or "lower") == "lower"
    if not spec.get("question"):
        scored = [r for r in runs if r.value(metric) is not None]
        best = (min if lower else max)(scored, key=lambda r: r.value(metric))
        return f"{'lowest' if lower else 'highest'} {metric}: {label(best, keys)} ({best.value(metric):.4f})"

    base_spec = spec.get("baseline")
    base = next((r for r in runs if _matches(r, base_spec)), None) if base_spec else runs[0]
    if base is None:
        raise ConfigError(f"report.baseline '{base_spec}' matches none of the runs ({', '.join(label(r, keys) for r in runs)})")
    others = [r for r in runs if r is not base and r.value(metric) is not None]
    b = base.value(metric)
    better = [r for r in others if (r.value(metric) < b) == lower and r.value(metric) != b]
    answer = "yes" if len(better) == len(others) else "no" if not better else "partly"
    parts = [f"{metric} {_fmt(b)} at {label(base, keys)}"]
    parts += [f"{_fmt(r.value(metric))} at {label(r, keys)} ({r.value(metric) - b:+.4f})" for r in others]
    line = f"{spec['question']} -> {answer}: " + "; ".join(parts)
    cost = spec.get("cost")
    if cost and base.value(cost) is not None:
        line += f". Cost in {cost} (vs {_fmt(base.value(cost))}): " + "; ".join(
            f"{r.value(cost) - base.value(cost):+.4f} at {label(r, keys)}" for r in others if r.value(cost) is not None
        )
    return line


def plot(runs: list[Run], keys: list[str], path: Path, title: str) -> None:
    """Val-loss curves of every run (solid), their train-loss curves (dotted, same colour)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 6))
    for i, r in enumerate(runs):
        if not r.steps:
            continue
        color = f"C{i % 10}"
        ax.plot(r.steps, r.val_curve, color=color, lw=2, label=f"{label(r, keys)} val")
        ax.plot(r.steps, r.train_curve, color=color, lw=1, ls=":", label=f"{label(r, keys)} train")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report(sweep_dir: str | Path) -> str:
    """Write report.md and comparison.png into sweep_dir; returns the report's text."""
    sweep_dir = Path(sweep_dir)
    runs = load_runs(sweep_dir)
    keys = swept_keys(runs)
    question = next((r.report.get("question") for r in runs if r.report.get("question")), None)
    # job folders of the sweep that did not finish: a failed run (failed.json), or one still going
    unfinished = sorted(d.name for d in sweep_dir.iterdir()
                        if d.is_dir() and not d.name.startswith(".") and not any(d.rglob("metrics.json")))
    plot(runs, keys, sweep_dir / "comparison.png", question or "experiment comparison")
    text = "\n\n".join([
        f"# Report: {sweep_dir}",
        table(runs, keys),
        "gap = final val loss - final train loss, both from the last evaluation (clean inputs, eval mode)."
        + (f" Not finished, left out: {', '.join(unfinished)}." if unfinished else ""),
        "**Verdict:** " + verdict(runs, keys),
        "![val-loss curves](comparison.png)",
        f"Made by `python -m gptlab.report {sweep_dir}` from each run's metrics.json, training.log and .hydra/overrides.yaml.",
    ]) + "\n"
    (sweep_dir / "report.md").write_text(text)
    return text


@cli.report_errors
def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m gptlab.report", description=__doc__.splitlines()[0])
    p.add_argument("sweep_dir", help="the sweep's output folder: its run folders each hold metrics.json")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    print(report(args.sweep_dir))


if __name__ == "__main__":
    main()
