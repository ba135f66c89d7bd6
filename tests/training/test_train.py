"""End-to-end training on a tiny model, in process (fast) through train.train()."""

import copy
import json
import math
import re
import shutil

import lightning as L
import pytest
import tiktoken
import torch

from gptlab.cli.sample import generate
from gptlab.config import model_config
from gptlab.data.datamodule import GPTDataModule
from gptlab.errors import CheckpointError, ConfigError, NonFiniteLossError
from gptlab.model import GPT
from gptlab.training.checkpoint import load_checkpoint, load_model
from gptlab.training.module import GPTModule
from gptlab.training.run import train
from gptlab.training.schedule import get_lr, optim_config


def parse_log(log_file):
    """The guide's plot_loss.py parser, unchanged."""
    steps, train_losses, val_losses = [], [], []
    with open(log_file) as f:
        for line in f:
            match = re.search(r"step (\d+): train loss ([\d.]+), val loss ([\d.]+)", line)
            if match:
                steps.append(int(match.group(1)))
                train_losses.append(float(match.group(2)))
                val_losses.append(float(match.group(3)))
    return steps, train_losses, val_losses


class KeepTrainedModel(L.Callback):
    """Keeps a copy of the GPT as training left it, to compare the checkpoint with."""

    model: GPT | None = None

    def on_train_end(self, trainer, pl_module):
        self.model = copy.deepcopy(pl_module.model).eval()


@pytest.fixture(scope="module")
def trained(tmp_path_factory, compose):
    """One short run shared by several tests: 120 steps, evaluation every 40; and the trained GPT."""
    run = tmp_path_factory.mktemp("run")
    cfg = compose("max_iters=120", "eval_interval=40", "learning_rate=1e-2", "batch_size=16")
    keep = KeepTrainedModel()
    metrics = train(cfg, run, callbacks=[keep])
    return run, metrics, keep.model


def test_short_run_learns(trained):
    run, metrics, _ = trained
    assert metrics["iters"] == 120
    # 4.17 (ln 65) at random; 3.31 is the entropy of single-character frequencies, so a loss
    # below 3.2 means the model predicts from context, not only from how common each character is
    assert metrics["best_val_loss"] < 3.2
    assert metrics["evals"][0]["step"] == 0 and abs(metrics["evals"][0]["val_loss"] - math.log(65)) < 0.3
    assert json.loads((run / "metrics.json").read_text())["iters"] == 120


def test_training_log_reads_with_the_guides_parser(trained):
    run, metrics, _ = trained
    steps, train_l, val_l = parse_log(run / "training.log")
    assert steps == [0, 40, 80, 120]
    assert val_l[-1] < val_l[0] and train_l[-1] < train_l[0]
    assert val_l[-1] == pytest.approx(metrics["final_val_loss"], abs=1e-4)


