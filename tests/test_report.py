"""python -m gptlab.report: a sweep's runs as a table, a verdict for the experiment's question,
and a comparison plot -- read from the files the runs wrote."""

import json

import pytest

from conftest import run_cli
from gptlab import report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
QUESTION = "did token masking narrow the train-val gap, and at what cost in val loss?"


TINY_EXP6 = ["max_iters=10", "eval_interval=5", "warmup_iters=2", "eval_iters=2", "n_layer=1", "n_head=2",
             "n_embd=32", "block_size=32", "device=cpu"]


@pytest.fixture(scope="module")
def exp6_runs(tmp_path_factory, data_root):
    """The exp6 experiment's three runs, shrunk and trained in process into folders named as its
    sweep names them (the report falls back on those names when .hydra/ is absent)."""
    from gptlab.cli import compose, explicit_keys
    from gptlab.train import train

    out = tmp_path_factory.mktemp("exp6") / "sweep"
    for job, p in enumerate(["0", "0.1", "0.2"]):
        overrides = ["experiment=exp6_augmentation", f"augment.mask_prob={p}", f"data.root={data_root}", *TINY_EXP6]
        train(compose("train", overrides), out / f"{job}_augment.mask_prob={p}", explicit_keys(overrides))
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
        assert cells[8] == "max_iters"
    verdict = next(ln for ln in text.splitlines() if ln.startswith("**Verdict:**"))
    assert QUESTION in verdict and "Cost in best_val_loss" in verdict  # the question from the experiment's config
    assert (sweep / "comparison.png").read_bytes()[:8] == PNG_MAGIC
    return text


def test_report_on_the_exp6_runs(exp6_runs, capsys):
    report.main([str(exp6_runs)])
    printed = capsys.readouterr().out
    assert printed.strip() == check_report(exp6_runs).strip()


@pytest.mark.slow
def test_exp6_sweep_and_report_from_the_command_line(tmp_path, data_root):
    """The experiment as a user runs it: hydra.sweeper.params makes three jobs; then the report."""
    out = tmp_path / "sweep"
    p = run_cli("gptlab.train", "experiment=exp6_augmentation", "-m", f"out_dir={out}", f"data.root={data_root}", *TINY_EXP6)
    assert p.returncode == 0, p.stderr[-3000:]
    assert sorted(d.name for d in out.iterdir() if d.is_dir()) == ["0_augment.mask_prob=0", "1_augment.mask_prob=0.1", "2_augment.mask_prob=0.2"]
    p = run_cli("gptlab.report", str(out))
    assert p.returncode == 0, p.stderr[-3000:]
    check_report(out)


def fake_run(folder, job, p, train_loss, val_loss, best, question=True):
    d = folder / f"{job}_augment.mask_prob={p}"
    (d / ".hydra").mkdir(parents=True)
    (d / ".hydra" / "overrides.yaml").write_text(f"- augment.mask_prob={p}\n- max_iters=100\n")
    (d / "metrics.json").write_text(json.dumps({"final_train_loss": train_loss, "final_val_loss": val_loss,
                                                "best_val_loss": best, "best_step": 100, "iters": 100}))
    (d / "training.log").write_text(f"step 0: train loss 4.1000, val loss 4.1000\nstep 100: train loss {train_loss:.4f}, val loss {val_loss:.4f}\n")
    node = (f"report:\n  question: {QUESTION}\n  metric: gap\n  goal: lower\n  baseline: augment.mask_prob=0\n"
            "  cost: best_val_loss\n") if question else "report:\n  question: null\n"
    (d / "config.yaml").write_text(node)


def test_verdict_reads_the_question_from_the_runs_config(tmp_path):
    fake_run(tmp_path, 0, "0.1", 1.60, 1.80, 1.75)
    fake_run(tmp_path, 1, "0", 1.40, 1.90, 1.70)  # the baseline need not come first
    fake_run(tmp_path, 2, "0.2", 1.70, 1.85, 1.80)
    runs = report.load_runs(tmp_path)
    line = report.verdict(runs, report.swept_keys(runs))
    assert line.startswith(QUESTION + " -> yes: gap 0.5000 at augment.mask_prob=0;")
    assert "0.2000 at augment.mask_prob=0.1 (-0.3000)" in line
    assert "Cost in best_val_loss (vs 1.7000): +0.0500 at augment.mask_prob=0.1; +0.1000 at augment.mask_prob=0.2" in line
    fake_run(tmp_path / "plain", 0, "0", 1.4, 1.9, 1.7, question=False)
    fake_run(tmp_path / "plain", 1, "0.1", 1.6, 1.8, 1.65, question=False)
    runs = report.load_runs(tmp_path / "plain")
    assert report.verdict(runs, ["augment.mask_prob"]) == "lowest best_val_loss: augment.mask_prob=0.1 (1.6500)"
    (tmp_path / "plain" / "2_augment.mask_prob=0.2" / ".hydra").mkdir(parents=True)  # a run that failed
    assert "Not finished, left out: 2_augment.mask_prob=0.2." in report.report(tmp_path / "plain")


def test_report_of_a_folder_without_runs(tmp_path, capsys):
    for folder, message in [(tmp_path, "no finished runs"), (tmp_path / "nope", "is not a folder")]:
        with pytest.raises(SystemExit) as e:
            report.main([str(folder)])
        assert e.value.code == 2 and f"{message}" in capsys.readouterr().err


def test_multirun_flag_may_follow_the_overrides():
    # `python -m gptlab.train experiment=exp6_augmentation -m`: Hydra's parser wants -m first
    from gptlab.cli import translate_argv

    assert translate_argv(["experiment=exp6_augmentation", "-m", "--max_iters=5"]) == ["-m", "experiment=exp6_augmentation", "max_iters=5"]
