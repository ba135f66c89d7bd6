"""logger=tensorboard | csv | wandb | mlflow and lists of them: what each one holds after a real
tiny run, read back from its own files (TensorBoard's events, metrics.csv, W&B's offline run
file, MLflow's SQLite store), resumes that continue the same W&B and MLflow runs, and the
config mistakes refused before any work."""

import csv
import importlib.util
import logging

import pytest
import yaml

from gptlab.config import validate
from gptlab.errors import ConfigError
from gptlab.report import gradviz
from gptlab.training.checkpoint import load_checkpoint
from gptlab.training.loggers import RUNS_KEY
from gptlab.training.run import train

SHORT = ["eval_interval=5", "monitor.layer_interval=5"]


def csv_column(run_dir, key) -> list[tuple[int, float]]:
    """(step, value) of every row of <run>/csv/metrics.csv that has key, in file order."""
    with open(run_dir / "csv" / "metrics.csv", newline="") as f:
        return [(int(r["step"]), float(r[key])) for r in csv.DictReader(f) if r.get(key)]


def evals(metrics) -> dict[int, float]:
    return {e["step"]: e["val_loss"] for e in metrics["evals"]}


def test_tensorboard_and_csv_together_and_a_resume_keeps_the_rows(compose, tmp_path, tb_events, caplog):
    run = tmp_path / "run"
    with caplog.at_level(logging.INFO, logger="gptlab"):
        first = train(compose("logger=[tensorboard,csv]", *SHORT, "max_iters=10"), run)
    # the one line that says what a logger cannot take (csv: no histograms; eval samples are off)
    skipped = [r.getMessage() for r in caplog.records if r.getMessage().startswith("loggers:")]
    assert skipped == ["loggers: csv takes no histograms; skipped there (TensorBoard and W&B take both)"]
    assert dict(csv_column(run, "val/loss")) == pytest.approx(evals(first))
    assert tb_events(run).scalars("val/loss") == pytest.approx(evals(first))
    assert sorted(dict(csv_column(run, "grad_layer/h0.attn"))) == [5, 10]
    hparams = yaml.safe_load((run / "csv" / "hparams.yaml").read_text())  # the whole config
    assert (hparams["learning_rate"], hparams["n_layer"], hparams["data"]["name"]) == (1e-3, 2, "shakespeare_char")
    # gradviz reads the same per-layer norms from either file
    flat = lambda series: {(k, s): v for k, steps in series.items() for s, v in steps.items()}  # noqa: E731
    assert flat(gradviz._from_csv(run / "csv" / "metrics.csv")) == pytest.approx(flat(gradviz._from_events(run)))

    # a killed run's row after its checkpoint (step 10), then a resume to step 20
    with open(run / "csv" / "metrics.csv", "a") as f:
        f.write(",".join("99" if k == "val/loss" else "15" if k == "step" else "" for k in _header(run)) + "\n")
    second = train(compose("logger=[tensorboard,csv]", *SHORT, "max_iters=20", "init_from=resume"), run)
    rows = csv_column(run, "val/loss")
    assert [s for s, _ in rows] == [0, 5, 10, 15, 20]  # each step once: the old rows kept, the killed stretch gone
    assert dict(rows) == pytest.approx(evals(second))
    tokens = 8 * 32  # batch x block of the tiny run
    assert [s for s, _ in csv_column(run, "by_tokens/val_loss")] == [s * tokens for s in (0, 5, 10, 15, 20)]
    hp = csv_column(run, "hp/best_val_loss")  # each run's result, at its last step
    assert [s for s, _ in hp] == [10, 20]
    assert [v for _, v in hp] == pytest.approx([first["best_val_loss"], second["best_val_loss"]])


def _header(run_dir) -> list[str]:
    with open(run_dir / "csv" / "metrics.csv", newline="") as f:
        return next(csv.reader(f))


def test_no_logger_at_all(compose, tmp_path):
    run = tmp_path / "run"
    metrics = train(compose("logger=[]", "max_iters=5", "eval_interval=5"), run)
    assert metrics["status"] == "ok" and [e["step"] for e in metrics["evals"]] == [0, 5]
    assert not list(run.glob("events.out.tfevents.*")) and not (run / "csv").exists()


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            ["logger=csv", "+logger.csv.flush_every=5"],
            "logger.csv.flush_every: CSVLogger takes no argument 'flush_every'",
        ),
        (["logger=tensorboard", "+logger.tensorboard.purge_stpe=1"], "Did you mean 'purge_step'"),
        (["logger=wandb", "+logger.wandb.projetc=x"], "Did you mean 'project'"),
        (["logger=csv", "logger.csv._target_=lightning.pytorch.loggers.NoSuchLogger"], "cannot import"),
        (["logger=csv", "logger.csv._target_=gptlab.model.GPT"], "is not a Lightning logger"),
        (["logger=csv", "+logger.csv._partial_=true"], "_partial_ is not supported"),
        (["wandb_log=maybe"], "wandb_log must be true or false"),
    ],
)
def test_logger_mistakes_are_refused_before_any_work(compose, overrides, message):
    with pytest.raises(ConfigError, match=message):
        validate(compose(*overrides))


