from pathlib import Path

import pytest
from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from omegaconf import OmegaConf, open_dict

from gptlab.cli import common as cli
from gptlab.config import validate
from gptlab.errors import ConfigError

CONF = Path(cli.CONF_DIR)


def group_options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def overrides_that_load(option: str) -> list[str]:
    """The command line that makes the train config load conf/<option>.yaml (option without the
    .yaml); a file no rule knows is an error, so a new config cannot go untested."""
    group, *sub, name = option.split("/")
    groups = ("data", "model", "trainer", "experiment", "variant", "profile", "hparams_search", "logger")
    if group in groups and not sub:
        return [f"{group}={name}", *(["data.path=README.md"] if option == "data/text" else [])]
    if group == "recipe":  # recipe: ${profile}
        return [f"profile={name}"]
    if group == "data" and sub == ["exp3_regularization"]:  # exp3's data: exp3_regularization/${profile}
        return ["experiment=exp3_regularization", f"profile={name}"]
    if group == "scale" and len(sub) == 1:  # scale: ${profile}/${experiment}
        return [f"experiment={name}", f"profile={sub[0]}"]
    if group == "scale" and len(sub) == 2:  # scale/<profile>/<experiment>: ${model}
        return [f"experiment={sub[1]}", f"profile={sub[0]}", f"model={name}"]
    if group == "variant_scale" and len(sub) == 1:  # variant_scale: ${profile}/${variant}
        return [f"variant={name}", f"profile={sub[0]}"]
    raise AssertionError(f"conf/{option}.yaml: no rule says how a run loads it; add one here")


TRAIN_OPTIONS = sorted(
    str(p.relative_to(CONF).with_suffix(""))
    for p in CONF.rglob("*.yaml")
    if p.parent != CONF and p.relative_to(CONF).parts[0] != "hydra"
)


@pytest.mark.parametrize("option", TRAIN_OPTIONS)
def test_every_config_in_conf_composes(option, data_root):
    """Every file of every group, composed as a run loads it (the scales through their experiment
    and profile): Hydra must have chosen that very file, and the result resolve and validate."""
    overrides = [*overrides_that_load(option), f"data.root={data_root}"]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = hydra_compose("train", overrides, return_hydra_config=True)
    choices = {f"{group}/{choice}" for group, choice in cfg.hydra.runtime.choices.items() if choice is not None}
    assert option in choices, sorted(choices)
    with open_dict(cfg):
        del cfg["hydra"]  # what a run's config holds: the rest
    OmegaConf.resolve(cfg)
    if not option.startswith(("experiment/", "scale/", "data/exp3_regularization/")):
        validate(cfg)


@pytest.mark.parametrize("name", ["sample", "inspect"])
def test_the_other_commands_configs_compose(name):
    cfg = cli.compose(name, ["ckpt=outputs/run"] if name == "sample" else [])
    OmegaConf.resolve(cfg)


def test_defaults_reproduce_nanogpt_shakespeare_char(compose):
    cfg = compose("profile=gpu", tiny=False)  # the config as written, whatever this machine has
    expected = dict(
        batch_size=64,
        block_size=256,
        n_layer=6,
        n_head=6,
        n_embd=384,
        dropout=0.2,
        learning_rate=1e-3,
        max_iters=5000,
        lr_decay_iters=5000,
        min_lr=1e-4,
        beta2=0.99,
        warmup_iters=100,
        eval_interval=250,
        eval_iters=200,
        log_interval=10,
        gradient_accumulation_steps=1,
        weight_decay=0.1,
        grad_clip=1.0,
    )
    assert {k: cfg[k] for k in expected} == expected
    assert cfg.data.tokenizer == "char" and cfg.data.name == "shakespeare_char"


def test_model_groups_set_the_architecture(compose):
    shapes = {
        m: (compose(f"model={m}", tiny=False).n_layer, compose(f"model={m}", tiny=False).n_embd)
        for m in group_options("model")
    }
    assert shapes == {
        "tiny": (2, 128),
        "small": (4, 256),
        "baby": (6, 384),
        "large": (8, 512),
        "gpt2": (12, 768),
        "cpu": (4, 128),
    }


