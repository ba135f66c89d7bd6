"""The guide's five experiments (conf/experiment/exp1..exp5): each composes into the runs it
declares -- expanded by Hydra's own basic sweeper -- at the guide's scale and at the CPU scale,
and experiment 2's two layouts of one batch train identically."""

import numpy as np
import pytest
from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser

from gptlab.cli import common as cli
from gptlab.config import validate
from gptlab.data.datamodule import RandomWindows
from gptlab.training.run import train


def jobs(experiment: str, *cli_args: str) -> list[list[str]]:
    """The override list of every job `python -m gptlab.train experiment=<e> -m <cli_args>` launches:
    the experiment's hydra.sweeper.params, then the command line, split by BasicSweeper."""
    with initialize_config_dir(config_dir=str(cli.CONF_DIR), version_base="1.3"):
        cfg = hydra_compose("train", [f"experiment={experiment}"], return_hydra_config=True)
    params = [f"{k}={v}" for k, v in cfg.hydra.sweeper.params.items()]
    overrides = OverridesParser.create().parse_overrides([*params, f"experiment={experiment}", *cli_args])
    (batch,) = BasicSweeper.split_arguments(overrides, None)
    return batch


def job_config(overrides: list[str], cpu: bool):
    """A job's config as train() sees it, composed by Hydra alone: the CPU profile's recipe and the
    experiment's CPU scale (cpu=True, as on a machine without a GPU) or the guide's numbers."""
    cfg = cli.compose("train", [*overrides, "device=cpu"] if cpu else [*overrides, "profile=gpu"])
    validate(cfg)
    return cfg


def shapes(configs) -> list[tuple]:
    return [(c.n_layer, c.n_head, c.n_embd) for c in configs]


def test_exp1_five_named_variants():
    runs = jobs("exp1_hparams")
    names = [next(o.split("=")[1] for o in r if o.startswith("variant=")) for r in runs]
    assert names == ["baseline", "large_lr", "small_lr", "small_batch", "large_model"]
    assert [cli.run_name(f"variant={n}") for n in names] == names  # the job folders: 0_baseline, 1_large_lr, ...
    guide = [job_config(r, cpu=False) for r in runs]
    assert [c.learning_rate for c in guide] == [1e-3, 5e-3, 1e-4, 1e-3, 1e-3]
    assert [c.batch_size for c in guide] == [64, 64, 64, 16, 64]
    assert shapes(guide) == [(6, 6, 384)] * 4 + [(8, 8, 512)]
    assert {c.max_iters for c in guide} == {1000}
    cpu = [job_config(r, cpu=True) for r in runs]
    assert [c.learning_rate for c in cpu] == [
        1e-3,
        5e-3,
        1e-4,
        1e-3,
        1e-3,
    ]  # the CPU scale leaves the learning rates alone
    assert [c.batch_size for c in cpu] == [12, 12, 12, 3, 12] and {c.block_size for c in cpu} == {64}
    assert shapes(cpu) == [(4, 4, 128)] * 4 + [(6, 6, 192)]
    assert {c.max_iters for c in cpu} == {1000} and {c.variant for c in cpu} == set(names)


def test_exp2_same_batch_two_layouts():
    a, b, ref = (job_config(r, cpu=False) for r in jobs("exp2_grad_accum"))
    # the guide's scale (bf16 on a GPU) adds large_batch in float32: the report's rounding floor
    assert (ref.variant, ref.batch_size, ref.gradient_accumulation_steps, ref.dtype) == (
        "large_batch_float32",
        64,
        1,
        "float32",
    )
    assert a.dtype == b.dtype == "auto"
    with initialize_config_dir(config_dir=str(cli.CONF_DIR), version_base="1.3"):
        cpu = hydra_compose("train", ["experiment=exp2_grad_accum", "profile=cpu"], return_hydra_config=True)
    assert cpu.hydra.sweeper.params.variant == "large_batch,grad_accum"  # float32 on CPU: no reference to add
    for cpu in (False, True):
        a, b = (job_config(r, cpu) for r in jobs("exp2_grad_accum")[:2])
        assert (a.variant, a.batch_size, a.gradient_accumulation_steps) == ("large_batch", 64, 1)
        assert (b.variant, b.batch_size, b.gradient_accumulation_steps) == ("grad_accum", 16, 4)
        assert a.dropout == b.dropout == 0.0 and a.eval_batch_size == b.eval_batch_size == 64
        assert a.max_iters == b.max_iters == 500


