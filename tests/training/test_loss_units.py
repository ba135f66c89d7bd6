"""Perplexity and bits per character (char data) or per byte (BPE) next to the loss: in
metrics.json and TensorBoard (val/ppl, val/bpc or val/bpb)."""

import json
import math

import pytest

from gptlab import analysis as an
from gptlab.data.dataset import load_meta
from gptlab.training.run import train


def test_the_conversions():
    assert an.perplexity(math.log(65)) == pytest.approx(65)
    assert an.bits(math.log(2)) == pytest.approx(1.0)  # ln 2 nats per character: one bit
    assert an.bits(math.log(16), bytes_per_token=4.0) == pytest.approx(1.0)  # 4 bits per token of 4 bytes
    assert an.perplexity(None) is None and an.bits(float("nan")) is None
    assert an.loss_units(math.log(4), None, "bpc") == {
        "final_val_ppl": pytest.approx(4),
        "best_val_ppl": None,
        "final_val_bpc": pytest.approx(2),
        "best_val_bpc": None,
    }


def test_char_run_reports_perplexity_and_bits_per_character(compose, tmp_path, tb_events):
    metrics = train(compose("max_iters=4", "eval_interval=2"), tmp_path / "run")
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved["final_val_ppl"] == pytest.approx(math.exp(saved["final_val_loss"]))
    assert saved["best_val_ppl"] == pytest.approx(math.exp(saved["best_val_loss"]))
    assert saved["final_val_bpc"] == pytest.approx(saved["final_val_loss"] / math.log(2))
    assert "final_val_bpb" not in saved and "val_bytes_per_token" not in saved
    assert metrics["best_val_bpc"] == saved["best_val_bpc"]
    ev = tb_events(tmp_path / "run")
    val = {e["step"]: e["val_loss"] for e in saved["evals"]}
    assert sorted(ev.scalars("val/ppl")) == sorted(val) == [0, 2, 4]
    for step, loss in val.items():
        assert ev.scalars("val/ppl")[step] == pytest.approx(math.exp(loss), rel=1e-5)
        assert ev.scalars("val/bpc")[step] == pytest.approx(loss / math.log(2), rel=1e-5)


def test_bpe_run_reports_bits_per_byte_of_the_val_text(compose, tmp_path, tb_events):
    cfg = compose("data=shakespeare", f"data.root={tmp_path / 'data'}", "max_iters=2", "eval_interval=2")
    saved = train(cfg, tmp_path / "run")
    meta = load_meta(tmp_path / "data" / "shakespeare_gpt2")
    per_token = meta["val_bytes"] / meta["val_tokens"]  # Tiny Shakespeare's val split: ~3.1 bytes per GPT-2 token
    assert 2.5 < per_token < 4 and saved["val_bytes_per_token"] == pytest.approx(per_token)
    assert saved["final_val_bpb"] == pytest.approx(saved["final_val_loss"] / math.log(2) / per_token)
    assert "final_val_bpc" not in saved
    bpb = tb_events(tmp_path / "run").scalars("val/bpb")
    assert bpb[2] == pytest.approx(saved["final_val_bpb"], rel=1e-5)