def test_cpu_profile_fills_only_keys_not_set(compose):
    """profile=cpu puts the recipe under everything: typed keys win, the recipe fills the rest."""
    cfg = compose("max_iters=300", "batch_size=32", "profile=cpu", tiny=False)
    assert cfg.max_iters == 300 and cfg.batch_size == 32  # the user's values win
    assert cfg.block_size == 64 and cfg.n_layer == 4 and cfg.eval_iters == 20  # the recipe fills the rest
    assert cfg.lr_decay_iters == 300  # follows max_iters


def test_cpu_profile_respects_model_choice_and_gpu(compose):
    cfg = compose("model=small", "profile=cpu", tiny=False)
    assert (cfg.n_layer, cfg.n_embd) == (4, 256) and cfg.block_size == 64  # the typed model keeps its shape
    for name in ("gpu", "none"):
        cfg = compose(f"profile={name}", tiny=False)
        assert (cfg.n_layer, cfg.block_size, cfg.max_iters) == (6, 256, 5000)


def test_auto_profile_follows_the_hardware():
    assert cli.resolve_profile(["n_layer=3"], cuda=False) == ["n_layer=3", "profile=cpu"]
    assert cli.resolve_profile(["profile=auto"], cuda=True) == ["profile=gpu"]
    assert cli.resolve_profile(["device=cpu"], cuda=True) == ["device=cpu", "profile=cpu"]
    assert cli.resolve_profile(["trainer=cpu"], cuda=True) == ["trainer=cpu", "profile=cpu"]
    assert cli.resolve_profile(["profile=none"], cuda=False) == ["profile=none"]


def test_saved_config_is_what_cfg_job_shows(run_cli):
    """python -m gptlab.train --cfg job prints the config a run uses; the run saves exactly it."""
    p = run_cli("gptlab.train", "--cfg", "job", "profile=cpu", "experiment=exp3_regularization", "max_iters=7")
    assert p.returncode == 0, p.stderr
    shown = OmegaConf.create(p.stdout)
    assert shown.n_layer == 4 and shown.max_iters == 7 and shown.data.name == "shakespeare_char_10pct"
    assert "cpu_scale" not in shown and "profile" not in shown


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["n_embd=100", "n_head=3"], "divisible by n_head"),
        (["batch_size=0"], "batch_size must be an integer >= 1"),
        (["block_size=-5"], "block_size must be an integer >= 1"),
        (["warmup_iters=500", "max_iters=100"], "warmup_iters \\(500\\) > max_iters"),
        (["lr_decay_iters=1", "warmup_iters=2"], "lr_decay_iters \\(1\\) < warmup_iters"),
        (["learning_rate=0"], "learning_rate must be > 0"),
        (["dropout=1.5"], "dropout must be in"),
        (["dtype=float8"], "dtype must be one of"),
        (["data=text"], "data.path=FILE"),
    ],
)
def test_contradictory_settings_rejected_up_front(compose, overrides, message):
    with pytest.raises(ConfigError, match=message):
        validate(compose(*overrides))


def test_unknown_key_suggests_the_right_one():
    with pytest.raises(ConfigError, match="unknown config key 'lerning_rate'. Did you mean 'learning_rate'"):
        cli.check_override_keys(["lerning_rate=1e-3"])
    with pytest.raises(ConfigError, match="data.tokeniser"):
        cli.check_override_keys(["data.tokeniser=gpt2"])
    cli.check_override_keys(
        ["learning_rate=1e-3", "data.path=x", "model=tiny", "+lr_find.min_lr=1e-5", "hydra.verbose=true"]
    )
    with pytest.raises(ConfigError, match="unknown config key 'foo'"):  # '+' adds no key the config does not know
        cli.check_override_keys(["+foo=1"])


def test_nanogpt_style_arguments_translate():
    args = [
        "config/train_shakespeare_char.py",
        "--max_iters=1000",
        "--learning_rate=5e-3",
        "--out_dir=exp1_large_lr",
        "dropout=0.1",
    ]
    assert cli.translate_argv(args) == ["max_iters=1000", "learning_rate=5e-3", "out_dir=exp1_large_lr", "dropout=0.1"]
    with pytest.raises(ConfigError, match="config files are not read"):
        cli.translate_argv(["config/train_gpt2.py"])
