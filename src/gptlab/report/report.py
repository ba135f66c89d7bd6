"""Compare the runs of a sweep: `python -m gptlab.report [sweep or experiment folder]`.

Reads what each run folder of the sweep wrote -- metrics.json, training.log,
.hydra/overrides.yaml and config.yaml; files only, never a live Trainer -- and writes
<sweep>/report.md (printed too) with
- a table of the runs: the swept settings, their status and losses, failed runs with their error;
- the answer to the experiment's question (`report.analysis` in the runs' config picks one of the
  guide's five experiments; without it, the verdict of the `metric/goal/baseline/cost` rule);
- loss_curves.png (train and val loss of every run, two panels) and comparison.png (val solid,
  train dotted: the guide's "tool 2"), plus scaling.png for the scaling experiment;
- the guide's analysis template for each run: early loss drop, convergence verdict, final and
  best val loss, train-val gap and overfitting flag, time, speed, memory, the generated sample;
- the rules behind every verdict (gptlab.analysis holds the computations and thresholds);
- for a hparams_search sweep, its Optuna study: the best trial, every trial, optuna_history.png
  and optuna_importances.png (report/search.py).

Given an experiment folder that holds several timestamped sweeps, or nothing (outputs/), it
reports the newest sweep below it and says which; runs of two sweeps are never mixed.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import OmegaConf

from gptlab import analysis as an
from gptlab.errors import ConfigError
from gptlab.report import search
from gptlab.rundir import CONFIG, METRICS, PLACE_KEYS, TRAINING_LOG, is_place_key, read_metrics
from gptlab.rundir import FAILED_LEGACY as FAILED
from gptlab.rundir import parse_log as _parse_log

OUTPUTS = Path("outputs")  # where runs go by default; searched when no folder is given
JOB_DIR = re.compile(r"\d+_")  # Hydra's sweep subdir: <job number>_<overrides or variant>
SEARCH_DEPTH = 4  # outputs/multirun/<date>/<time>_<pid> is three levels down
COLUMNS = {  # metric name -> table heading
    "final_train_loss": "final train",
    "final_val_loss": "final val",
    "gap": "gap (val - train)",
    "best_val_loss": "best val",
}
# config keys that do not make two runs differ: where they are (rundir.PLACE_KEYS), their name, the seed
NOT_SETTINGS = {*PLACE_KEYS, "variant", "seed"}
FIRST_STEPS, LAST_STEPS = 100, 200  # experiment 4's windows: the guide's "first 100" and "last 200 steps"


@dataclass
class Run:
    path: Path
    metrics: dict
    overrides: dict[str, str]  # key -> value as typed on the command line / in the sweep
    config: dict  # the run's resolved config.yaml, or {}
    evals: list[dict] = field(default_factory=list)  # {"step", "train_loss", "val_loss", "wall_time_s"} per evaluation

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def report(self) -> dict:
        return self.config.get("report") or {}

    @property
    def status(self) -> str:
        return self.metrics.get("status") or "ok"  # runs from before the field finished or wrote nothing

    @property
    def variant(self) -> str | None:
        v = self.overrides.get("variant") or self.config.get("variant")
        return None if v in (None, "null") else str(v)

    def value(self, metric: str) -> float | None:
        if metric == "gap":
            t, v = self.value("final_train_loss"), self.value("final_val_loss")
            return None if t is None or v is None else v - t
        v = self.metrics.get(metric)
        return float(v) if isinstance(v, (int, float)) else None

    def val_ppl(self, which: str = "best") -> float | None:
        """Perplexity of the final or best val loss (computed for runs from before it was recorded)."""
        v = self.metrics.get(f"{which}_val_ppl")
        return float(v) if isinstance(v, (int, float)) else an.perplexity(self.value(f"{which}_val_loss"))

    def val_bits(self, which: str = "best") -> tuple[float | None, str | None]:
        """(bits, "bpc" or "bpb") of the final or best val loss; older char-level runs computed,
        older BPE runs (None, None): their bytes per token was not recorded."""
        for unit in ("bpc", "bpb"):
            v = self.metrics.get(f"{which}_val_{unit}")
            if isinstance(v, (int, float)):
                return float(v), unit
        if self.setting("data.tokenizer") == "char":
            return an.bits(self.value(f"{which}_val_loss")), "bpc"
        return None, None

    def setting(self, key: str):
        """A config value by dotted key (None when absent)."""
        node = self.config
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        return node

    def curve(self, split: str) -> list[an.Point]:
        return [
            (int(e["step"]), float(e[f"{split}_loss"]))
            for e in self.evals
            if isinstance(e.get(f"{split}_loss"), (int, float))
        ]

    def train_points(self) -> list[an.Point]:
        """The step-0 evaluation's train loss, then train_curve (mean training-batch loss per
        log interval); the evaluations' train losses for runs without a train_curve."""
        dense = [(int(s), float(v)) for s, v in self.metrics.get("train_curve") or [] if isinstance(v, (int, float))]
        evals = self.curve("train")
        if not dense:
            return evals
        return ([evals[0]] if evals and evals[0][0] == 0 else []) + [p for p in dense if p[0] > 0]

    def max_iters(self) -> int | None:
        m = self.metrics.get("max_iters") or self.setting("max_iters")
        return int(m) if isinstance(m, (int, float)) else None


def parse_log(path: Path) -> tuple[list[int], list[float], list[float]]:
    """A training.log's evaluations (none when the file is missing)."""
    return _parse_log(path) if Path(path).is_file() else ([], [], [])


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


def _has_result(d: Path) -> bool:
    return (d / METRICS).is_file() or (d / FAILED).is_file()


