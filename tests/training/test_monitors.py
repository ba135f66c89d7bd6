"""The guide's debugging checks: batch inspection, gradient monitoring and visualisation,
initial-loss check, plateau hint, precision and compile."""

import math

import lightning as L
import pytest
import torch
from torch.utils.tensorboard import SummaryWriter

from gptlab.cli import inspect as gl_inspect
from gptlab.config import resolve_device
from gptlab.data.datamodule import GPTDataModule
from gptlab.errors import ConfigError
from gptlab.model import GPTConfig
from gptlab.report import gradviz
from gptlab.training.callbacks.logs import EvalSamples
from gptlab.training.callbacks.monitors import InitialLossCheck, LayerGradients, PlateauHint, diagnose
from gptlab.training.checkpoint import load_model
from gptlab.training.loggers import add_histogram
from gptlab.training.module import GPTModule
from gptlab.training.run import train
from gptlab.training.schedule import OptimConfig


def test_inspect_shows_y_as_x_shifted(data_root, capsys):
    gl_inspect.main(
        [f"data.root={data_root}", "batch_size=4", "block_size=40", "rows=3", "show_tokens=40", "profile=none"]
    )
    out = capsys.readouterr().out
    assert (
        "X (4, 40) torch.int64, Y (4, 40) torch.int64" in out and "vocab 65" in out and "train 1,003,854 tokens" in out
    )
    xs = [eval(line.split(": ", 1)[1]) for line in out.splitlines() if line.startswith("  X text")]
    ys = [eval(line.split(": ", 1)[1]) for line in out.splitlines() if line.startswith("  Y text")]
    assert len(xs) == len(ys) == 3
    for x, y in zip(xs, ys):
        assert len(x) == len(y) == 40 and y[:-1] == x[1:]  # the decoded target text is the input moved one to the left
    assert "shifted left by one token in every row: yes" in out


def _layer_run(data_root, tamper, steps=3):
    """Train a tiny GPT for a few steps with LayerGradients every step; `tamper(model)` first."""
    torch.manual_seed(0)
    module = GPTModule(
        GPTConfig(vocab_size=65, block_size=32, n_layer=4, n_head=2, n_embd=32, bias=False), optim_config_default()
    )
    tamper(module.model)
    dm = GPTDataModule(data_root / "shakespeare_char", 32, 8)
    cb = LayerGradients(interval=1, histograms=False)
    trainer = L.Trainer(
        max_steps=steps,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[cb],
        limit_val_batches=0,
        num_sanity_val_steps=0,
    )
    trainer.fit(module, datamodule=dm)
    return cb.flagged


def optim_config_default():
    return OptimConfig(learning_rate=1e-3, warmup_iters=0, lr_decay_iters=10)


def test_vanishing_layer_is_flagged_by_name(data_root):
    def shrink(model):
        with torch.no_grad():
            for p in model.transformer.h[1].mlp.parameters():
                p.mul_(1e-4)  # a dead MLP: its weights pass almost no gradient to each other

    flagged = _layer_run(data_root, shrink)
    assert any(k.startswith("h1.mlp: vanishing") for k in flagged), flagged
    assert not any(k.startswith("h2") for k in flagged)


def test_exploding_layer_is_flagged_by_name(data_root):
    def blow_up(model):
        model.transformer.h[2].attn.c_attn.weight.register_hook(lambda g: g * 1e6)

    flagged = _layer_run(data_root, blow_up)
    exploding = [k for k in flagged if "exploding" in k]
    assert exploding and all(k.startswith("h2.attn: exploding") for k in exploding), flagged


def test_healthy_model_flags_nothing(data_root):
    assert _layer_run(data_root, lambda m: None) == {}


def test_diagnose_rules():
    assert diagnose({"a": 1.0, "b": 0.5, "c": 2.0}) == []
    assert diagnose({"a": 1.0, "b": 1.0, "c": 1e-5})[0].startswith("c: vanishing")
    assert diagnose({"a": 1.0, "b": 1.0, "c": float("nan")})[0].startswith("c: exploding")


@pytest.fixture(scope="module")
def monitored_run(tmp_path_factory, compose):
    """40 steps with the monitors on, and each step's gradient norm before clipping, computed here
    from the gradients themselves."""
    run, raw_norms = tmp_path_factory.mktemp("mon"), []
    real_clip = GPTModule.configure_gradient_clipping

    def spy(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):
        raw_norms.append(
            sum(float(p.grad.double().pow(2).sum()) for p in self.parameters() if p.grad is not None) ** 0.5
        )
        return real_clip(self, optimizer, gradient_clip_val, gradient_clip_algorithm)

    cfg = compose("max_iters=40", "eval_interval=20", "monitor.layer_interval=10", "log_interval=10", "grad_clip=1.0")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(GPTModule, "configure_gradient_clipping", spy)
        metrics = train(cfg, run)
    return run, metrics, raw_norms