@pytest.mark.parametrize(
    "overrides, module, extra",
    [
        (["logger=wandb"], "wandb", "wandb"),
        (["wandb_log=true"], "wandb", "wandb"),
        (["logger=mlflow"], "sqlalchemy", "mlflow"),
    ],
)
def test_a_missing_package_names_the_extra(compose, monkeypatch, overrides, module, extra):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == module else find_spec(name, *a))
    with pytest.raises(ConfigError, match=rf"needs the {module} package: pip install 'gptlab\[{extra}\]'"):
        validate(compose(*overrides))


def test_wandb_offline_run_and_its_resume_are_one_run(compose, tmp_path, monkeypatch, wandb_runs):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb_home"))  # W&B's own settings and cache
    monkeypatch.setenv("WANDB_SILENT", "true")
    run = tmp_path / "run"
    samples = ["eval_sample_tokens=20", "eval_sample_budget=1"]
    # nanoGPT's switches, with no other logger
    nano = ["logger=[]", "wandb_log=true", "wandb_project=gptlab-test", "wandb_run_name=mini-gpt"]
    first = train(compose(*nano, *SHORT, *samples, "max_iters=10"), run)
    (w,) = wandb_runs(run)
    assert (w.project, w.name) == ("gptlab-test", "mini-gpt")
    assert w.scalars("val/loss") == pytest.approx(evals(first))
    assert w.config()["learning_rate"] == 1e-3 and w.config()["n_layer"] == 2  # the whole config, as nanoGPT
    assert [h["tokens_seen"] for h in w.history() if "by_tokens/val_loss" in h] == [0, 5 * 256, 10 * 256]
    hist = w.history()
    assert any(h.get("grad_hist/h0.attn/_type") == "histogram" for h in hist)
    assert [int(h["trainer/global_step"]) for h in hist if h.get("samples/eval/_type") == "table-file"] == [5, 10]
    assert load_checkpoint(run / "last.ckpt")[RUNS_KEY] == {"wandb": w.run_id}

    second = train(
        compose("logger=wandb", "wandb_project=gptlab-test", *SHORT, "max_iters=20", "init_from=resume"), run
    )
    old, new = wandb_runs(run)
    assert new.run_id == old.run_id == w.run_id  # the resume wrote into the same W&B run
    assert new.scalars("val/loss") == pytest.approx({s: v for s, v in evals(second).items() if s > 10})
    assert new.scalars("hp/best_val_loss") == {20: pytest.approx(second["best_val_loss"])}

    # the next run in this process (a sweep's next job) is a run of its own
    train(compose("logger=wandb", "max_iters=5", "eval_interval=5"), tmp_path / "next")
    (other,) = wandb_runs(tmp_path / "next")
    assert other.run_id != w.run_id and other.name == "next" and other.project == "gptlab"


def test_mlflow_run_and_its_resume_are_one_run(compose, tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    pytest.importorskip("sqlalchemy")
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    run = tmp_path / "run"
    first = train(
        compose("logger=mlflow", *SHORT, "eval_sample_tokens=20", "eval_sample_budget=1", "max_iters=10"), run
    )
    client = MlflowClient(f"sqlite:///{run / 'mlflow.db'}")
    (found,) = client.search_runs([client.get_experiment_by_name("gptlab").experiment_id])
    run_id = found.info.run_id
    assert found.info.run_name == "run" and found.data.params["learning_rate"] == "0.001"
    history = lambda key: {m.step: m.value for m in client.get_metric_history(run_id, key)}  # noqa: E731
    assert history("val/loss") == pytest.approx(evals(first))
    assert [a.path for a in client.list_artifacts(run_id, "samples/eval")] == [
        "samples/eval/step_0000005.txt",
        "samples/eval/step_0000010.txt",
    ]
    text = (run / "mlartifacts" / run_id / "artifacts" / "samples" / "eval" / "step_0000010.txt").read_text()
    assert text.startswith(f"step 10, val loss {evals(first)[10]:.4f}:\n\n")
    assert load_checkpoint(run / "last.ckpt")[RUNS_KEY] == {"mlflow": run_id}

    second = train(compose("logger=mlflow", *SHORT, "max_iters=20", "init_from=resume"), run)
    assert len(client.search_runs([found.info.experiment_id])) == 1  # the resume continued the same run
    assert history("val/loss") == pytest.approx(evals(second))
    assert history("hp/best_val_loss") == pytest.approx({10: first["best_val_loss"], 20: second["best_val_loss"]})
