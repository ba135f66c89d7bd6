"""python -m gptlab.report: a sweep's runs as a table, a verdict for the experiment's question,
and a comparison plot -- read from the files the runs wrote."""

import json
import math
import os
import re
import shutil
from pathlib import Path

import pytest

from gptlab.cli.common import translate_argv
from gptlab.cli.report import main as report_main
from gptlab.report import report
from gptlab.rundir import EVAL_LINE
from gptlab.training.run import train

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
QUESTION = "did token masking narrow the train-val gap, and at what cost in val loss?"


TINY_EXP6 = [
    "max_iters=10",
    "eval_interval=5",
    "warmup_iters=2",
    "eval_iters=2",
    "n_layer=1",
    "n_head=2",
    "n_embd=32",
    "block_size=32",
    "device=cpu",
]


@pytest.fixture(scope="module")
def exp6_runs(tmp_path_factory, compose):
    """The exp6 experiment's three runs, shrunk and trained in process into folders named as its
    sweep names them (the report falls back on those names when .hydra/ is absent)."""
    out = tmp_path_factory.mktemp("exp6") / "sweep"
    for job, p in enumerate(["0", "0.1", "0.2"]):
        overrides = ["experiment=exp6_augmentation", f"augment.mask_prob={p}", *TINY_EXP6]
        train(compose(*overrides, tiny=False), out / f"{job}_augment.mask_prob={p}")
    return out


def check_report(sweep):
    text = (sweep / "report.md").read_text()
    rows = [ln for ln in text.splitlines() if ln.startswith("| ") and "augment.mask_prob=" in ln]
    assert [r.split(" | ")[1] for r in rows] == ["0", "0.1", "0.2"]  # the swept column, in job order
    assert "| run | augment.mask_prob | final train | final val | gap (val - train) | best val |" in text
    for row, job in zip(rows, ["0_augment.mask_prob=0", "1_augment.mask_prob=0.1", "2_augment.mask_prob=0.2"]):
        m = json.loads((sweep / job / "metrics.json").read_text())
        cells = row.split(" | ")
        assert float(cells[4]) == pytest.approx(m["final_val_loss"] - m["final_train_loss"], abs=1e-4)
        assert float(cells[5]) == pytest.approx(m["best_val_loss"], abs=1e-4)
        assert float(cells[6]) == pytest.approx(m["best_val_ppl"], abs=0.01)  # best val ppl
        assert float(cells[7]) == pytest.approx(m["best_val_bpc"], abs=1e-4)  # best val bpc (char-level)
        assert cells[10] == "max_iters"
    verdict = next(ln for ln in text.splitlines() if ln.startswith("**Verdict:**"))
    assert QUESTION in verdict and "Cost in best_val_loss" in verdict  # the question from the experiment's config
    assert (sweep / "comparison.png").read_bytes()[:8] == PNG_MAGIC
    return text


def test_report_on_the_exp6_runs(exp6_runs, capsys):
    report_main([str(exp6_runs)])
    printed = capsys.readouterr().out
    assert printed.strip() == check_report(exp6_runs).strip()


@pytest.mark.slow
def test_exp6_sweep_and_report_from_the_command_line(tmp_path, data_root, run_cli):
    """The experiment as a user runs it: hydra.sweeper.params makes three jobs; then the report."""
    out = tmp_path / "sweep"
    p = run_cli(
        "gptlab.train", "experiment=exp6_augmentation", "-m", f"out_dir={out}", f"data.root={data_root}", *TINY_EXP6
    )
    assert p.returncode == 0, p.stderr[-3000:]
    assert sorted(d.name for d in out.iterdir() if d.is_dir()) == [
        "0_augment.mask_prob=0",
        "1_augment.mask_prob=0.1",
        "2_augment.mask_prob=0.2",
    ]
    p = run_cli("gptlab.report", str(out))
    assert p.returncode == 0, p.stderr[-3000:]
    check_report(out)


