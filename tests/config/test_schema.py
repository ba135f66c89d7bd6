"""config.checks.SCHEMA: every key of conf/ has a type and a range, and a wrong value is one
ConfigError naming the key, the value and what is allowed -- never a TypeError from deep inside."""

import itertools

import pytest
from omegaconf import OmegaConf

from gptlab.cli.common import CONF_DIR
from gptlab.config import INSPECT, SAMPLE, SCHEMA, validate
from gptlab.config.checks import REPORT_METRICS, STRATEGIES
from gptlab.errors import ConfigError


def leaves(node, prefix=""):
    for k, v in node.items():
        if OmegaConf.is_dict(v) and len(v):  # an empty node (callbacks: {}) is a key of its own
            yield from leaves(v, f"{prefix}{k}.")
        else:
            yield prefix + k


def names(group):
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def test_every_key_of_every_config_has_a_rule(compose):
    choices = [["data=" + n for n in names("data")], ["trainer=" + n for n in names("trainer")]]
    seen = set()
    for overrides in itertools.product(*choices):
        seen |= set(leaves(compose(*overrides, "data.path=x.txt")))
    for group in ("model", "experiment", "variant"):
        for n in names(group):
            seen |= set(leaves(compose(f"{group}={n}")))
    # the logger group's nodes are a class's arguments, checked against its signature (config/loggers.py)
    loggers = {k for k in leaves(compose(f"logger=[{','.join(names('logger'))}]")) if k.startswith("logger.")}
    assert {k.split(".")[1] for k in loggers} == set(names("logger"))
    seen -= loggers
    assert sorted(seen - set(SCHEMA)) == []
    assert sorted(set(SCHEMA) - seen) == []  # no rule for a key that no longer exists
    assert set(SAMPLE) | {"ckpt"} == set(OmegaConf.load(CONF_DIR / "sample.yaml"))
    assert set(INSPECT) == set(OmegaConf.load(CONF_DIR / "inspect.yaml")) - {"defaults"}


def test_the_lists_agree_with_the_code_that_reads_them():
    from lightning.pytorch.strategies import StrategyRegistry

    from gptlab.report.report import COLUMNS

    assert list(REPORT_METRICS) == list(COLUMNS)
    assert set(STRATEGIES) - {"auto", "fsdp"} <= set(StrategyRegistry)


@pytest.mark.parametrize(
    "override, message",
    [
        ("batch_size=abc", "batch_size must be an integer >= 1, got 'abc'"),
        ("batch_size=2.5", "batch_size must be an integer >= 1, got 2.5"),
        ("learning_rate=abc", r"learning_rate must be > 0, or auto .*got 'abc'"),
        ("learning_rate=inf", r"learning_rate must be > 0, or auto .*got inf"),
        ("weight_decay=x", "weight_decay must be >= 0, got 'x'"),
        ("grad_clip=x", r"grad_clip must be >= 0 \(0 disables clipping\), got 'x'"),
        ("eval_sample_budget=x", "eval_sample_budget must be a share of the training time between 0 and 1"),
        ("beta1=x", r"beta1 must be in \[0, 1\), got 'x'"),
        ("dropout=x", r"dropout must be in \[0, 1\), got 'x'"),
        ("dropout=nan", r"dropout must be in \[0, 1\), got nan"),
        ("seed=x", r"seed must be an integer in \[0, 4294967295\], got 'x'"),
        ("seed=-1", r"seed must be an integer in \[0, 4294967295\], got -1"),
        ("monitor.grad_warn=x", r"monitor.grad_warn must be >= 0 \(0: never warn\), got 'x'"),
        ("trainer.num_nodes=x", "trainer.num_nodes must be an integer >= 1, got 'x'"),
        ("trainer.strategy=dpp", "trainer.strategy must be one of auto, ddp, "),
        ("trainer.accelerator=tpu", "trainer.accelerator must be one of auto, cpu, gpu, cuda, mps, got 'tpu'"),
        ("dtype=fp8", "dtype must be one of auto, float32, bfloat16, float16, got 'fp8'"),
        ("device=tpu", "device must be auto, cpu, cuda, cuda:N or mps, got 'tpu'"),
        ("bias=maybe", "bias must be true or false, got 'maybe'"),
        ("out_dir=true", "out_dir must be text .*got True"),
        ("data.val_fraction=1", r"data.val_fraction must be between 0 and 1 .*got 1"),
        ("data.root=null", "data.root must be text .*got None"),
        ("report.metric=loss", "report.metric must be one of final_train_loss, final_val_loss, gap, best_val_loss"),
        ("report.goal=down", "report.goal must be one of lower, higher, got 'down'"),
        ("monitor.layer_ratio=1", r"monitor.layer_ratio must be > 1"),
        ("lr_find.max_lr=x", "lr_find.max_lr must be > 0, got 'x'"),
        ("early_stopping.patience=1.5", "early_stopping.patience must be a whole number of evaluations"),
        ("eval_batch_size=0", "eval_batch_size must be an integer >= 1, or null"),
        ("n_layer=[1,2]", r"n_layer must be an integer >= 1, got \[1, 2\]"),
        ("trainer.devices=[]", "trainer.devices must be a number of processes"),
        ("data.name=${nope}", "data.name: Interpolation key 'nope' not found"),
    ],
)
def test_a_wrong_value_is_one_line_naming_key_value_and_range(compose, override, message):
    with pytest.raises(ConfigError, match=message) as e:
        validate(compose(override))
    assert "\n" not in str(e.value)


def test_values_within_range_pass(compose):
    validate(
        compose(
            "seed=0",
            "dropout=0.5",
            "learning_rate=auto",
            "trainer.devices=1",
            "eval_batch_size=4",
            "data.name=2024",
            "lr_find.diverge_threshold=null",
            "report.cost=gap",
        )
    )
