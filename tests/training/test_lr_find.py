"""The learning-rate range test: Lightning's Tuner on GPTModule, the suggestion, the PNG,
learning_rate=auto, and the command line."""

import json
import math

import pytest
import torch
from omegaconf import OmegaConf

from gptlab.cli import common as cli
from gptlab.config import resolve_device, validate
from gptlab.data.datamodule import GPTDataModule
from gptlab.errors import ConfigError
from gptlab.model import GPTConfig
from gptlab.training import lr_find
from gptlab.training.module import GPTModule
from gptlab.training.run import train
from gptlab.training.schedule import OptimConfig

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def assert_real_png(path):
    import matplotlib.image

    assert path.read_bytes()[:8] == PNG_MAGIC
    h, w, _ = matplotlib.image.imread(path).shape  # decodes
    assert h > 200 and w > 300


@pytest.fixture(scope="module")
def found(tmp_path_factory, tiny, run_cli):
    """python -m gptlab.lr_find on the tiny model, default search settings."""
    out = tmp_path_factory.mktemp("lr_find")
    p = run_cli("gptlab.lr_find", *tiny, f"out_dir={out}")
    assert p.returncode == 0, p.stderr[-3000:]
    return out, json.loads((out / "lr_find.json").read_text()), p.stdout


def test_suggestion_lies_inside_the_range_where_the_loss_falls(found):
    out, r, stdout = found
    s = r["settings"]
    assert (s["min_lr"], s["max_lr"], s["num_steps"]) == (1e-6, 1.0, 100)
    assert len(r["lrs"]) == len(r["losses"]) == len(r["smoothed"]) <= 100
    assert r["lrs"][0] == pytest.approx(1e-6) and all(a < b for a, b in zip(r["lrs"], r["lrs"][1:]))  # exponential ramp
    # not a bound, not next to one: at least a decade inside on both sides
    assert 1e-5 < r["suggestion"] < 1e-1
    assert r["rule"].startswith("steepest")
    i = r["index"]
    assert r["lrs"][i] == r["suggestion"]
    # where it was read the smoothed loss is falling, and it falls further afterwards
    assert r["smoothed"][i - 3] > r["smoothed"][i] > min(r["smoothed"])
    assert r["losses"][0] == pytest.approx(4.17, abs=0.1)  # ln(65): the fresh model guesses
    assert_real_png(out / "lr_find.png")
    # the command prints the suggestion and the rule, and leaves no training behind
    line = [ln for ln in stdout.splitlines() if ln.startswith("suggested learning_rate=")]
    assert len(line) == 1 and "steepest" in line[0]
    assert float(line[0].split("=")[1].split()[0]) == pytest.approx(r["suggestion"], rel=5e-3)
    assert not (out / "best.ckpt").exists() and not (out / "training.log").exists()


def test_minimum_rule_is_a_tenth_of_the_lowest_point():
    lrs = [10 ** (-6 + 6 * k / 99) for k in range(100)]
    smoothed = [4.0 - 2.0 * (k / 70) if k <= 70 else 2.0 + 0.2 * (k - 70) for k in range(100)]
    lr, i, rule = lr_find.suggest(lrs, smoothed, "minimum")
    assert i == 70 and lr == pytest.approx(lrs[70] / 10) and "minimum / 10" in rule
    sigmoid = [4.0 - 2.0 / (1 + math.exp(-(k - 50) / 5)) for k in range(100)]  # falls fastest at k = 50
    lr, i, rule = lr_find.suggest(lrs, sigmoid, "steepest")
    assert i == 50 and lr == lrs[50] and rule.startswith("steepest")
    with pytest.raises(ConfigError, match="too few"):
        lr_find.suggest(lrs[:5], smoothed[:5], "minimum")


