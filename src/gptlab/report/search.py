"""The report's section on a hyperparameter search (hparams_search=..., docs/search.md).

Read from the sweep folder's Optuna study (<sweep>/optuna.db, through gptlab.study): how many
trials finished and how, the best trial's parameters, every trial's value, and two figures drawn
by optuna.visualization.matplotlib: optuna_history.png (each trial's value and the best so far)
and optuna_importances.png (how much of the value's variation each parameter explains, fANOVA).
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

from gptlab import study as st

HISTORY, IMPORTANCES = "optuna_history.png", "optuna_importances.png"


def _value(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _trial_value(t) -> str:
    if t.value is None:
        return "-"
    return "+inf (diverged)" if math.isinf(t.value) else f"{t.value:.4f}"


def section(sweep_dir: Path) -> list[str]:
    """The markdown of the section and its figures (written into sweep_dir); [] without a study."""
    if not st.exists(sweep_dir):
        return []
    study = st.load_study(sweep_dir)
    trials = st.finished(study)
    best = st.best(study)
    counts = {}
    for t in trials:
        counts[t.state.name.lower()] = counts.get(t.state.name.lower(), 0) + 1
    out = [
        "## Hyperparameter search",
        f"Optuna study `{sweep_dir / st.STUDY}`: {len(trials)} trials finished ("
        + ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
        + f"), {len(st.running(study))} stopped while running. Value: best val loss (lower is better); "
        "a run that diverged counts as +inf.",
    ]
    if best is None:
        return [*out, "No trial finished with a finite val loss."]
    out.append(
        f"**Best trial:** {best.number} (run `{best.number}_trial`), best val loss **{best.value:.4f}**, with "
        + ", ".join(f"`{k}={_value(v)}`" for k, v in best.params.items())
    )
    keys = sorted({k for t in trials for k in t.params})
    rows = [
        f"| {t.number} | {t.state.name.lower()} | {_trial_value(t)} | "
        + " | ".join(_value(t.params.get(k, "-")) for k in keys)
        + " |"
        for t in trials
    ]
    head = f"| trial | state | value | {' | '.join(keys)} |"
    out.append("\n".join([head, "|---|---|---|" + "---|" * len(keys), *rows]))
    out += _figures(study, sweep_dir)
    return out


def _figures(study, sweep_dir: Path) -> list[str]:
    import matplotlib  # only here: matplotlib (~0.7 s to import) loads once a report draws

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # only here: after choosing the Agg backend (no display)

    opt = st.need()
    lines = []
    finite = [t for t in study.get_trials(deepcopy=False) if t.value is not None and math.isfinite(t.value)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", opt.exceptions.ExperimentalWarning)  # the matplotlib backend is "experimental"

        def save(ax, name: str, height: float) -> None:
            ax.figure.set_size_inches(9, height)
            ax.figure.tight_layout()
            ax.figure.savefig(sweep_dir / name, dpi=110)
            plt.close(ax.figure)

        save(opt.visualization.matplotlib.plot_optimization_history(study), HISTORY, 5)
        lines.append(f"![optimization history]({HISTORY})")
        if len(finite) >= 2:  # fANOVA needs two finite values to compare
            save(opt.visualization.matplotlib.plot_param_importances(study), IMPORTANCES, 4)
            lines.append(f"![parameter importances]({IMPORTANCES})")
        else:
            lines.append("Parameter importances need two trials with a finite val loss.")
    return lines
