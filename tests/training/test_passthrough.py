"""Lightning Trainer arguments through the config (+trainer.<argument>=...): what reaches the
Trainer, what is refused and why, and trainer.max_time ending a run as other stops do."""

import json
import re
import time
import types

import lightning as L
import pytest
import torch
from lightning.pytorch.profilers import SimpleProfiler
from omegaconf import OmegaConf

from gptlab.cli.common import CONF_DIR
from gptlab.errors import ConfigError
from gptlab.training import passthrough, run
from gptlab.training.checkpoint import load_checkpoint


def test_gptlab_keys_are_the_trainer_groups_keys():
    assert set(passthrough.GPTLAB_KEYS) == set(OmegaConf.load(CONF_DIR / "trainer" / "default.yaml"))
    assert set(passthrough.SET_BY_GPTLAB) <= set(passthrough.TRAINER_ARGS)


def test_every_argument_build_trainer_sets_is_gptlabs_own_or_refused(compose, tmp_path, monkeypatch):
    """A pass-through key equal to one build_trainer sets would be given twice: each must be refused."""
    seen = {}
    monkeypatch.setattr(run, "L", types.SimpleNamespace(Trainer=lambda **kw: seen.update(kw)))
    cfg = compose("max_iters=4")
    r = run.Run(cfg, tmp_path, run.settings(cfg))
    run.build_trainer(r, [])
    assert set(seen) - set(passthrough.GPTLAB_KEYS) - set(passthrough.SET_BY_GPTLAB) == set()


@pytest.mark.parametrize(
    "override, message",
    [
        ("+trainer.max_tim=00:00:01:00", r"trainer.max_tim is not an argument of Lightning's Trainer. Did you mean "),
        ("+trainer.detect_anomoly=true", r"Did you mean trainer.detect_anomaly\?"),
        ("+trainer.max_steps=5", r"trainer.max_steps is set by gptlab; give max_iters instead"),
        ("+trainer.precision=16", r"trainer.precision is set by gptlab; give dtype"),
        ("+trainer.accumulate_grad_batches=4", r"give gradient_accumulation_steps instead"),
        ("+trainer.callbacks=[]", r"give \+callbacks.<name>._target_=<class>"),
        ("+trainer.profiler=bogus", r"Lightning's Trainer refused trainer.profiler='bogus': .*one of \['simple'"),
        ("+trainer.max_time=1h", r"trainer.max_time='1h': .* Give DD:HH:MM:SS"),
        ("+trainer.max_time={hour:1}", r"trainer.max_time=\{'hour': 1\}: .* Give DD:HH:MM:SS"),
    ],
)
def test_refused_with_one_message(compose, tmp_path, override, message):
    cfg = compose("max_iters=4", override)
    with pytest.raises(ConfigError, match=message):
        run.train(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()  # refused in the settings step, before the run lock


class Probe(L.Callback):
    def on_fit_start(self, trainer, pl_module):
        self.seen = {
            "profiler": trainer.profiler,
            "detect_anomaly": trainer._detect_anomaly,
            "min_steps": trainer.fit_loop.min_steps,
        }


def test_other_arguments_reach_the_trainer(compose, tmp_path):
    probe = Probe()
    cfg = compose(
        "max_iters=2",
        "eval_interval=2",
        "+trainer.profiler=simple",
        "+trainer.detect_anomaly=true",
        "+trainer.min_steps=1",
    )
    metrics = run.train(cfg, tmp_path / "run", callbacks=[probe])
    assert metrics["status"] == "ok"
    assert isinstance(probe.seen["profiler"], SimpleProfiler)
    assert probe.seen["detect_anomaly"] is True and probe.seen["min_steps"] == 1


class SlowFirstMicroBatch(L.Callback):
    """Most of each step's time in its first micro-batch: the time limit runs out there."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx % trainer.accumulate_grad_batches == 0:
            time.sleep(0.4)


def test_max_time_stops_a_run_like_any_other_stop(compose, tmp_path):
    """max_time=3 s, accumulation 2, evaluations far apart: the run stops between optimizer steps,
    evaluates the weights it stopped with, saves last.ckpt and writes metrics.json."""
    out = tmp_path / "run"
    cfg = compose(
        "max_iters=100000", "eval_interval=100000", "gradient_accumulation_steps=2", "+trainer.max_time=00:00:00:03"
    )
    metrics = run.train(cfg, out, callbacks=[SlowFirstMicroBatch()])
    steps = metrics["iters"]
    assert 0 < steps < 100000
    assert metrics["status"] == "ok" and metrics["stop_reason"] == "max_time"
    assert metrics["stop_message"].startswith("trainer.max_time=00:00:00:03 reached")
    assert [e["step"] for e in metrics["evals"]] == [0, steps]  # the final evaluation is of the stopped weights
    assert json.loads((out / "metrics.json").read_text())["stop_reason"] == "max_time"
    assert re.match(rf"step {steps}: ", (out / "training.log").read_text().splitlines()[-1])
    ckpt = load_checkpoint(out / "last.ckpt")
    assert ckpt["global_step"] == steps
    # a whole number of optimizer steps: Lightning's own Timer may stop between two micro-batches
    assert ckpt["loops"]["fit_loop"]["epoch_loop.batch_progress"]["total"]["completed"] == 2 * steps
    assert torch.is_tensor(next(iter(ckpt["state_dict"].values())))