def test_tuner_restores_weights_optimizer_and_sampler(compose, data_root, tmp_path):
    """Lightning's Tuner swaps our LambdaLR for its own schedule and trains; afterwards the module,
    the optimizer, the schedule and the batch sampler are as before, and no validation ran."""
    cfg = compose("gradient_accumulation_steps=2")
    dm = GPTDataModule(data_root / "shakespeare_char", 32, 8, seed=1)
    module = GPTModule(
        GPTConfig(vocab_size=65, block_size=32, n_layer=2, n_head=2, n_embd=32), OptimConfig(learning_rate=1e-3)
    )
    before = {k: v.clone() for k, v in module.state_dict().items()}
    trainer = lr_find.search_trainer(resolve_device(cfg), accumulate=2, grad_clip=1.0, root_dir=tmp_path)
    dm.setup("fit")  # the samplers exist, so their state can be compared
    sampler_before = json.dumps(dm.state_dict())
    result = lr_find.search(module, dm, trainer, lr_find.LRFindSettings(num_steps=20))

    assert len(result.lrs) == 20
    after = module.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert json.dumps(dm.state_dict()) == sampler_before
    opt = trainer.optimizers[0]
    assert not opt.state  # AdamW's moments from the search are gone
    assert isinstance(trainer.lr_scheduler_configs[0].scheduler, torch.optim.lr_scheduler.LambdaLR)
    assert not module.last_eval  # validation never ran during the search
    assert not list(tmp_path.glob(".lr_find_*.ckpt"))  # the Tuner's temporary checkpoint is removed
    # the per-step losses recovered from the Tuner's running average equal what training_step saw
    # (accumulation: the Tuner records each step's last micro-batch, divided by 2; here multiplied back)
    assert module._train_loss_count == 40
    assert min(result.losses) > 3.0 and result.losses[0] == pytest.approx(4.17, abs=0.1)


def test_recovered_losses_match_training_step(compose, data_root, tmp_path):
    dm = GPTDataModule(data_root / "shakespeare_char", 32, 8, seed=1)
    module = GPTModule(GPTConfig(vocab_size=65, block_size=32, n_layer=2, n_head=2, n_embd=32), OptimConfig())
    trainer = lr_find.search_trainer(resolve_device(compose()), accumulate=1, grad_clip=1.0, root_dir=tmp_path)
    result = lr_find.search(module, dm, trainer, lr_find.LRFindSettings(num_steps=20))
    mean_seen = float(module._train_loss_sum) / module._train_loss_count
    assert sum(result.losses) / len(result.losses) == pytest.approx(mean_seen, rel=1e-5)


def test_learning_rate_auto_trains_with_the_suggestion(compose, tmp_path):
    common = ["max_iters=20", "eval_interval=10"]
    metrics = train(compose("learning_rate=auto", "lr_find.num_steps=40", *common), tmp_path / "auto")
    chosen = json.loads((tmp_path / "auto" / "lr_find.json").read_text())["suggestion"]
    assert_real_png(tmp_path / "auto" / "lr_find.png")
    used = OmegaConf.load(tmp_path / "auto" / "config.yaml")
    assert used.learning_rate == pytest.approx(chosen, rel=5e-3) and used.min_lr == pytest.approx(
        used.learning_rate / 10
    )
    # the same run with that number given by hand: identical losses, so the search left no trace
    # (weights, sampler) and the run trained with what it chose
    by_hand = train(compose(f"learning_rate={used.learning_rate}", f"min_lr={used.min_lr}", *common), tmp_path / "hand")
    assert [e["val_loss"] for e in metrics["evals"]] == [e["val_loss"] for e in by_hand["evals"]]
    assert metrics["stop_reason"] == "max_iters"
    # resumed, it keeps the rate it chose instead of searching again
    (tmp_path / "auto" / "lr_find.json").unlink()
    resumed = train(
        compose("learning_rate=auto", "init_from=resume", "max_iters=30", "eval_interval=10"), tmp_path / "auto"
    )
    assert resumed["iters"] == 30 and not (tmp_path / "auto" / "lr_find.json").exists()
    assert OmegaConf.load(tmp_path / "auto" / "config.yaml").learning_rate == used.learning_rate


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["learning_rate=0"], "learning_rate must be > 0, or auto"),
        (["learning_rate=auto", "eval_only=true"], "eval_only trains nothing"),
        (["lr_find.min_lr=1", "lr_find.max_lr=0.1"], "0 < lr_find.min_lr < lr_find.max_lr"),
        (["lr_find.rule=valley"], "lr_find.rule must be one of steepest, minimum"),
        (["lr_find.num_steps=5"], "lr_find.num_steps must be an integer >= 20"),
    ],
)
def test_bad_lr_find_settings(compose, overrides, message):
    with pytest.raises(ConfigError, match=message):
        validate(compose(*overrides))


def test_auto_passes_validation(compose):
    validate(compose("learning_rate=auto", "min_lr=0.5"))  # min_lr is checked once the rate is known


def test_lr_find_keys_are_checked():
    with pytest.raises(ConfigError, match="Did you mean 'lr_find.min_lr'"):
        cli.check_override_keys(["lr_find.min_lrr=1"])