def fake_run(folder, job, p, train_loss, val_loss, best, question=True):
    d = folder / f"{job}_augment.mask_prob={p}"
    (d / ".hydra").mkdir(parents=True)
    (d / ".hydra" / "overrides.yaml").write_text(f"- augment.mask_prob={p}\n- max_iters=100\n")
    (d / "metrics.json").write_text(
        json.dumps(
            {
                "final_train_loss": train_loss,
                "final_val_loss": val_loss,
                "best_val_loss": best,
                "best_step": 100,
                "iters": 100,
            }
        )
    )
    (d / "training.log").write_text(
        f"step 0: train loss 4.1000, val loss 4.1000\nstep 100: train loss {train_loss:.4f}, val loss {val_loss:.4f}\n"
    )
    node = (
        (
            f"report:\n  question: {QUESTION}\n  metric: gap\n  goal: lower\n  baseline: augment.mask_prob=0\n"
            "  cost: best_val_loss\n"
        )
        if question
        else "report:\n  question: null\n"
    )
    (d / "config.yaml").write_text(node)


def test_verdict_reads_the_question_from_the_runs_config(tmp_path):
    fake_run(tmp_path, 0, "0.1", 1.60, 1.80, 1.75)
    fake_run(tmp_path, 1, "0", 1.40, 1.90, 1.70)  # the baseline need not come first
    fake_run(tmp_path, 2, "0.2", 1.70, 1.85, 1.80)
    runs = report.load_runs(tmp_path)
    line = report.verdict(runs, report.swept_keys(runs))
    assert line.startswith(QUESTION + " -> yes: gap 0.5000 at augment.mask_prob=0;")
    assert "0.2000 at augment.mask_prob=0.1 (-0.3000)" in line
    assert (
        "Cost in best_val_loss (vs 1.7000): +0.0500 at augment.mask_prob=0.1; +0.1000 at augment.mask_prob=0.2" in line
    )
    fake_run(tmp_path / "plain", 0, "0", 1.4, 1.9, 1.7, question=False)
    fake_run(tmp_path / "plain", 1, "0.1", 1.6, 1.8, 1.65, question=False)
    runs = report.load_runs(tmp_path / "plain")
    assert report.verdict(runs, ["augment.mask_prob"]) == "lowest best_val_loss: augment.mask_prob=0.1 (1.6500)"
    (tmp_path / "plain" / "2_augment.mask_prob=0.2" / ".hydra").mkdir(parents=True)  # a run that failed
    assert "Not finished, left out: 2_augment.mask_prob=0.2." in report.report(tmp_path / "plain")


def test_report_of_a_folder_without_runs(tmp_path, capsys):
    for folder, message in [(tmp_path, "no finished runs"), (tmp_path / "nope", "is not a folder")]:
        with pytest.raises(SystemExit) as e:
            report_main([str(folder)])
        assert e.value.code == 2 and f"{message}" in capsys.readouterr().err


def test_multirun_flag_may_follow_the_overrides():
    # `python -m gptlab.train experiment=exp6_augmentation -m`: Hydra's parser wants -m first
    assert translate_argv(["experiment=exp6_augmentation", "-m", "--max_iters=5"]) == [
        "-m",
        "experiment=exp6_augmentation",
        "max_iters=5",
    ]


# --- the guide's five experiments, on synthetic run folders laid out as a sweep writes them

BASE_CONFIG = {
    "n_layer": 6,
    "n_head": 6,
    "n_embd": 384,
    "learning_rate": 1e-3,
    "batch_size": 64,
    "gradient_accumulation_steps": 1,
    "dropout": 0.2,
    "weight_decay": 0.1,
    "warmup_iters": 100,
    "decay_lr": True,
    "max_iters": 1000,
    "seed": 1337,
    "variant": None,
}


