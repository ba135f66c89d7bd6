"""Early stopping: Lightning's EarlyStopping on val/loss, best.ckpt at the best step, and the reason
for stopping in metrics.json and on the console."""

import json
import logging
import random

import pytest

from gptlab.config import validate
from gptlab.errors import ConfigError
from gptlab.training.checkpoint import load_model
from gptlab.training.run import train


def test_stops_when_val_loss_stops_improving(compose, tmp_path, caplog):
    # words drawn at random from a small list: once the model spells the words, val loss has
    # nothing left to learn (the next word is a coin toss) and flattens out
    rng = random.Random(0)
    words = "the quick brown fox jumps over lazy dog and cat sat on a mat while birds sing in green trees".split()
    text = tmp_path / "words.txt"
    text.write_text(" ".join(rng.choice(words) for _ in range(500)))
    cfg = compose(
        "data=text",
        f"data.path={text}",
        f"data.root={tmp_path / 'data'}",
        "block_size=16",
        "max_iters=1000",
        "eval_interval=10",
        "learning_rate=1e-2",
        "early_stopping.patience=2",
    )
    with caplog.at_level(logging.INFO, logger="gptlab"):
        metrics = train(cfg, tmp_path / "run")

    assert metrics["iters"] < 1000
    assert metrics["stop_reason"] == "early_stopping"
    assert "after 2 evaluations without a val loss improvement" in metrics["stop_message"]
    evals = metrics["evals"]
    assert evals[-1]["step"] == metrics["iters"]
    # the last two evaluations did not beat the best before them
    best_before = min(e["val_loss"] for e in evals[1:-2])
    assert all(e["val_loss"] >= best_before for e in evals[-2:])
    # best.ckpt holds the weights of the best evaluation, which metrics.json names
    _, info = load_model(tmp_path / "run" / "best.ckpt")
    assert info["step"] == metrics["best_step"] and info["eval"]["val"] == pytest.approx(metrics["best_val_loss"])
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["stop_reason"] == "early_stopping"
    console = caplog.text
    assert f"training stopped at step {metrics['iters']}: early stopping after 2 evaluations" in console
    assert f"best val loss {metrics['best_val_loss']:.4f} at step {metrics['best_step']}" in console


def test_patience_counts_evaluations_during_training(compose, tmp_path):
    # no fall in val loss is as large as 10, so every evaluation after step 0 counts against patience
    metrics = train(
        compose("max_iters=100", "eval_interval=5", "early_stopping.patience=3", "early_stopping.min_delta=10"),
        tmp_path,
    )
    # the first evaluation in fit sets the reference; three more without improvement stop the run
    assert metrics["iters"] == 20 and [e["step"] for e in metrics["evals"]] == [0, 5, 10, 15, 20]
    assert "at least 10" in metrics["stop_message"]


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["early_stopping.patience=-1"], "early_stopping.patience must be a whole number"),
        (["early_stopping.min_delta=-0.1"], "early_stopping.min_delta must be >= 0"),
    ],
)
def test_bad_early_stopping_settings(compose, overrides, message):
    with pytest.raises(ConfigError, match=message):
        validate(compose(*overrides))
