"""The `callbacks` node: Lightning callbacks, or a user's own class, named by import path in the
config and built by the command line (Hydra's instantiate), with one message for a bad one."""

import re
import textwrap

import pytest

from gptlab import train
from gptlab.cli.train import instantiate_callbacks
from gptlab.errors import ConfigError
from gptlab.training import run

USER_MODULE = """
import json
import lightning as L


class RecordSteps(L.Callback):
    def __init__(self, path, every):
        self.path, self.every, self.steps = path, every, []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step % self.every == 0:
            self.steps.append(trainer.global_step)

    def on_train_end(self, trainer, pl_module):
        with open(self.path, "w") as f:
            json.dump(self.steps, f)
"""


def test_a_lightning_callback_and_a_users_own_run_in_a_training_run(compose, tmp_path, monkeypatch, tb_events):
    (tmp_path / "my_callbacks.py").write_text(textwrap.dedent(USER_MODULE))
    monkeypatch.syspath_prepend(str(tmp_path))  # a module of the user's, importable as any other
    record = tmp_path / "steps.json"
    cfg = compose(
        "max_iters=6",
        "eval_interval=3",
        "+callbacks.lr._target_=lightning.pytorch.callbacks.LearningRateMonitor",
        "+callbacks.lr.logging_interval=step",
        "+callbacks.mine._target_=my_callbacks.RecordSteps",
        f"+callbacks.mine.path={record}",
        "+callbacks.mine.every=2",
    )
    metrics = train(cfg, tmp_path / "run")
    assert metrics["status"] == "ok"
    assert record.read_text() == "[2, 4, 6]"
    # LearningRateMonitor's tags (one per parameter group), written every log_interval (5) steps
    lr = tb_events(tmp_path / "run").scalars("lr-AdamW/pg1")
    assert len(lr) == 1 and 0 < next(iter(lr.values())) < 1e-3


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["+callbacks.x._target_=no_such_module.Thing"], r"callbacks.x: cannot import no_such_module.Thing \("),
        (
            ["+callbacks.x._target_=lightning.pytorch.callbacks.LearningRateMonitor", "+callbacks.x.every=2"],
            r"callbacks.x: cannot build .*LearningRateMonitor \(TypeError: .*unexpected keyword argument 'every'\)",
        ),
        (["+callbacks.x._target_=collections.OrderedDict"], r"collections.OrderedDict is not a Lightning Callback"),
        (
            [
                "+callbacks.swa._target_=lightning.pytorch.callbacks.StochasticWeightAveraging",
                "+callbacks.swa.swa_lrs=1e-3",
            ],
            r"callbacks.swa: StochasticWeightAveraging does not fit .* Use lightning.pytorch.callbacks.WeightAveraging",
        ),
    ],
)
def test_a_bad_callback_is_one_message(compose, overrides, message):
    with pytest.raises(ConfigError, match=message):
        instantiate_callbacks(compose(*overrides))


def test_a_node_without_target_is_refused(compose, tmp_path):
    cfg = compose("+callbacks.x.every=2")
    with pytest.raises(ConfigError, match=r"callbacks.x has no _target_: give \+callbacks.x._target_=<module.Class>"):
        train(cfg, tmp_path / "run")
    with pytest.raises(ConfigError, match=r"callbacks must be named nodes, each with _target_"):
        run.validate(cfg)  # the library's own check, for configs that reach it another way
    assert not (tmp_path / "run").exists()


def test_the_library_does_not_ignore_callbacks_it_cannot_build(compose, tmp_path):
    cfg = compose("+callbacks.lr._target_=lightning.pytorch.callbacks.LearningRateMonitor")
    with pytest.raises(ConfigError, match=r"call gptlab.train\(cfg, run_dir\), which does"):
        run.train(cfg, tmp_path / "run")
    assert instantiate_callbacks(compose("+callbacks.lr=null")) == []  # null: switched off


@pytest.mark.parametrize(
    "args, message",
    [
        (["+callbacks.x._target_=no_such_module.Thing"], r"^error: callbacks.x: cannot import no_such_module.Thing"),
        (["+trainer.max_tim=00:00:01:00"], r"^error: trainer.max_tim is not an argument .* trainer.max_time\?"),
        (["+trainer.val_check_interval=5"], r"^error: trainer.val_check_interval is set by gptlab; give eval_interval"),
    ],
)
def test_the_command_line_refuses_before_making_a_run_folder(tiny, run_cli, tmp_path, args, message):
    out = tmp_path / "run"
    p = run_cli("gptlab.train", "max_iters=4", f"out_dir={out}", *tiny, *args)
    assert p.returncode == 2, p.stderr[-2000:]
    assert "Traceback" not in p.stderr
    errors = [line for line in p.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and re.search(message, errors[0]), p.stderr[-2000:]
    assert not out.exists()