def test_gradient_monitoring_in_tensorboard_and_metrics(monitored_run, tb_events):
    run, metrics, raw_norms = monitored_run
    events = tb_events(run)
    scalars = events.tags("scalars")
    assert {
        "train/grad_norm",
        "grad/clipped_frac",
        "grad_layer/h0.attn",
        "grad_layer/wte/head",
        "update_ratio/h1.mlp",
        "init/val_loss",
        "init/random_guess_loss",
    } <= scalars
    assert list(events.scalars("train/grad_norm")) == [10, 20, 30, 40]
    assert {"grad_hist/h0.mlp", "weight_hist/ln_f"} <= events.tags("histograms")
    ratios = list(events.scalars("update_ratio/h1.mlp").values())
    assert all(1e-6 < r < 1 for r in ratios)
    # the share of the 40 steps whose norm exceeded grad_clip=1.0 (the tiny model's norms lie
    # around 1: some steps are clipped, not all), and per logged window in TensorBoard
    assert len(raw_norms) == 40
    clipped = [n > 1.0 for n in raw_norms]
    assert 0 < sum(clipped) < 40
    assert metrics["grad_clipped_frac"] == pytest.approx(sum(clipped) / 40)
    assert events.scalars("grad/clipped_frac") == pytest.approx(
        {s: sum(clipped[s - 10 : s]) / 10 for s in (10, 20, 30, 40)}
    )
    assert events.scalars("train/grad_norm") == pytest.approx({s: raw_norms[s - 1] for s in (10, 20, 30, 40)}, rel=1e-4)
    assert abs(metrics["initial_val_loss"] - math.log(65)) < 0.5 and metrics["random_guess_loss"] == pytest.approx(
        math.log(65)
    )


def test_gradviz_writes_heatmap_and_verdict(monitored_run, capsys):
    run, _, _ = monitored_run
    assert gradviz.main([str(run)]) == 0
    out = capsys.readouterr().out
    png = run / "grad_heatmap.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    assert "healthy" in out and "4 steps" in out


def test_gradviz_on_a_folder_without_layer_norms(tmp_path, capsys):
    assert gradviz.main([str(tmp_path)]) == 2
    assert "monitor.layer_interval" in capsys.readouterr().err


class _FakeModule:
    def __init__(self):
        self.last_eval = {}


class _FakeTrainer:
    def __init__(self):
        self.global_step, self.sanity_checking, self.is_global_zero, self.loggers = 0, False, True, []


def test_initial_loss_check_warns_when_far_from_uniform(caplog):
    check, trainer, module = InitialLossCheck(vocab_size=65), _FakeTrainer(), _FakeModule()
    module.last_eval = {"train": 9.0, "val": 9.1}
    with caplog.at_level("INFO", logger="gptlab"):
        check.on_validation_end(trainer, module)
    assert "differs from the random-guess loss 4.1744" in caplog.text and "initialised too large" in caplog.text


def test_plateau_hint_fires_once_with_the_checklist(caplog):
    hint, trainer, module = PlateauHint(patience=3), _FakeTrainer(), _FakeModule()
    with caplog.at_level("INFO", logger="gptlab"):
        for step, val in enumerate([3.0, 2.5, 2.6, 2.55, 2.7, 2.6, 2.9]):
            trainer.global_step = step * 100
            module.last_eval = {"train": 2.5, "val": val}
            hint.on_validation_end(trainer, module)
    assert caplog.text.count("has not improved for 3 evaluations") == 1
    assert "best 2.5000 at step 100" in caplog.text and "learning rate too small" in caplog.text


def test_bfloat16_trains_on_cpu(compose, tmp_path):
    cfg = compose("dtype=bfloat16", "max_iters=6", "eval_interval=3")
    assert resolve_device(cfg).precision == "bf16-mixed"
    metrics = train(cfg, tmp_path)
    assert metrics["iters"] == 6 and math.isfinite(metrics["final_val_loss"])
    assert metrics["final_val_loss"] < metrics["evals"][0]["val_loss"]


def test_float16_on_cpu_is_refused_not_silently_replaced(compose):
    # Lightning would fall back to bfloat16 with a warning; the run would not be what was asked
    with pytest.raises(ConfigError, match="use dtype=bfloat16 or dtype=float32"):
        resolve_device(compose("dtype=float16"))


def test_auto_dtype_is_float32_on_cpu(compose):
    assert resolve_device(compose()).precision == "32-true"


