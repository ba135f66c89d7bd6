"""Checkpoints written before the redesign still work: tests/fixtures/old_main_run holds a
10-step run made by commit 14172cb (its README says how); it loads, samples and resumes."""

import json
import math
import shutil
from pathlib import Path

import pytest
import torch

from gptlab.cli.sample import generate
from gptlab.rundir import LAST, parse_log
from gptlab.training.checkpoint import load_model
from gptlab.training.run import train

OLD_RUN = Path(__file__).resolve().parents[1] / "fixtures" / "old_main_run"
# the settings that run was made with (its config.yaml), less where its data and run folder were
OLD_SETTINGS = [
    "n_layer=2",
    "n_head=2",
    "n_embd=32",
    "block_size=32",
    "batch_size=4",
    "eval_interval=5",
    "eval_iters=2",
    "warmup_iters=2",
    "sample_tokens=0",
    "eval_sample_tokens=0",
    "profile=none",
    "device=cpu",
]


@pytest.fixture
def old_run(tmp_path) -> Path:
    run = tmp_path / "old_run"
    run.mkdir()
    shutil.copy(OLD_RUN / "last.ckpt.fixture", run / LAST)
    return run


def test_old_checkpoint_loads_and_samples(old_run):
    old_metrics = json.loads((OLD_RUN / "metrics.json").read_text())
    model, info = load_model(old_run / LAST)
    assert info["step"] == old_metrics["iters"] == 10 and info["tokenizer"]["tokenizer"] == "char"
    assert info["eval"]["val"] == pytest.approx(old_metrics["final_val_loss"], abs=1e-6)  # the weights of its step 10
    assert model.num_params() == old_metrics["params"]
    with torch.no_grad():
        logits, loss = model(torch.zeros((1, 8), dtype=torch.long), torch.zeros((1, 8), dtype=torch.long))
    assert logits.shape == (1, 8, 65) and math.isfinite(loss.item())
    (text,) = generate(str(old_run / LAST), "ROMEO:", 1, 20, 0.8, 20, 1, device="cpu")
    assert text.startswith("ROMEO:") and len(text) == len("ROMEO:") + 20


def test_old_checkpoint_resumes_to_the_end(old_run, compose):
    old_metrics = json.loads((OLD_RUN / "metrics.json").read_text())
    metrics = train(compose(*OLD_SETTINGS, "max_iters=14", "init_from=resume", tiny=False), old_run)
    assert metrics["status"] == "ok" and metrics["iters"] == 14
    # continued from step 10, not from 0: the old run's evaluations, read from its checkpoint, then step 14's
    assert metrics["evals"][:3] == old_metrics["evals"] and metrics["evals"][3]["step"] == 14
    steps, _, val = parse_log(old_run / "training.log")
    assert steps == [14] and math.isfinite(val[0])  # the folder had no training.log: the new lines only
    _, info = load_model(old_run / LAST)
    assert info["step"] == 14


def test_old_checkpoints_keep_their_best_score(tmp_path):
    """The best score lives under the key the old code wrote, so a resume can never replace
    best.ckpt with a worse model."""
    from gptlab.training.checkpoint import BestCheckpoint

    ckpt = torch.load(OLD_RUN / "last.ckpt.fixture", weights_only=True, map_location="cpu")
    key = BestCheckpoint(tmp_path).state_key
    assert key in ckpt["callbacks"], sorted(ckpt["callbacks"])
    assert ckpt["callbacks"][key]["best_model_score"] is not None