def test_checkpoint_reloads_to_identical_logits(trained):
    run, _, trained_model = trained
    model, info = load_model(run / "last.ckpt")
    assert info["step"] == 120 and info["tokenizer"]["tokenizer"] == "char"
    ckpt = load_checkpoint(run / "last.ckpt")
    assert {"optimizer_states", "state_dict", "loops"} <= set(ckpt)
    x = torch.randint(0, 65, (2, 32), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(model(x, x)[0], trained_model(x, x)[0])  # the weights training ended with
    best, binfo = load_model(run)  # a run folder means its best.ckpt
    assert binfo["eval"]["val"] == pytest.approx(
        min(e["val_loss"] for e in json.loads((run / "metrics.json").read_text())["evals"][1:]), abs=1e-5
    )


def test_tensorboard_has_the_curves(trained, tb_events):
    run, _, _ = trained
    events = tb_events(run)
    assert {"train/loss", "val/loss", "train/lr", "perf/tokens_per_sec", "train/batch_loss"} <= events.tags()
    assert list(events.scalars("val/loss")) == [0, 40, 80, 120]
    lrs = list(events.scalars("train/lr").values())
    assert lrs[0] > lrs[-1]  # cosine decay visible


def test_lr_schedule_follows_optimizer_steps_under_accumulation(compose, tmp_path, tb_events):
    """Warmup then cosine, stepped once per optimizer step (3 micro-batches each, not per
    micro-batch): at step s TensorBoard shows get_lr(s), as nanoGPT's `iter s` line does."""
    cfg = compose(
        "max_iters=8",
        "eval_interval=4",
        "gradient_accumulation_steps=3",
        "log_interval=1",
        "warmup_iters=3",
        "lr_decay_iters=7",
        "learning_rate=2e-3",
        "min_lr=1e-4",
    )
    metrics = train(cfg, tmp_path)
    assert metrics["iters"] == 8  # optimizer steps, not micro-batches
    steps, _, _ = parse_log(tmp_path / "training.log")
    assert steps == [0, 4, 8]
    logged = tb_events(tmp_path).scalars("train/lr")
    assert list(logged) == list(range(1, 9))
    want = [get_lr(s, learning_rate=2e-3, warmup_iters=3, lr_decay_iters=7, min_lr=1e-4) for s in logged]
    assert list(logged.values()) == pytest.approx(want, rel=1e-6)
    assert want[:3] == pytest.approx([1e-3, 1.5e-3, 2e-3]) and want[-1] == pytest.approx(1e-4)  # ramp, peak, floor


def test_existing_run_is_not_overwritten(trained, compose):
    run, _, _ = trained
    before = (run / "best.ckpt").read_bytes()
    with pytest.raises(ConfigError, match="init_from=resume"):
        train(compose("max_iters=2", "eval_interval=1"), run)
    assert (run / "best.ckpt").read_bytes() == before


def test_resume_continues_the_step_count(trained, compose, tmp_path):
    run, _, _ = trained
    shutil.copytree(run, tmp_path / "r", dirs_exist_ok=True)
    cfg = compose("max_iters=140", "eval_interval=40", "learning_rate=1e-2", "batch_size=16", "init_from=resume")
    metrics = train(cfg, tmp_path / "r")
    assert metrics["iters"] == 140
    steps, _, _ = parse_log(tmp_path / "r" / "training.log")
    assert steps == [0, 40, 80, 120, 140]  # appended, not restarted


def test_resume_with_another_shape_is_refused(trained, compose, tmp_path):
    run, _, _ = trained
    with pytest.raises(CheckpointError, match="n_embd: checkpoint 32 vs config 64"):
        train(compose("n_embd=64", "max_iters=140", "init_from=resume", f"ckpt_path={run / 'last.ckpt'}"), tmp_path)


def test_divergence_stops_with_advice_and_keeps_good_checkpoint(compose, tmp_path, monkeypatch):
    # a first run writes good checkpoints; the resumed run's loss turns to inf at its 7th step (step 17)
    train(compose("max_iters=10", "eval_interval=5", "always_save_checkpoint=true"), tmp_path)
    real_forward, calls = GPT.forward, {"n": 0}

    def planted(self, idx, targets=None, **kw):
        logits, loss = real_forward(self, idx, targets, **kw)
        if self.training:
            calls["n"] += 1
            if calls["n"] >= 7:
                loss = loss * float("inf")
        return logits, loss

    monkeypatch.setattr(GPT, "forward", planted)
    cfg = compose(
        "max_iters=200", "eval_interval=5", "log_interval=50", "init_from=resume", "always_save_checkpoint=true"
    )
    with pytest.raises(
        NonFiniteLossError, match=r"loss became NaN/inf in optimizer step 17;.*learning_rate=0.0001.*grad_clip=1.0"
    ):
        train(cfg, tmp_path)
    model, info = load_model(tmp_path / "best.ckpt")
    assert info["step"] <= 15  # the best of the evaluations before the bad step
    _, last = load_model(tmp_path / "last.ckpt")
    assert last["step"] == 15  # the evaluation before the bad step; nothing after it was saved
    assert math.isfinite(last["eval"]["val"])
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_gradients_are_clipped_to_grad_clip(compose, tmp_path):
    """The module computes the gradient norm once and clips with it; the clipped norm must be
    grad_clip whenever the raw norm was larger."""
    cfg = compose()
    dm = GPTDataModule(f"{cfg.data.root}/shakespeare_char", 32, 8)
    dm.setup()
    module = GPTModule(model_config(cfg, 65), optim_config(cfg))
    module.keep_grad_norms = True  # as GradientMonitor asks
    x, y = dm._train.sample()
    _, loss = module(x, y)
    (loss * 100).backward()  # large gradients
    raw = torch.nn.utils.get_total_norm([p.grad for p in module.parameters()])
    module.configure_gradient_clipping(None, gradient_clip_val=0.5)
    after = torch.nn.utils.get_total_norm([p.grad for p in module.parameters()])
    assert raw > 0.5 and after == pytest.approx(0.5, rel=1e-4)
    stats = module.pop_grad_stats()
    assert stats["last"] == pytest.approx(raw.item(), rel=1e-5) and stats["clipped_frac"] == 1.0


def test_bpe_run_end_to_end(compose, tmp_path):
    """data=shakespeare: GPT-2's BPE prepared from Tiny Shakespeare, a tiny model trained on it,
    its checkpoint sampled and decoded back to text."""
    cfg = compose(
        "data=shakespeare", f"data.root={tmp_path / 'data'}", "max_iters=4", "eval_interval=2", "sample_tokens=16"
    )
    metrics = train(cfg, tmp_path / "run")
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved["vocab_size"] == metrics["vocab_size"] == 50257 and saved["iters"] == 4
    assert abs(saved["evals"][0]["val_loss"] - math.log(50257)) < 0.3  # a fresh model guesses among 50,257 tokens
    assert saved["sample"] and saved["sample"] == metrics["sample"]
    model, info = load_model(tmp_path / "run" / "last.ckpt")
    assert info["tokenizer"]["tokenizer"] == "gpt2" and model.lm_head.weight.shape[0] == 50257
    (text,) = generate(str(tmp_path / "run"), "ROMEO:", 1, 8, 0.8, 200, 1, device="cpu")
    assert text.startswith("ROMEO:") and len(tiktoken.get_encoding("gpt2").encode(text)) > 2