def _run_dirs(folder: Path, job_named: bool = False) -> list[Path]:
    """The run folders directly inside `folder`: those that wrote metrics.json (or failed.json)."""
    try:
        subs = sorted(d for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
    except OSError:
        return []
    return [d for d in subs if _has_result(d) and (not job_named or JOB_DIR.match(d.name))]


def _sweeps_below(root: Path, depth: int = SEARCH_DEPTH) -> list[Path]:
    """Folders below root whose job folders (0_..., 1_...) hold results; not descending into them."""
    found = []
    if _run_dirs(root, job_named=True):
        return [root]
    if depth > 0:
        for d in sorted(root.iterdir()):
            if d.is_dir() and not d.name.startswith(".") and not _has_result(d):
                found += _sweeps_below(d, depth - 1)
    return found


def _finished_at(sweep: Path) -> float:
    """When the sweep's last run wrote its result."""
    return max((d / f).stat().st_mtime for d in _run_dirs(sweep) for f in (METRICS, FAILED) if (d / f).is_file())


def find_sweep(folder: str | Path | None) -> tuple[Path, str | None]:
    """The sweep to report, and how it was chosen (None when `folder` is the sweep itself).
    `folder`: a sweep (its subfolders are runs), a folder holding sweeps (the newest is taken),
    or None (the newest sweep under outputs/)."""
    root = OUTPUTS if folder is None else Path(folder)
    if not root.is_dir():
        where = "no outputs/ folder here" if folder is None else f"'{root}' is not a folder"
        raise ConfigError(
            f"{where}; give the sweep's output folder (its out_dir): python -m gptlab.report outputs/<experiment>"
        )
    if _has_result(root) and not _run_dirs(root):
        raise ConfigError(
            f"'{root}' is one run's folder, not a sweep; give the sweep folder that holds its runs ('{root.parent}')"
        )
    if _run_dirs(root):
        return root, None
    sweeps = _sweeps_below(root)
    if not sweeps:
        raise ConfigError(
            f"no finished runs under '{root}' (no metrics.json in its subfolders, nor a sweep below it); "
            "give a sweep's folder: python -m gptlab.report outputs/<experiment>"
        )
    newest = max(sweeps, key=lambda s: (_finished_at(s), str(s)))
    if len(sweeps) == 1:
        return newest, f"the only sweep under {root}"
    return newest, f"the newest of {len(sweeps)} sweeps under {root} (by its last run's end)"


def _load_run(d: Path) -> Run:
    metrics = read_metrics(d) or {}
    if (d / FAILED).is_file() and metrics.get("status", "failed") != "ok":
        f = json.loads((d / FAILED).read_text())
        metrics.setdefault("status", "failed")
        metrics.setdefault("error", f"{f.get('type', 'error')}: {f.get('error', '')}")
    cfg_file = d / CONFIG
    config = OmegaConf.to_container(OmegaConf.load(cfg_file)) if cfg_file.is_file() else {}
    run = Run(d, metrics, _overrides(d), config)
    if metrics.get("evals"):
        run.evals = [e for e in metrics["evals"] if isinstance(e, dict) and "step" in e]
    else:  # older runs, and failed ones that stopped before writing their history
        run.evals = [{"step": s, "train_loss": t, "val_loss": v} for s, t, v in zip(*parse_log(d / TRAINING_LOG))]
    return run


def load_runs(sweep_dir: Path) -> list[Run]:
    """Every run folder of the sweep that finished or failed (holds metrics.json or failed.json), in job order."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise ConfigError(f"'{sweep_dir}' is not a folder; give the sweep's output folder (its out_dir)")
    runs = [_load_run(d) for d in _run_dirs(sweep_dir)]
    if not runs:
        raise ConfigError(f"no finished runs under '{sweep_dir}' (no metrics.json); did the sweep run to the end?")

    def order(r: Run):
        m = re.match(r"(\d+)_", r.name)
        return (int(m.group(1)) if m else math.inf, str(r.path))

    return sorted(runs, key=order)


def swept_keys(runs: list[Run]) -> list[str]:
    """Keys set to different values in different runs: what the sweep varied."""
    # where a run was written (out_dir: a job added to the sweep's folder by hand) is not a setting
    keys = sorted({k for r in runs for k in r.overrides if not is_place_key(k)})
    return [k for k in keys if len({r.overrides.get(k) for r in runs}) > 1]


def label(run: Run, keys: list[str]) -> str:
    """The variant's name when the run has one, then the other swept key=values."""
    parts = [run.variant] if run.variant else []
    parts += [f"{k}={run.overrides.get(k, '-')}" for k in keys if not (k == "variant" and run.variant)]
    return ", ".join(parts) or run.name


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        elif not isinstance(v, list):
            out[f"{prefix}{k}"] = v
    return out


def settings(runs: list[Run]) -> dict[Path, str]:
    """What a variant changed: the config values that differ between the runs, per run."""
    flat = {r.path: _flat({k: v for k, v in r.config.items() if k != "report"}) for r in runs if r.config}
    keys = sorted({k for f in flat.values() for k in f})
    # cpu_scale.* are the values a CPU run already applied (they show in the keys themselves)
    differ = [
        k
        for k in keys
        if k not in NOT_SETTINGS
        and not is_place_key(k)
        and not k.startswith("cpu_scale.")
        and len({repr(f.get(k)) for f in flat.values()}) > 1
    ]
    return {p: ", ".join(f"{k}={f.get(k)}" for k in differ) for p, f in flat.items()}


def _fmt(v: float | None, digits: int = 4) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def _time(m: dict) -> str:
    return f"{m['wall_time_s']:.0f} s" if isinstance(m.get("wall_time_s"), (int, float)) else "-"


def _seconds(v) -> str:
    return f"{v:.0f} s" if isinstance(v, (int, float)) else "-"


def _share(v) -> str:
    return f"{v:.0%}" if isinstance(v, (int, float)) else "-"


def _eval_text(m: dict) -> str:
    """', best val after 151 s, evaluation 12% of the wall time (18 s)': runs from before these keys have none."""
    out = f", best val after {_seconds(m['best_val_time_s'])}" if m.get("best_val_time_s") is not None else ""
    if isinstance(m.get("eval_share"), (int, float)):
        out += f", evaluation {_share(m['eval_share'])} of the wall time ({_seconds(m.get('eval_s'))})"
    return out


def _memory(m: dict) -> str:
    b = m.get("peak_memory_bytes")
    if not isinstance(b, (int, float)):
        return "-"
    text = f"{b / 1e6:,.0f} MB {'GPU' if m.get('peak_memory_kind') == 'cuda' else 'RSS'}"
    start = m.get("memory_at_start_bytes")
    if isinstance(start, (int, float)) and start > 0:
        # on CPU most of the resident memory is imported code; what the run itself added is the difference
        text += f" (+{(b - start) / 1e6:,.0f} MB over the {start / 1e6:,.0f} MB at its start)"
    return text


def _speed(m: dict) -> str:
    return f"{m['tokens_per_s']:,.0f} tokens/s" if isinstance(m.get("tokens_per_s"), (int, float)) else "-"


def _md_table(head: list[str], rows: list[list[str]]) -> str:
    return "\n".join(
        ["| " + " | ".join(head) + " |", "|" + "---|" * len(head), *("| " + " | ".join(r) + " |" for r in rows)]
    )


def _bits_cell(r: Run, mixed: bool) -> str:
    v, unit = r.val_bits()
    return "-" if v is None else f"{v:.4f}" + (f" {unit}" if mixed else "")


def table(runs: list[Run], keys: list[str]) -> str:
    what = settings(runs) if any(r.variant for r in runs) else {}
    units = {r.val_bits()[1] for r in runs} - {None}
    bits_head = f"best val {next(iter(units))}" if len(units) == 1 else "best val bits"
    head = [
        "run",
        *keys,
        *(["settings"] if what else []),
        *COLUMNS.values(),
        "best val ppl",
        bits_head,
        "best at step",
        "steps",
        "stopped",
        "status",
        "time",
        "best at",
        "eval share",
    ]
    rows = []
    for r in runs:
        m = r.metrics
        rows.append(
            [
                r.name,
                *(r.overrides.get(k, "-") for k in keys),
                *([what.get(r.path, "-")] if what else []),
                *(_fmt(r.value(c)) for c in COLUMNS),
                _fmt(r.val_ppl(), 2),
                _bits_cell(r, len(units) > 1),
                str(m.get("best_step", "-")),
                str(m.get("iters", "-")),
                m.get("stop_reason", "-"),
                r.status,
                _time(m),
                _seconds(m.get("best_val_time_s")),
                _share(m.get("eval_share")),
            ]
        )
    return _md_table(head, rows)


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
    scored = [r for r in runs if r.value(metric) is not None]
    if not scored:
        return f"no run has a {metric}"
    if not spec.get("question"):
        best = (min if lower else max)(scored, key=lambda r: r.value(metric))
        return f"{'lowest' if lower else 'highest'} {metric}: {label(best, keys)} ({best.value(metric):.4f})"

    base_spec = spec.get("baseline")
    base = next((r for r in runs if _matches(r, base_spec)), None) if base_spec else runs[0]
    if base is None:
        raise ConfigError(
            f"report.baseline '{base_spec}' matches none of the runs ({', '.join(label(r, keys) for r in runs)})"
        )
    b = base.value(metric)
    if b is None:
        return f"{spec['question']} -> no answer: the baseline {label(base, keys)} has no {metric} ({base.status})"
    others = [r for r in scored if r is not base]
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


# --- per run: the guide's analysis template


@dataclass
class Assessment:
    """What gptlab.analysis says about one run."""

    early: an.Window | None
    speed: str | None  # fast / slow / median against the sweep, or None
    verdict: an.Verdict | None  # None for a failed run
    overfit: an.Overfit


def _verdict_curve(r: Run) -> list[an.Point]:
    evals = r.curve("train")
    return evals if len(evals) >= 3 else r.train_points() or evals


def assess(runs: list[Run]) -> dict[Path, Assessment]:
    early = {}
    for r in runs:
        pts = r.train_points()
        early[r.path] = an.early_drop(pts, r.max_iters() or (pts[-1][0] if pts else 0))
    falls = [-early[r.path].change if early[r.path] else None for r in runs]
    out = {}
    for r, speed in zip(runs, an.speed_labels(falls)):
        val = r.curve("val")
        finite_val = [p for p in val if an.finite(p[1])]
        best_step = min(finite_val, key=lambda p: p[1])[0] if finite_val else None
        train_at_best = dict(r.curve("train")).get(best_step)
        overfit = an.overfitting(
            r.value("final_train_loss"), r.value("final_val_loss"), r.value("best_val_loss"), train_at_best
        )
        v = None if r.status == "failed" else an.convergence(_verdict_curve(r), r.status)
        out[r.path] = Assessment(early[r.path], speed, v, overfit)
    return out


def _early_text(a: Assessment) -> str:
    w = a.early
    if w is None:
        return "-"
    return f"{w.start_loss:.3f} -> {w.end_loss:.3f} over steps {w.start_step}-{w.end_step} ({w.change:+.3f})" + (
        f", {a.speed}" if a.speed else ""
    )


def _sample_block(text: str, lines: int = 4, width: int = 100) -> list[str]:
    shown = [ln[:width] for ln in text.strip("\n").splitlines()[:lines]]
    return ["", "  ```text", *(f"  {ln}".replace("```", "'''") for ln in shown), "  ```"]


def _units_text(r: Run, which: str) -> str:
    v, unit = r.val_bits(which)
    return f"perplexity {_fmt(r.val_ppl(which), 2)}" + (f", {v:.4f} {unit}" if v is not None else "")


def run_block(r: Run, a: Assessment, keys: list[str]) -> str:
    m = r.metrics
    lines = [f"### {label(r, keys)} (`{r.name}`)", ""]
    if r.status != "ok":
        lines.append(f"- **{r.status}**: {m.get('error') or 'no error recorded'}")
    lines.append(f"- early loss drop (first {an.EARLY_FRACTION:.0%} of max_iters): {_early_text(a)}")
    if a.verdict:
        lines.append(f"- convergence: **{a.verdict.name}** ({a.verdict.why})")
    lines.append(
        f"- final val loss {_fmt(r.value('final_val_loss'))}, best {_fmt(r.value('best_val_loss'))} at step "
        f"{m.get('best_step', '-')}; train-val gap {_fmt(a.overfit.gap, 3)}: "
        + {True: "**overfitting**", False: "no overfitting", None: "-"}[a.overfit.flag]
        + f" ({a.overfit.why})"
    )
    lines.append(f"- final val {_units_text(r, 'final')}; best val {_units_text(r, 'best')}")
    lines.append(f"- wall time {_time(m)}{_eval_text(m)}, {_speed(m)}, peak memory {_memory(m)}")
    if m.get("sample"):
        lines.append("- sample:" + "\n".join(_sample_block(m["sample"])))
    return "\n".join(lines)


# --- the experiments' own questions (report.analysis)


def _ok(runs: list[Run]) -> list[Run]:
    return [r for r in runs if r.status != "failed" and r.evals]


def _names(rs: list[Run], keys: list[str]) -> str:
    return ", ".join(label(r, keys) for r in rs) or "none"


def hparams(runs: list[Run], keys: list[str], found: dict[Path, Assessment], sweep: Path) -> list[str]:
    """Experiment 1: which run reached the lowest val loss; which oscillated or diverged."""
    scored = [r for r in runs if r.value("best_val_loss") is not None and an.finite(r.value("best_val_loss"))]
    rows = [
        [
            label(r, keys),
            _early_text(found[r.path]),
            found[r.path].verdict.name if found[r.path].verdict else r.status,
            _fmt(r.value("best_val_loss")),
            _fmt(r.value("final_val_loss")),
            _time(r.metrics),
            _speed(r.metrics),
        ]
        for r in runs
    ]
    by = {
        name: [r for r in runs if found[r.path].verdict and found[r.path].verdict.name == name]
        for name in ("converged", "still improving", "oscillating", "diverged")
    }
    best = min(scored, key=lambda r: r.value("best_val_loss")) if scored else None
    line = (
        f"lowest val loss: **{label(best, keys)}**"
        f" ({best.value('best_val_loss'):.4f} at step {best.metrics.get('best_step', '-')})"
        if best
        else "no run has a val loss"
    )
    line += "; " + "; ".join(f"{name}: {_names(rs, keys)}" for name, rs in by.items())
    failed = [r for r in runs if r.status == "failed"]
    if failed:
        line += f"; failed: {_names(failed, keys)}"
    return [
        _md_table(["run", "early loss drop", "convergence", "best val", "final val", "time", "speed"], rows),
        "**Verdict:** " + line,
    ]


def _dtype(r: Run) -> str | None:
    """The precision a run trained in: metrics.json's (resolved), else config.yaml's unless auto."""
    d = r.metrics.get("dtype") or r.setting("dtype")
    return None if d in (None, "auto") else str(d)


def _layout(r: Run) -> tuple:
    return r.setting("batch_size"), r.setting("gradient_accumulation_steps")


def _eval_diff(a: Run, b: Run) -> an.CurveDiff | None:
    """The larger of the two eval curves' (train, val) largest differences."""
    found = [x for x in (an.curve_difference(a.curve(s), b.curve(s)) for s in ("train", "val")) if x]
    return max(found, key=lambda x: x.max_abs, default=None)


def _split_by_precision(ok: list[Run]) -> tuple[str | None, list[Run], list[Run]]:
    """(the sweep's dtype, the runs compared -- one per layout, in it --, the others: float32
    references of a low-precision sweep, repeats of a layout)."""
    dtypes = [_dtype(r) for r in ok]
    main = next((d for d in dtypes if d in an.LOW_PRECISION), dtypes[0] if dtypes else None)
    compared, layouts = [], set()
    for r in ok:
        if _dtype(r) == main and _layout(r) not in layouts:
            compared.append(r)
            layouts.add(_layout(r))
    return main, compared, [r for r in ok if r not in compared]


def _floor(main: str | None, compared: list[Run], others: list[Run], keys: list[str]) -> tuple[float | None, list[str]]:
    """The rounding floor of a low-precision sweep: how far a layout's curves move between its
    float32 run and its run in the sweep's dtype (the largest such distance); lines saying so,
    and what the other runs (repeats) differ by."""
    floor, lines = None, []
    for o in others:
        twin = next((r for r in compared if _layout(r) == _layout(o)), None)
        d = _eval_diff(twin, o) if twin else None
        if twin is None or d is None:
            continue
        what = f"{label(o, keys)} ({_dtype(o) or 'dtype unknown'}) vs {label(twin, keys)} ({_dtype(twin)})"
        if main in an.LOW_PRECISION and _dtype(o) == "float32":
            floor = max(floor or 0.0, d.max_abs)
            lines.append(f"- rounding floor, {what}: {_delta(d.max_abs)} at step {d.step} (the same layout)")
        else:
            lines.append(f"- {what} repeats a layout: they differ by at most {_delta(d.max_abs)}")
    return floor, lines


def grad_accum(runs: list[Run], keys: list[str], found: dict[Path, Assessment], sweep: Path) -> list[str]:
    """Experiment 2: is batch_size x gradient_accumulation_steps the same as one big batch? In
    bfloat16 / float16 the answer is against the rounding floor the sweep measured (a float32 run
    of one layout), in float32 against the float tolerance."""
    main, ok, others = _split_by_precision(_ok(runs))
    if len(ok) < 2:
        return [f"**Verdict:** cannot compare: needs two finished runs, the sweep has {len(ok)} ({_names(ok, keys)})."]
    a = ok[0]
    out = [
        "Theory: effective batch = batch_size × gradient_accumulation_steps: "
        + "; ".join(
            f"{label(r, keys)} {r.setting('batch_size')} × {r.setting('gradient_accumulation_steps')} = "
            + (
                str(r.setting("batch_size") * r.setting("gradient_accumulation_steps"))
                if isinstance(r.setting("batch_size"), int)
                and isinstance(r.setting("gradient_accumulation_steps"), int)
                else "?"
            )
            for r in ok
        )
        + "."
    ]
    floor, floor_lines = _floor(main, ok, others, keys)
    out.append(
        f"Precision: {main or 'unknown (runs from before metrics.json recorded it)'}"
        + ("." if not floor_lines else ":\n" + "\n".join(floor_lines))
    )
    verdicts = []
    for b in ok[1:]:
        d = {split: an.curve_difference(a.curve(split), b.curve(split)) for split in ("train", "val")}
        dense = an.curve_difference(a.train_points()[1:], b.train_points()[1:])
        worst = max((x.max_abs for x in d.values() if x), default=None)
        pair = f"{label(a, keys)} vs {label(b, keys)}"
        lines = [f"{pair}, largest |Δ loss|:"]
        lines += [
            f"- {split} loss at the evaluations: "
            + (f"{_delta(x.max_abs)} at step {x.step} ({x.common} common evaluations)" if x else "no common steps")
            for split, x in d.items()
        ]
        lines.append(
            "- training-batch loss (train_curve, per log interval): "
            + (f"{_delta(dense.max_abs)} at step {dense.step} ({dense.common} common steps)" if dense else "-")
        )
        wa, wb = a.metrics.get("wall_time_s"), b.metrics.get("wall_time_s")
        ratio = f"{wb / wa:.2f}×" if an.finite(wa) and an.finite(wb) and wa > 0 else "-"
        lines.append(
            f"- wall time {label(b, keys)} / {label(a, keys)}: {ratio} ({_time(b.metrics)} vs {_time(a.metrics)}; "
            f"{_speed(b.metrics)} vs {_speed(a.metrics)})"
            f"; final val {_fmt(b.value('final_val_loss'))} vs {_fmt(a.value('final_val_loss'))}"
        )
        out.append("\n".join(lines))
        if worst is None:
            verdicts.append(f"{pair}: no common evaluations to compare")
        else:
            verdicts.append(f"{pair}: {an.same_curves(worst, main, floor).text}; wall-time ratio {ratio}")
    return [*out, "**Verdict:** " + "; ".join(verdicts)]


_delta = an.fmt_delta


def _is_zero(v) -> bool:
    return isinstance(v, (int, float)) and v == 0


def _with_regularization(r: Run, keys: list[str]) -> str:
    """The run's label, with its dropout and weight decay unless the label says them."""
    name = label(r, keys)
    if "dropout=" in name and "weight_decay=" in name:
        return name
    return f"{name} (dropout={r.setting('dropout')}, weight_decay={r.setting('weight_decay')})"


def regularization(runs: list[Run], keys: list[str], found: dict[Path, Assessment], sweep: Path) -> list[str]:
    """Experiment 3: which regularisation narrows the train-val gap of a model that overfits?"""
    ok = [r for r in _ok(runs) if found[r.path].overfit.gap is not None]
    if not ok:
        return ["**Verdict:** no run has a final train and val loss."]
    base = next((r for r in ok if _is_zero(r.setting("dropout")) and _is_zero(r.setting("weight_decay"))), None)
    rows = []
    for r in ok:
        o = found[r.path].overfit
        closed = f"{found[base.path].overfit.gap - o.gap:+.3f}" if base and r is not base else "-"
        rows.append(
            [
                label(r, keys),
                str(r.setting("dropout")),
                str(r.setting("weight_decay")),
                _fmt(r.value("final_train_loss")),
                _fmt(r.value("final_val_loss")),
                _fmt(o.gap),
                "yes" if o.flag else "no",
                closed,
                _fmt(r.value("best_val_loss")),
            ]
        )
    out = [
        _md_table(
            [
                "run",
                "dropout",
                "weight_decay",
                "final train",
                "final val",
                "gap",
                "overfitting",
                "gap closed",
                "best val",
            ],
            rows,
        )
    ]
    if base is None:
        smallest = min(ok, key=lambda r: found[r.path].overfit.gap)
        return [
            *out,
            f"**Verdict:** no run has dropout=0 and weight_decay=0 to be the baseline; smallest gap: "
            f"{label(smallest, keys)} ({found[smallest.path].overfit.gap:.3f}"
            f", best val {_fmt(smallest.value('best_val_loss'))})",
        ]
    return [*out, "**Verdict:** " + _regularization_verdict(base, ok, keys, found)]


def _regularization_verdict(base: Run, ok: list[Run], keys: list[str], found: dict[Path, Assessment]) -> str:
    """Does the baseline overfit, and which regularised run closed its gap most?"""
    bo = found[base.path].overfit
    line = (
        f"the baseline {_with_regularization(base, keys)} {'overfits' if bo.flag else 'does not overfit'} "
        f"({bo.why}; best val {_fmt(base.value('best_val_loss'))})"
    )
    others = [r for r in ok if r is not base]
    if others:
        top = max(others, key=lambda r: bo.gap - found[r.path].overfit.gap)
        to = found[top.path].overfit
        verb = "closed the gap most" if to.gap < bo.gap else "closed no gap; the least widened"
        tb, bb = top.value("best_val_loss"), base.value("best_val_loss")
        line += (
            f"; {verb}: **{_with_regularization(top, keys)}**: "
            f"gap {bo.gap:.3f} -> {to.gap:.3f} ({to.gap - bo.gap:+.3f}), best val {_fmt(tb)}"
            + (f" ({tb - bb:+.4f} vs the baseline's)" if tb is not None and bb is not None else "")
        )
    return line


def _window_text(w: an.Window | None) -> str:
    return (
        "-"
        if w is None
        else f"{w.change:+.3f} (steps {w.start_step}-{w.end_step}: {w.start_loss:.3f} -> {w.end_loss:.3f})"
    )


def lr_schedule(runs: list[Run], keys: list[str], found: dict[Path, Assessment], sweep: Path) -> list[str]:
    """Experiment 4: what warmup does to the first steps and decay to the last ones."""
    ok = _ok(runs)
    if not ok:
        return ["**Verdict:** no run finished."]
    rows = []
    for r in ok:
        pts = r.train_points()
        last = pts[-1][0] if pts else 0
        rows.append(
            [
                label(r, keys),
                an.schedule_name(r.setting("warmup_iters") or 0, r.setting("decay_lr")),
                str(r.setting("warmup_iters")),
                str(r.setting("decay_lr")),
                _window_text(an.window_change(pts, 0, FIRST_STEPS)),
                _window_text(an.window_change(pts, last - LAST_STEPS, last)),
                _fmt(r.value("final_val_loss")),
                found[r.path].verdict.name if found[r.path].verdict else "-",
            ]
        )
    head = [
        "run",
        "schedule",
        "warmup_iters",
        "decay_lr",
        f"first {FIRST_STEPS} steps",
        f"last {LAST_STEPS} steps",
        "final val",
        "convergence",
    ]
    ended = [r for r in ok if r.value("final_val_loss") is not None and an.finite(r.value("final_val_loss"))]
    note = (
        "Loss changes of the training-batch loss "
        "(train_curve: the mean over each log interval, ending at the step named), "
        f"from the step-0 evaluation for the first {FIRST_STEPS} steps and from the point nearest {LAST_STEPS} steps "
        "before the last for the last ones; negative: it fell."
    )
    if not ended:
        return [_md_table(head, rows), note, "**Verdict:** no run has a final val loss."]
    low = min(ended, key=lambda r: r.value("final_val_loss"))
    sched = an.schedule_name(low.setting("warmup_iters") or 0, low.setting("decay_lr"))
    return [
        _md_table(head, rows),
        note,
        f"**Verdict:** ended lowest: **{sched}** ({label(low, keys)}"
        f", final val {low.value('final_val_loss'):.4f}, best val {_fmt(low.value('best_val_loss'))})",
    ]


def _plt():
    import matplotlib  # only here: matplotlib (~0.7 s to import) loads once a report draws

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # only here: after choosing the Agg backend (no display)

    return plt


def scaling(runs: list[Run], keys: list[str], found: dict[Path, Assessment], sweep: Path) -> list[str]:
    """Experiment 5: val loss, time and memory against model size; scaling.png."""
    rows, pts = [], []
    for r in runs:
        nl, nh, ne = (r.setting(k) for k in ("n_layer", "n_head", "n_embd"))
        vocab = r.metrics.get("vocab_size")
        formula = an.guide_params(nl, ne, vocab) if all(isinstance(x, int) for x in (nl, ne, vocab)) else None
        params = r.metrics.get("params") or formula
        rows.append(
            [
                label(r, keys),
                str(nl),
                str(nh),
                str(ne),
                f"{formula:,}" if formula else "-",
                f"{r.metrics['params']:,}" if r.metrics.get("params") else "-",
                _fmt(r.value("best_val_loss")),
                _time(r.metrics),
                _speed(r.metrics),
                _memory(r.metrics),
                r.status,
            ]
        )
        if params and an.finite(r.value("best_val_loss")):
            pts.append((label(r, keys), float(params), r.value("best_val_loss")))
    head = [
        "run",
        "n_layer",
        "n_head",
        "n_embd",
        "guide formula",
        "params",
        "best val",
        "time",
        "speed",
        "peak memory",
        "status",
    ]
    out = [
        _md_table(head, rows),
        "guide formula = n_layer·16·n_embd² + vocab_size·n_embd, the guide's estimate; params: the "
        "model's exact count (without position embeddings, as nanoGPT counts). A block holds about "
        "12·n_embd² weights (attention 4·n_embd², MLP 8·n_embd²), so the formula's 16 overstates them "
        "by a third: the guide's estimate is an upper bound.",
    ]
    if len(pts) < 2:
        return [*out, "**Verdict:** needs two runs with a val loss and a size to compare."]
    pts.sort(key=lambda p: p[1])
    question = next((r.report.get("question") for r in runs if r.report.get("question")), "val loss against model size")
    _scaling_plot(pts, question, sweep / "scaling.png")
    return [*out, "![val loss against parameters](scaling.png)", "**Verdict:** " + _scaling_verdict(pts)]


def _scaling_plot(pts: list[tuple[str, float, float]], title: str, path: Path) -> None:
    """Best val loss against parameters, both on log axes, each point labelled."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 5.5))
    ax.plot([p[1] for p in pts], [p[2] for p in pts], "o-")
    for name, x, y in pts:
        ax.annotate(f"{name}\n{x / 1e6:.2f}M, {y:.3f}", (x, y), textcoords="offset points", xytext=(6, 6), fontsize=9)
    ax.set(
        xscale="log",
        yscale="log",
        xlabel="parameters (log)",
        ylabel="best val loss (log)",
        title=title,
    )
    # losses span less than a decade: plain numbers on the log axis, not 1.6x10^0
    ax.yaxis.set_major_formatter("{x:.2f}")
    ax.yaxis.set_minor_formatter("{x:.2f}")
    ax.margins(x=0.2, y=0.1)  # room for the labels of the end points
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _scaling_verdict(pts: list[tuple[str, float, float]]) -> str:
    """Does val loss fall with every increase in size, and do the returns diminish?"""
    steps = an.size_steps(pts)
    falls = all(s.fall > 0 for s in steps)
    line = (
        "val loss falls with every increase in size: "
        + ("**yes**" if falls else "**no**")
        + " -- "
        + "; ".join(f"{s.smaller} -> {s.larger}: {-s.fall:+.4f} ({s.per_decade:.3f} per 10× parameters)" for s in steps)
    )
    dim = an.diminishing_from(steps)
    if dim:
        line += (
            f"; returns diminish from {dim.smaller} -> {dim.larger}"
            " (a smaller gain per 10× parameters than the step before)"
        )
    elif len(steps) >= 2:
        line += "; no diminishing returns: every step gains at least as much per 10× parameters as the one before"
    return line


def _by_setting(runs: list[Run], keys: list[str]) -> dict[str, list[Run]]:
    """Finished runs grouped by what they change, the seeds of one setting together (job order)."""
    groups: dict[str, list[Run]] = {}
    for r in _ok(runs):
        groups.setdefault(label(r, [k for k in keys if k != "seed"]), []).append(r)
    return groups


def _time_curve(r: Run) -> list[tuple[float, float]]:
    """(wall-clock seconds, val loss) at each evaluation (runs from before the time was recorded: none)."""
    return [
        (float(e["wall_time_s"]), float(e["val_loss"]))
        for e in r.evals
        if isinstance(e.get("wall_time_s"), (int, float)) and isinstance(e.get("val_loss"), (int, float))
    ]


def _mean(values: list) -> float | None:
    known = [float(v) for v in values if an.finite(v)]
    return sum(known) / len(known) if known else None


def _seeds_text(s: an.OverSeeds | None) -> str:
    return "-" if s is None else f"{s.mean:.4f} (range {s.spread:.4f}, {s.n} seed{'s' * (s.n > 1)})"


def _reach_text(times: list[float | None]) -> str:
    reached = [t for t in times if t is not None]
    if not reached:
        return "not reached"
    text = f"{sum(reached) / len(reached):.0f} s"
    return text if len(reached) == len(times) else f"{text} ({len(reached)}/{len(times)} seeds)"


def _modern_row(name: str, rs: list[Run], base: an.OverSeeds | None, target: float | None) -> tuple[list, dict]:
    best = an.over_seeds([r.value("best_val_loss") for r in rs])
    times = [an.time_to_reach(_time_curve(r), target) if target is not None else None for r in rs]
    beyond = an.beyond_spread(best, base) if best and base else None
    memory = _mean([r.metrics.get("peak_memory_bytes") for r in rs])
    row = [
        name,
        _seeds_text(best),
        "-" if best is None or base is None else f"{best.mean - base.mean:+.4f}",
        {True: "yes", False: "no", None: "-"}[beyond],
        _reach_text(times) if target is not None else "-",
        _fmt(_mean([r.metrics.get("wall_time_s") for r in rs]), 0) + " s",
        f"{_mean([r.metrics.get('tokens_per_s') for r in rs]) or 0:,.0f}",
        "-" if memory is None else f"{memory / 1e6:,.0f} MB",
    ]
    reached = [t for t in times if t is not None]
    return row, {"best": best, "beyond": beyond, "time": _mean(reached) if len(reached) == len(times) else None}


def modern(runs: list[Run], keys: list[str], found: dict[Path, Assessment], sweep: Path) -> list[str]:
    """Experiment 7: what each change beyond the GPT-2 recipe buys, per step and per second, against
    the seed-to-seed spread; modern.png (val loss against steps and against wall-clock time)."""
    groups = _by_setting(runs, keys)
    if not groups:
        return ["**Verdict:** no finished runs to compare."]
    spec = next((r.report.get("baseline") for r in runs if r.report.get("baseline")), None)
    base_name = next((n for n, rs in groups.items() if spec and _matches(rs[0], spec)), next(iter(groups)))
    base_runs = groups[base_name]
    base = an.over_seeds([r.value("best_val_loss") for r in base_runs])
    target = _mean([r.value("final_val_loss") for r in base_runs])
    rows, facts = [], {}
    for name, rs in groups.items():
        row, facts[name] = _modern_row(name, rs, base, target)
        if name == base_name:
            # the baseline reaches its own final val loss at its last evaluation: its whole run
            facts[name]["time"] = _mean([_time_curve(r)[-1][0] for r in rs if _time_curve(r)])
            row[4] = f"{_fmt(facts[name]['time'], 0)} s (its last evaluation)"
        rows.append(row)
    head = ["setting", "best val (mean)", "Δ vs baseline", "beyond seed spread", "time to baseline's final val"]
    out = [
        _md_table([*head, "wall time", "tokens/s", "peak memory"], rows),
        f"Baseline: **{base_name}**; its final val loss (mean over seeds) is "
        f"{_fmt(target)}. *Time to* it: wall-clock seconds from the start of the run (evaluations included) "
        "to the first evaluation at or below it, mean over the seeds that got there. *Beyond seed spread*: the "
        "difference in mean best val loss is larger than the range over seeds of either setting.",
    ]
    _plot_modern(groups, sweep / "modern.png", next((r.report.get("question") for r in runs), None))
    out.append("![val loss against steps and against wall-clock time](modern.png)")
    return [*out, "**Verdict:** " + _modern_verdict(base_name, facts)]


def _modern_verdict(base_name: str, facts: dict[str, dict]) -> str:
    others = {n: f for n, f in facts.items() if n != base_name and f["best"]}
    if not others:
        return f"only the baseline {base_name} finished; nothing to compare."
    base = facts[base_name]["best"]
    if all(f["beyond"] is None for f in others.values()):
        line = "cannot separate the changes from seed noise: each setting needs at least two seeds"
    else:
        better = sorted(
            (n for n, f in others.items() if f["beyond"] and f["best"].mean < base.mean),
            key=lambda n: others[n]["best"].mean,
        )
        worse = [n for n, f in others.items() if f["beyond"] and f["best"].mean > base.mean]
        within = [n for n, f in others.items() if f["beyond"] is False]
        delta = lambda n: f"{n} ({others[n]['best'].mean - base.mean:+.4f})"  # noqa: E731
        line = (
            f"better than {base_name} beyond the seed spread: {', '.join(map(delta, better)) or 'none'}; "
            f"worse beyond it: {', '.join(map(delta, worse)) or 'none'}; "
            f"within the spread: {', '.join(within) or 'none'}"
        )
        if better:
            line += f". Most per step: **{better[0]}**"
    timed = {n: f["time"] for n, f in facts.items() if f["time"] is not None}
    fastest = min((n for n in timed if n != base_name), key=lambda n: timed[n], default=None)
    if fastest is not None and base_name in timed:
        line += (
            f". Most per second: **{fastest}** reached {base_name}'s final val loss in {timed[fastest]:.0f} s, "
            f"{timed[fastest] / timed[base_name]:.0%} of {base_name}'s {timed[base_name]:.0f} s"
        )
    elif fastest is None:
        line += f". No other setting reached {base_name}'s final val loss in every seed"
    return line + "."


def _plot_modern(groups: dict[str, list[Run]], path: Path, title: str | None) -> None:
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.5), sharey=True)
    for i, (name, rs) in enumerate(groups.items()):
        for j, r in enumerate(rs):  # every seed, one colour per setting, labelled once
            style = dict(color=f"C{i % 10}", lw=1.3, ls="-" if i < 10 else "--", label=name if j == 0 else None)
            axes[0].plot(*zip(*r.curve("val")), **style)
            if _time_curve(r):
                axes[1].plot(*zip(*_time_curve(r)), **style)
    for ax, x in zip(axes, ("step", "wall-clock seconds (evaluations included)")):
        ax.set(xlabel=x, ylabel="val loss")
        ax.grid(True, alpha=0.3)
    axes[1].legend(fontsize=8)
    fig.suptitle(title or "val loss against steps and against time")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


SECTIONS = {
    "hparams": hparams,
    "grad_accum": grad_accum,
    "regularization": regularization,
    "lr_schedule": lr_schedule,
    "scaling": scaling,
    "modern": modern,
}
assert tuple(SECTIONS) == an.ANALYSES


# --- figures


def _ylim(ax, runs: list[Run]) -> None:
    """Keep a blown-up run from flattening the others: the top is a little above the highest start."""
    starts = [pts[0][1] for r in runs if (pts := r.train_points()) and an.finite(pts[0][1])]
    values = [v for r in runs for _, v in r.train_points() + r.curve("val") if an.finite(v)]
    if starts and values and max(values) > 1.1 * max(starts):
        ax.set_ylim(min(values) * 0.95, max(starts) * 1.1)


def plot_curves(runs: list[Run], keys: list[str], path: Path, title: str) -> None:
    """loss_curves.png: train loss (left: train_curve, else the evaluations) and val loss (right)."""
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.5), sharey=True)
    for i, r in enumerate(runs):
        color = f"C{i % 10}"
        for ax, pts in zip(axes, (r.train_points(), r.curve("val"))):
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], color=color, lw=1.5, label=label(r, keys))
    for ax, name in zip(axes, ("train loss", "val loss")):
        ax.set(xlabel="step", ylabel=name, title=name)
        ax.grid(True, alpha=0.3)
        _ylim(ax, runs)
    axes[1].legend(fontsize=9)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot(runs: list[Run], keys: list[str], path: Path, title: str) -> None:
    """comparison.png: val-loss curves of every run (solid), their train-loss curves (dotted, same colour)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(10, 6))
    for i, r in enumerate(runs):
        color = f"C{i % 10}"
        for split, style in (("val", dict(lw=2)), ("train", dict(lw=1, ls=":"))):
            pts = r.curve(split)
            if pts:
                ax.plot(
                    [p[0] for p in pts], [p[1] for p in pts], color=color, label=f"{label(r, keys)} {split}", **style
                )
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    _ylim(ax, runs)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report(folder: str | Path | None) -> str:
    """Write report.md and the figures into the sweep (found from `folder`, see find_sweep);
    returns the report's text."""
    sweep_dir, how = find_sweep(folder)
    runs = load_runs(sweep_dir)
    keys = swept_keys(runs)
    spec = next((r.report for r in runs if r.report.get("question") or r.report.get("analysis")), {})
    kind = spec.get("analysis")
    if kind is not None and kind not in SECTIONS:
        raise ConfigError(f"report.analysis must be one of {', '.join(SECTIONS)} or null, got '{kind}'")
    question = spec.get("question")
    # job folders of the sweep that wrote nothing: killed, or still going
    unfinished = sorted(
        d.name
        for d in sweep_dir.iterdir()
        if d.is_dir() and not d.name.startswith(".") and JOB_DIR.match(d.name) and not _has_result(d)
    )
    found = assess(runs)
    # the answer first: a bad report: node is refused before any file is written
    answer = SECTIONS[kind](runs, keys, found, sweep_dir) if kind else ["**Verdict:** " + verdict(runs, keys)]
    plot_curves(runs, keys, sweep_dir / "loss_curves.png", question or f"{sweep_dir.name}: loss curves")
    plot(runs, keys, sweep_dir / "comparison.png", question or "experiment comparison")
    bad = [r for r in runs if r.status != "ok"]
    notes = "gap = final val loss - final train loss, both from the last evaluation (clean inputs, eval mode)."
    if unfinished:
        notes += f" Not finished, left out: {', '.join(unfinished)}."
    parts = [f"# Report: {sweep_dir}"]
    if how:
        parts.append(f"Sweep `{sweep_dir}`: {how}.")
    parts += ["## Runs", table(runs, keys), notes]
    if bad:
        parts.append(
            "Runs that did not finish well:\n"
            + "\n".join(
                f"- `{r.name}` ({label(r, keys)}): {r.status}: {r.metrics.get('error') or 'no error recorded'}"
                for r in bad
            )
        )
    parts.append(f"## {question or 'Verdict'}")
    parts += answer
    parts += search.section(sweep_dir)  # a hparams_search sweep: its Optuna study
    parts += [
        "## Loss curves",
        "![train and val loss](loss_curves.png)",
        "![val-loss curves, train dotted](comparison.png)",
        "## Each run",
        *(run_block(r, found[r.path], keys) for r in runs),
        "## Rules",
        "\n".join(an.rules()),
        f"Made by `python -m gptlab.report {sweep_dir}` from each run's metrics.json, training.log, config.yaml "
        "and .hydra/overrides.yaml.",
    ]
    text = "\n\n".join(parts) + "\n"
    (sweep_dir / "report.md").write_text(text)
    return text