def test_exp3_grid_and_command_line_values_replace_the_declared_ones():
    runs = jobs("exp3_regularization")
    grid = [(c.dropout, c.weight_decay) for c in (job_config(r, cpu=False) for r in runs)]
    assert sorted(grid) == [(0.0, 0.0), (0.0, 0.1), (0.2, 0.0), (0.2, 0.1)]
    cpu = job_config(runs[0], cpu=True)
    assert (cpu.data.name, cpu.data.val_fraction, cpu.max_iters) == ("shakespeare_char_10pct", 0.9, 1000)
    assert job_config(runs[0], cpu=False).max_iters == 5000
    # the guide's command line, exactly as written: dropout from the command line, weight_decay as declared
    assert len(jobs("exp3_regularization", "dropout=0,0.2")) == 4
    only = jobs("exp3_regularization", "dropout=0.1")
    assert sorted(job_config(r, cpu=False).weight_decay for r in only) == [0.0, 0.1]
    assert {job_config(r, cpu=False).dropout for r in only} == {0.1}
    assert (
        cli.translate_argv(["experiment=exp3_regularization", "-m", "dropout=0,0.2"])[0] == "-m"
    )  # flags in any order


def test_exp4_schedule_grid():
    for cpu in (False, True):
        configs = [job_config(r, cpu) for r in jobs("exp4_lr_schedule")]
        assert sorted((c.warmup_iters, c.decay_lr) for c in configs) == [
            (0, False),
            (0, True),
            (100, False),
            (100, True),
        ]
        assert {(c.max_iters, c.lr_decay_iters) for c in configs} == {(2000, 2000)}


def test_exp5_sizes_at_both_scales():
    runs = jobs("exp5_scaling")
    assert shapes(job_config(r, cpu=False) for r in runs) == [(2, 2, 128), (4, 4, 256), (6, 6, 384), (8, 8, 512)]
    cpu = [job_config(r, cpu=True) for r in runs]
    assert shapes(cpu) == [(2, 2, 64), (4, 4, 96), (6, 6, 144), (8, 8, 192)]
    assert {(c.max_iters, c.block_size) for c in cpu} == {(1000, 64)}


def test_the_command_line_beats_the_cpu_scale():
    (first, *_) = jobs("exp5_scaling", "max_iters=200", "n_embd=32")
    cfg = job_config(first, cpu=True)
    assert (cfg.max_iters, cfg.n_embd, cfg.block_size) == (200, 32, 64)


def test_grouped_windows_are_one_large_batch(tmp_path):
    """16 x 4 micro-batches hold exactly the 64 windows a single batch of 64 holds, step after step."""
    path = tmp_path / "t.bin"
    np.arange(10_000, dtype=np.uint16).tofile(path)
    big = RandomWindows(path, "uint16", 8, 64, seed=3)
    small = RandomWindows(path, "uint16", 8, 16, seed=3, group=4)
    for _ in range(3):
        x, y = big.sample()
        parts = [small.sample() for _ in range(4)]
        assert np.array_equal(x.numpy(), np.concatenate([p[0].numpy() for p in parts]))
        assert np.array_equal(y.numpy(), np.concatenate([p[1].numpy() for p in parts]))


def test_exp2_curves_agree_to_float_tolerance(tiny, tmp_path):
    """The experiment's two runs, shrunk: the same loss at every step and every evaluation."""

    def run(variant):
        overrides = [
            "experiment=exp2_grad_accum",
            f"variant={variant}",
            *(o for o in tiny if not o.startswith("batch_size=")),  # the variants set the batch layout
            "max_iters=12",
            "eval_interval=4",
            "eval_iters=2",
            "log_interval=1",
            "eval_sample_tokens=0",
        ]
        return train(cli.compose("train", overrides), tmp_path / variant)

    a, b = run("large_batch"), run("grad_accum")
    assert a["tokens_per_step"] == b["tokens_per_step"] == 64 * 32  # 64 x 1 and 16 x 4 sequences of 32 tokens
    assert [s for s, _ in a["train_curve"]] == list(range(1, 13))
    np.testing.assert_allclose([v for _, v in a["train_curve"]], [v for _, v in b["train_curve"]], atol=1e-5)
    for ea, eb in zip(a["evals"], b["evals"], strict=True):
        assert ea["step"] == eb["step"]
        assert ea["val_loss"] == pytest.approx(eb["val_loss"], abs=1e-5)
        assert ea["train_loss"] == pytest.approx(eb["train_loss"], abs=1e-5)
    assert a["train_curve"][-1][1] < a["train_curve"][0][1] - 0.1  # and they did learn


def test_typed_group_choices_keep_their_keys():
    """model=small and data=shakespeare typed with an experiment win over its CPU scale."""
    (first, *_) = jobs("exp1_hparams", "model=small")
    assert shapes([job_config(first, cpu=True)]) == [(4, 4, 256)]
    (first, *_) = jobs("exp3_regularization", "data=shakespeare")
    cfg = job_config(first, cpu=True)
    assert (cfg.data.name, cfg.data.tokenizer, cfg.data.val_fraction) == ("shakespeare_gpt2", "gpt2", 0.1)
    assert cfg.max_iters == 1000  # the rest of the CPU scale still applies


def test_launcher_configs_compose():
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    with initialize_config_dir(config_dir=str(cli.CONF_DIR), version_base="1.3"):
        cfg = hydra_compose("train", ["hydra/launcher=slurm"], return_hydra_config=True)
    assert cfg.hydra.launcher._target_.endswith("SlurmLauncher") and cfg.hydra.launcher.tasks_per_node == 1