@pytest.mark.slow
def test_compile_trains_and_checkpoints_load_both_ways(compose, tmp_path):
    metrics = train(compose("compile=true", "max_iters=4", "eval_interval=2"), tmp_path / "c")
    assert math.isfinite(metrics["final_val_loss"])
    ckpt = torch.load(tmp_path / "c" / "last.ckpt", weights_only=True)
    assert not any("_orig_mod" in k for k in ckpt["state_dict"])  # loads into an uncompiled GPT as is
    model, _ = load_model(tmp_path / "c" / "last.ckpt")
    # and an uncompiled run's checkpoint resumes into a compiled one
    train(compose("max_iters=4", "eval_interval=2"), tmp_path / "u")
    m2 = train(compose("compile=true", "max_iters=6", "eval_interval=2", "init_from=resume"), tmp_path / "u")
    assert m2["iters"] == 6


def test_compiled_module_keeps_the_plain_state_dict_keys():
    """The cheap half of the slow test above (torch.compile is lazy: nothing compiles until the
    first forward): the compiled wrapper stays out of the module tree, so checkpoints of compiled
    and uncompiled runs hold the same keys and load into each other."""
    config = GPTConfig(vocab_size=65, block_size=16, n_layer=2, n_head=2, n_embd=32)
    compiled, plain = GPTModule(config, OptimConfig(), compile=True), GPTModule(config, OptimConfig())
    compiled.configure_model()
    plain.configure_model()
    wrapper = compiled.__dict__["_compiled"]
    assert wrapper._orig_mod is compiled.model and "_compiled" not in plain.__dict__  # forward runs the wrapper
    keys = set(compiled.state_dict())
    assert keys == set(plain.state_dict()) and not any("_orig_mod" in k for k in keys)
    plain.load_state_dict(compiled.state_dict())
    compiled.load_state_dict(plain.state_dict())


@pytest.mark.parametrize("budget, steps", [(1.0, [4, 8, 12]), (0.0, [12])])
def test_eval_samples_keep_to_their_share_of_the_time(compose, tmp_path, tb_events, budget, steps):
    """budget 1: a sample after every evaluation of the training; 0: only after the last. Never
    one for the step-0 evaluation, a random model's text."""
    train(compose("max_iters=12", "eval_interval=4", "eval_sample_tokens=8", f"eval_sample_budget={budget}"), tmp_path)
    events = tb_events(tmp_path)
    (tag,) = [t for t in events.tags("tensors") if t.startswith("samples/eval")]
    assert [e.step for e in events.tensors(tag)] == steps


def test_eval_sample_budget_counts_the_time_spent_against_the_time_trained():
    class Trainer:
        global_step, max_steps = 500, 2000

    cb = EvalSamples(64, tokenizer=None, seed=0, budget=0.01)
    cb.on_train_start(Trainer(), None)
    cb._t_start -= 40.0  # 40 s of training: 0.4 s for samples
    cb._cost = 0.3
    assert cb._due(Trainer(), None)
    cb._spent = 0.3  # one taken: a second would make 0.6 s
    assert not cb._due(Trainer(), None)
    cb._t_start -= 20.0  # 60 s: 0.6 s allowed
    assert cb._due(Trainer(), None)
    cb.exclude(30.0)  # a pause is not training time
    assert not cb._due(Trainer(), None)
    Trainer.global_step = 2000  # the last evaluation always has one
    assert cb._due(Trainer(), None)


def test_histograms_counted_on_the_device_read_back_by_tensorboard(tmp_path, tb_events):
    w = SummaryWriter(str(tmp_path))
    v = torch.randn(10_000, generator=torch.Generator().manual_seed(0))
    add_histogram(w, "h", v, 3)
    add_histogram(w, "ones", torch.ones(100), 3)  # all equal (a fresh LayerNorm's weights)
    w.close()
    events = tb_events(tmp_path)
    h = events.histograms("h")[0]
    assert h.step == 3 and h.histogram_value.num == 10_000 and sum(h.histogram_value.bucket) == 10_000
    assert h.histogram_value.min == pytest.approx(float(v.min())) and h.histogram_value.max == pytest.approx(
        float(v.max())
    )
    assert h.histogram_value.sum_squares == pytest.approx(float((v * v).sum()), rel=1e-5)
    # the middle buckets hold the most: a normal distribution, not an empty or flat one
    counts = h.histogram_value.bucket
    assert max(counts) == max(counts[24:40]) and counts[0] < counts[32]
    ones = events.histograms("ones")[0].histogram_value
    assert ones.min == ones.max == 1.0 and sum(ones.bucket) == 100