def write_run(
    sweep,
    name,
    train,
    gap=0.1,
    *,
    settings=(),
    variant=None,
    analysis=None,
    status="ok",
    error=None,
    steps=range(0, 1001, 100),
    dense=None,
    metrics=(),
    question="what changed?",
):
    """A run folder as gptlab writes it: config.yaml, .hydra/overrides.yaml, training.log (EVAL_LINE's
    format) and metrics.json. `train`: step -> train loss at the evaluations; val = train + gap."""
    d = sweep / name
    (d / ".hydra").mkdir(parents=True)
    settings = dict(settings)
    overrides = [f"variant={variant}"] if variant else [f"{k}={v}" for k, v in settings.items()]
    (d / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    cfg = {
        **BASE_CONFIG,
        **settings,
        "variant": variant,
        "report": {
            "question": question,
            "analysis": analysis,
            "metric": "best_val_loss",
            "goal": "lower",
            "baseline": None,
            "cost": None,
        },
    }
    (d / "config.yaml").write_text(json.dumps(cfg))  # JSON is YAML
    evals = [{"step": s, "train_loss": train(s), "val_loss": train(s) + gap} for s in steps]
    (d / "training.log").write_text(
        "some other line\n"
        + "".join(f"step {e['step']}: train loss {e['train_loss']:.4f}, val loss {e['val_loss']:.4f}\n" for e in evals)
    )
    finite = [e for e in evals if e["val_loss"] == e["val_loss"]]
    best = min(finite, key=lambda e: e["val_loss"])
    m = {
        "status": status,
        "iters": evals[-1]["step"],
        "max_iters": cfg["max_iters"],
        "evals": evals,
        "final_train_loss": evals[-1]["train_loss"],
        "final_val_loss": evals[-1]["val_loss"],
        "best_val_loss": best["val_loss"],
        "best_step": best["step"],
        "stop_reason": "max_iters",
        "train_curve": [[s, train(s) + 0.02] for s in (dense or range(10, evals[-1]["step"] + 1, 10))],
        "tokens_per_s": 9800.0,
        "wall_time_s": 95.2,
        "peak_memory_bytes": 450_000_000,
        "peak_memory_kind": "rss",
        "params": 800_000,
        "vocab_size": 65,
        "sample": "ROMEO:\nline two\nthree\nfour\nfive is not shown\n",
        **dict(metrics),
    }
    if error:
        m["error"] = error
    (d / "metrics.json").write_text(json.dumps(m))
    return d


def section(text, heading):
    """The lines of report.md from `heading` to the next heading of the same level."""
    lines = text.splitlines()
    start = lines.index(heading)
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    return "\n".join(lines[start:end])


def verdict_line(text):
    return next(ln for ln in text.splitlines() if ln.startswith("**Verdict:**"))


def decay(floor, rate=100.0, start=4.2):
    return lambda s: floor + (start - floor) * math.exp(-s / rate)


def test_hparams_names_the_lowest_val_loss_and_the_unstable_runs(tmp_path):
    q = "how do learning rate, batch size and model size change training?"
    oscillating = dict(zip(range(0, 1001, 100), [4.2, 3.0, 2.5, 2.7, 2.3, 2.5, 2.2, 2.4, 2.2, 2.25, 2.2]))
    runs = [
        ("0_baseline", "baseline", decay(1.45), {}),
        ("1_large_lr", "large_lr", lambda s: oscillating[s // 100 * 100], {"learning_rate": 5e-3}),
        ("2_small_lr", "small_lr", lambda s: 4.2 - 2.0 * s / 1000, {"learning_rate": 1e-4}),
        ("3_small_batch", "small_batch", decay(1.6, 300), {"batch_size": 16}),
        (
            "4_large_model",
            "large_model",
            lambda s: 4.2 - s / 500 if s <= 500 else 3.2 + (s - 500) / 100,
            {"n_layer": 8, "n_embd": 512},
        ),
    ]
    for name, variant, f, settings in runs:
        write_run(
            tmp_path,
            name,
            f,
            settings=settings,
            variant=variant,
            analysis="hparams",
            question=q,
            status="diverged" if variant == "large_model" else "ok",
        )
    text = report.report(tmp_path)
    assert f"## {q}" in text
    line = verdict_line(text)
    assert line.startswith("**Verdict:** lowest val loss: **baseline** (1.5501 at step 1000)")
    assert "converged: baseline;" in line and "still improving: small_lr, small_batch;" in line
    assert "oscillating: large_lr" in line and "diverged: large_model" in line
    table = section(text, "## Runs")
    assert "| run | variant | settings | final train |" in table
    assert "| 1_large_lr | large_lr | batch_size=64, learning_rate=0.005, n_embd=384, n_layer=6 |" in table
    assert "| 4_large_model | large_model | batch_size=64, learning_rate=0.001, n_embd=512, n_layer=8 |" in table
    one = section(text, "## Each run").split("### ")[2]  # large_lr's block: the guide's template, filled in
    assert one.startswith("large_lr (`1_large_lr`)")
    assert "early loss drop (first 10% of max_iters): 4.200 -> 3.020 over steps 0-100 (-1.180), fast" in one
    assert "convergence: **oscillating**" in one and "peak memory 450 MB RSS" in one and "9,800 tokens/s" in one
    assert "  ROMEO:\n  line two\n  three\n  four\n  ```" in one  # four lines of the sample, no more
    assert (
        "small_lr" in section(text, "## Each run").split("### ")[3]
        and ", slow" in section(text, "## Each run").split("### ")[3]
    )
    for png in ("loss_curves.png", "comparison.png"):
        assert (tmp_path / png).read_bytes()[:8] == PNG_MAGIC


def test_grad_accum_same_curves_or_not(tmp_path):
    f = decay(1.8)
    for name, shift in [("same", 0.0), ("shifted", 0.05)]:
        sweep = tmp_path / name
        write_run(
            sweep,
            "0_large_batch",
            f,
            variant="large_batch",
            analysis="grad_accum",
            settings={"batch_size": 64, "gradient_accumulation_steps": 1},
            metrics={"wall_time_s": 100.0},
        )
        write_run(
            sweep,
            "1_grad_accum",
            lambda s, shift=shift: f(s) + shift,
            variant="grad_accum",
            analysis="grad_accum",
            settings={"batch_size": 16, "gradient_accumulation_steps": 4},
            metrics={"wall_time_s": 112.0},
        )
        text = report.report(sweep)
        assert (
            "effective batch = batch_size × gradient_accumulation_steps: "
            "large_batch 64 × 1 = 64; grad_accum 16 × 4 = 64." in text
        )
        assert "wall time grad_accum / large_batch: 1.12×" in text
        line = verdict_line(text)
        if shift == 0:
            assert "**the same** -- the eval curves differ by at most 0.0000 (≤ the tolerance 0.01)" in line
        else:
            assert "**not the same** -- the eval curves differ by at most 0.0500 (> the tolerance 0.01)" in line
            assert "training-batch loss (train_curve, per log interval): 0.0500 at step " in text


def exp2_sweep(sweep, shifts: dict, dtypes: dict):
    """exp2's runs as fixtures: variant -> its curve's shift from large_batch's, and its dtype."""
    f = decay(1.8)
    layouts = {"large_batch": (64, 1), "grad_accum": (16, 4), "large_batch_float32": (64, 1)}
    for job, (name, shift) in enumerate(shifts.items()):
        write_run(
            sweep,
            f"{job}_{name}",
            lambda s, shift=shift: f(s) + shift,
            variant=name,
            analysis="grad_accum",
            settings={"batch_size": layouts[name][0], "gradient_accumulation_steps": layouts[name][1]},
            metrics={"dtype": dtypes[name]},
        )
    return verdict_line(report.report(sweep)), (sweep / "report.md").read_text()


def test_grad_accum_in_bf16_is_judged_against_the_measured_floor(tmp_path):
    dtypes = {"large_batch": "bfloat16", "grad_accum": "bfloat16", "large_batch_float32": "float32"}
    # H200's figure: the layouts 0.0135 apart in bf16, beyond the float tolerance
    line, text = exp2_sweep(
        tmp_path / "within", {"large_batch": 0, "grad_accum": 0.0135, "large_batch_float32": 0.02}, dtypes
    )
    assert "Precision: bfloat16:" in text
    assert "- rounding floor, large_batch_float32 (float32) vs large_batch (bfloat16): 0.0200 at step " in text
    assert "large_batch vs grad_accum: **the same within bf16 rounding** (0.0135 ≤ floor 0.0200)" in line
    assert "large_batch_float32" not in line  # the reference is not one of the compared layouts
    line, _ = exp2_sweep(
        tmp_path / "beyond", {"large_batch": 0, "grad_accum": 0.03, "large_batch_float32": 0.005}, dtypes
    )
    assert "large_batch vs grad_accum: **different** (0.0300 > floor 0.0050)" in line


def test_grad_accum_in_bf16_without_a_float32_run_says_the_floor_is_missing(tmp_path):
    line, _ = exp2_sweep(
        tmp_path, {"large_batch": 0, "grad_accum": 0.0135}, {"large_batch": "bfloat16", "grad_accum": "bfloat16"}
    )
    assert "**not the same** within the float tolerance 0.01 (largest difference 0.0135)" in line
    assert "bf16 rounding's floor is not measured" in line and "large_batch_float32 measures it" in line


def test_grad_accum_in_float32_repeats_are_no_floor(tmp_path):
    """All float32 (dtype=float32 on a GPU): the reference repeats large_batch; the tolerance decides."""
    dtypes = dict.fromkeys(["large_batch", "grad_accum", "large_batch_float32"], "float32")
    line, text = exp2_sweep(tmp_path, {"large_batch": 0, "grad_accum": 0, "large_batch_float32": 0}, dtypes)
    assert (
        "large_batch_float32 (float32) vs large_batch (float32) repeats a layout: they differ by at most 0.0000" in text
    )
    assert line == (
        "**Verdict:** large_batch vs grad_accum: **the same** -- the eval curves differ by at most 0.0000 "
        "(≤ the tolerance 0.01); wall-time ratio 1.00×"
    )


@pytest.mark.slow  # four tiny trainings: ~30 s on 2 shared cores
def test_grad_accum_floor_from_real_bf16_and_float32_runs(compose, tmp_path):
    """exp2 shrunk, trained on CPU in bfloat16 autocast with the float32 reference, and in float32:
    the report measures a non-zero bf16 floor, and agreement to float rounding in float32."""

    def run(sweep, job, variant, *extra):
        overrides = ["experiment=exp2_grad_accum", f"variant={variant}", "max_iters=8", "eval_interval=4"]
        overrides += ["eval_iters=2", "eval_batch_size=16", "batch_size=16", "log_interval=1", *extra]
        cfg = compose(*overrides)
        if variant == "grad_accum":
            cfg.batch_size = 4  # 4 x 4 against 16 x 1: one layout of the same 16 sequences
        train(cfg, sweep / f"{job}_{variant}")

    low, full = tmp_path / "bf16", tmp_path / "fp32"
    run(low, 0, "large_batch", "dtype=bfloat16")
    run(low, 1, "grad_accum", "dtype=bfloat16")
    run(low, 2, "large_batch_float32")
    shutil.copytree(low / "2_large_batch_float32", full / "0_large_batch_float32")  # 16 x 1 in float32
    run(full, 1, "grad_accum", "dtype=float32")
    line, text = verdict_line(report.report(low)), (low / "report.md").read_text()
    assert json.loads((low / "0_large_batch" / "metrics.json").read_text())["dtype"] == "bfloat16"
    floor = float(
        re.search(r"rounding floor, large_batch_float32 \(float32\) vs large_batch \(bfloat16\): (\S+)", text)[1]
    )
    assert floor > 1e-5  # bf16 rounding moves the curves (float32 on CPU repeats itself exactly)
    assert re.search(
        r"large_batch vs grad_accum: \*\*(the same within bf16 rounding|different)\*\* \(\S+ [≤>] floor ", line
    )
    line = verdict_line(report.report(full))
    assert "Precision: float32." in (full / "report.md").read_text()
    assert "large_batch_float32 vs grad_accum: **the same** -- the eval curves differ by at most " in line
    assert "(≤ the tolerance 0.01)" in line


def test_regularization_names_the_gap_it_closed(tmp_path):
    settings = [(0, 0, 0.5), (0.2, 0, 0.2), (0, 0.1, 0.4), (0.2, 0.1, 0.1), (0.1, 0, 0.5)]
    for job, (p, wd, gap) in enumerate(settings):
        write_run(
            tmp_path,
            f"{job}_dropout={p},weight_decay={wd}",
            decay(1.2 + gap / 2),
            gap,
            analysis="regularization",
            settings={"dropout": p, "weight_decay": wd},
            steps=range(0, 5001, 500),
        )
    text = report.report(tmp_path)
    table = section(text, "## what changed?")
    assert "| dropout=0.2, weight_decay=0.1 | 0.2 | 0.1 | 1.2500 | 1.3500 | 0.1000 | no | +0.400 | 1.3500 |" in table
    assert "| dropout=0.1, weight_decay=0 | 0.1 | 0 | 1.4500 | 1.9500 | 0.5000 | yes | +0.000 | 1.9500 |" in table
    line = verdict_line(text)
    assert "the baseline dropout=0, weight_decay=0 overfits (gap 0.500 > 0.1; best val 1.9500)" in line
    assert (
        "closed the gap most: **dropout=0.2, weight_decay=0.1**: gap 0.500 -> 0.100 (-0.400), best val 1.3500 "
        "(-0.6000 vs the baseline's)"
    ) in line


def test_lr_schedule_windows_and_the_lowest_end(tmp_path):
    for job, (warm, decay_lr, floor) in enumerate(
        [(0, False, 1.7), (100, False, 1.65), (0, True, 1.6), (100, True, 1.5)]
    ):
        write_run(
            tmp_path,
            f"{job}_warmup_iters={warm},decay_lr={decay_lr}",
            decay(floor, 300),
            analysis="lr_schedule",
            settings={"warmup_iters": warm, "decay_lr": decay_lr},
            steps=range(0, 2001, 250),
        )
    text = report.report(tmp_path)
    # warmup + decay's windows: step 0 (the evaluation) to the train_curve point at 100, and steps 1800-2000
    f = decay(1.5, 300)
    first, last = f(100) + 0.02 - f(0), f(2000) - f(1800)
    row = next(ln for ln in text.splitlines() if ln.startswith("| decay_lr=True, warmup_iters=100 |"))
    assert (
        f"| warmup + decay | 100 | True | {first:+.3f} (steps 0-100: 4.200 -> {f(100) + 0.02:.3f}) | "
        f"{last:+.3f} (steps 1800-2000:" in row
    )
    assert "| no schedule | 0 | False |" in text and "| decay only | 0 | True |" in text
    assert verdict_line(text).startswith(
        "**Verdict:** ended lowest: **warmup + decay** (decay_lr=True, warmup_iters=100, final val 1.6034"
    )


def test_scaling_table_figure_and_verdict(tmp_path):
    sizes = [
        ("tiny", 2, 2, 128, 2.0),
        ("small", 4, 4, 256, 1.7),
        ("medium", 6, 6, 384, 1.55),
        ("large", 8, 8, 512, 1.5),
    ]
    for job, (name, nl, nh, ne, val) in enumerate(sizes):
        params = nl * 12 * ne * ne + 65 * ne + 1000 * nl  # "exact" counts, a little off the formula
        write_run(
            tmp_path,
            f"{job}_{name}",
            decay(val - 0.1),
            0.1,
            variant=name,
            analysis="scaling",
            settings={"n_layer": nl, "n_head": nh, "n_embd": ne},
            metrics={"params": params},
        )
    text = report.report(tmp_path)
    assert "| tiny | 2 | 2 | 128 | 532,608 | 403,536 | 2.0001 |" in text  # 2·16·128² + 65·128
    assert "| large | 8 | 8 | 512 | 33,587,712 |" in text
    line = verdict_line(text)
    assert line.startswith(
        "**Verdict:** val loss falls with every increase in size: **yes** -- "
        "tiny -> small: -0.3000 (0.335 per 10× parameters)"
    )
    assert "returns diminish from small -> medium" in line
    assert (tmp_path / "scaling.png").read_bytes()[:8] == PNG_MAGIC
    m = json.loads((tmp_path / "3_large" / "metrics.json").read_text())
    (tmp_path / "3_large" / "metrics.json").write_text(json.dumps({**m, "best_val_loss": 1.6}))
    assert "increase in size: **no** --" in verdict_line(report.report(tmp_path))


def test_failed_runs_are_listed_with_their_error(tmp_path):
    write_run(tmp_path, "0_learning_rate=0.001", decay(1.5), settings={"learning_rate": 1e-3}, question=None)
    d = write_run(
        tmp_path,
        "1_learning_rate=1",
        lambda s: 4.2,
        settings={"learning_rate": 1},
        status="diverged",
        error="NonFiniteLossError: the training loss became NaN/inf at step 30",
    )
    (d / "metrics.json").write_text(
        json.dumps({"status": "diverged", "error": "NonFiniteLossError: the training loss became NaN/inf at step 30"})
    )
    old = tmp_path / "2_learning_rate=-1"  # a run of an older sweep: failed.json only
    old.mkdir()
    (old / "failed.json").write_text(json.dumps({"error": "learning_rate must be > 0", "type": "ConfigError"}))
    text = report.report(tmp_path)
    assert "| 2_learning_rate=-1 | -1 | - | - | - | - | - | - | - | - | - | failed | - |" in text
    assert (
        "- `1_learning_rate=1` (learning_rate=1): diverged: "
        "NonFiniteLossError: the training loss became NaN/inf at step 30" in text
    )
    assert "- `2_learning_rate=-1` (learning_rate=-1): failed: ConfigError: learning_rate must be > 0" in text
    assert "convergence: **diverged** (the run stopped on a non-finite loss)" in text  # from its training.log
    assert verdict_line(text) == "**Verdict:** lowest best_val_loss: learning_rate=0.001 (1.6001)"


def test_an_unknown_analysis_is_refused_before_writing(tmp_path, capsys):
    write_run(tmp_path, "0_a", decay(1.5), variant="a", analysis="scalling")
    with pytest.raises(SystemExit) as e:
        report_main([str(tmp_path)])
    assert (
        e.value.code == 2
        and "report.analysis must be one of hparams, grad_accum, regularization, lr_schedule, scaling, modern or null, "
        "got 'scalling'"
        in capsys.readouterr().err
    )
    assert not list(tmp_path.glob("*.png")) and not (tmp_path / "report.md").exists()


def test_the_newest_sweep_of_an_experiment_folder(tmp_path, monkeypatch, capsys):
    exp = tmp_path / "outputs" / "exp2_grad_accum"
    old, new = exp / "2026-11-29_22-30-01_1234", exp / "2026-11-30_08-00-00_999"
    for sweep, floor in [(old, 1.5), (new, 1.7)]:
        for job, name in enumerate(["large_batch", "grad_accum"]):
            write_run(sweep, f"{job}_{name}", decay(floor), variant=name)
    os.utime(
        old / "1_grad_accum" / "metrics.json", (2e9, 2e9)
    )  # the older sweep's name sorts first, its files are newer
    os.utime(new / "1_grad_accum" / "metrics.json", (2.1e9, 2.1e9))
    text = report.report(exp)
    assert f"Sweep `{new}`: the newest of 2 sweeps under {exp}" in text
    assert str(old) not in text and "1.5000" not in text and not (old / "report.md").exists()
    assert (new / "report.md").read_text() == text
    monkeypatch.chdir(tmp_path)
    report_main([])  # no folder: the newest sweep under outputs/
    assert f"# Report: {Path('outputs/exp2_grad_accum') / new.name}" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        report_main([str(new / "0_large_batch")])
    assert "is one run's folder, not a sweep; give the sweep folder that holds its runs" in capsys.readouterr().err
    monkeypatch.chdir(tmp_path / "outputs" / "exp2_grad_accum")
    with pytest.raises(SystemExit):
        report_main([])
    assert "no outputs/ folder here; give the sweep's output folder" in capsys.readouterr().err


GUIDE = Path(__file__).resolve().parents[3] / "shared" / "seed" / "train_guide.zh.md"


@pytest.mark.skipif(not GUIDE.is_file(), reason="the guide is not next to the repository")
def test_the_guides_parse_log_reads_training_log(tmp_path):
    blocks = re.findall(r"```python\n(.*?)```", GUIDE.read_text(encoding="utf-8"), re.S)
    code = next(b for b in blocks if "def parse_log" in b)
    func = code[code.index("def parse_log") :].split("\n\n# ")[0]  # the function only, not its usage below
    namespace = {"re": re}
    exec(func, namespace)
    evals = [(0, 4.1741, 4.1702), (250, 2.01234, 2.1), (500, 1.5, 1.68349)]
    log = tmp_path / "training.log"
    log.write_text(
        "".join(
            [
                "gptlab 0.1: 10.65M parameters\n",
                *(EVAL_LINE.format(step=s, train=t, val=v) + "\n" for s, t, v in evals),
                "iter 500: loss 1.4012, time 81.20ms\n",
            ]
        )
    )
    steps, train, val = namespace["parse_log"](str(log))
    assert steps == [0, 250, 500] and train == [4.1741, 2.0123, 1.5] and val == [4.1702, 2.1, 1.6835]
    assert (steps, train, val) == tuple(map(list, report.parse_log(log)))


def test_the_table_gives_perplexity_and_bits_beside_the_loss(tmp_path):
    flat = lambda s: 1.5  # noqa: E731
    bpb = {"best_val_ppl": 5.0, "final_val_ppl": 5.0, "best_val_bpb": 0.75, "final_val_bpb": 0.75}
    write_run(tmp_path / "bpe", "0_dropout=0", flat, settings={"dropout": 0}, metrics=bpb)
    write_run(tmp_path / "bpe", "1_dropout=0.2", flat, settings={"dropout": 0.2}, metrics=bpb)
    text = report.report(tmp_path / "bpe")
    table = section(text, "## Runs")
    assert "| best val | best val ppl | best val bpb | best at step |" in table
    assert "| 1.6000 | 5.00 | 0.7500 | 0 |" in table  # val = train + gap 0.1
    assert "- final val perplexity 5.00, 0.7500 bpb; best val perplexity 5.00, 0.7500 bpb" in text
    # runs from before the figures were recorded: perplexity from the loss, bits only for char-level
    old = write_run(tmp_path / "old", "0_dropout=0", flat, settings={"dropout": 0})
    cfg = json.loads((old / "config.yaml").read_text())
    (old / "config.yaml").write_text(json.dumps({**cfg, "data": {"tokenizer": "char"}}))
    write_run(tmp_path / "old", "1_dropout=0.2", flat, settings={"dropout": 0.2})  # BPE, say: no bytes per token
    table = section(report.report(tmp_path / "old"), "## Runs")
    ppl = f"{math.exp(1.6):.2f}"
    assert f"| 1.6000 | {ppl} | {1.6 / math.log(2):.4f} | " in table and "| best val bpc |" in table
    assert f"| 1.6000 | {ppl} | - | " in table
