"""Resumes that change settings, move folders, follow an overwrite or only evaluate: what they
refuse, apply, record and leave alone (docs/reliability.md, "Resuming with changed settings")."""

import json
import re
import shutil
import signal

import pytest

from gptlab.errors import ConfigError, RunInterrupted
from gptlab.rundir import BEST, LAST, parse_log
from gptlab.training.checkpoint import checkpoint_step
from gptlab.training.module import GPTModule
from gptlab.training.run import train

BASE = ["eval_interval=5", "lr_decay_iters=30", "warmup_iters=2"]
GUIDE_RE = re.compile(r"step (\d+): train loss ([\d.]+), val loss ([\d.]+)")  # the guide's plot_loss.py


def files(run_dir) -> dict:
    """Every file of a run folder and its bytes (the lock file holds the latest writer's pid)."""
    return {p.name: p.read_bytes() for p in run_dir.rglob("*") if p.is_file() and p.name != ".lock"}


def log_steps(run_dir) -> list[int]:
    return [
        int(m.group(1)) for line in (run_dir / "training.log").read_text().splitlines() if (m := GUIDE_RE.search(line))
    ]


def stop_at(monkeypatch, step: int) -> None:
    """A SIGTERM during optimizer step `step` (in process, as a scheduler's would arrive)."""
    real = GPTModule.training_step

    def training_step(self, batch, batch_idx):
        if self.global_step == step - 1:
            signal.raise_signal(signal.SIGTERM)
        return real(self, batch, batch_idx)

    monkeypatch.setattr(GPTModule, "training_step", training_step)


@pytest.fixture(scope="module")
def finished(tmp_path_factory, compose):
    """A run of 10 steps with learning_rate=1e-3, finished."""
    run = tmp_path_factory.mktemp("finished")
    train(compose(*BASE, "max_iters=10", "learning_rate=1e-3"), run)
    return run


@pytest.mark.parametrize(
    "key,old,new", [("learning_rate", 1e-3, 5e-3), ("weight_decay", 0.1, 0.0), ("beta1", 0.9, 0.8)]
)
def test_optimizer_held_settings_are_refused_before_anything_is_written(finished, compose, key, old, new):
    before = files(finished)
    with pytest.raises(ConfigError) as e:
        train(compose(*BASE, "max_iters=20", "learning_rate=1e-3", f"{key}={new}", "init_from=resume"), finished)
    assert f"{key} (checkpoint {old}, now {new})" in str(e.value)
    assert e.value.exit_code == 2
    assert files(finished) == before  # training.log, config.yaml, checkpoints, events: as they were


def test_changed_settings_apply_and_every_resume_is_recorded(compose, tmp_path, monkeypatch):
    stop_at(monkeypatch, 7)
    with pytest.raises(RunInterrupted):
        train(compose(*BASE, "max_iters=10"), tmp_path)
    monkeypatch.undo()
    assert checkpoint_step(tmp_path / LAST) == 7

    first = train(compose(*BASE, "max_iters=15", "resume=true"), tmp_path)
    assert first["iters"] == 15 and first["max_iters"] == 15  # applied: it trained on to the new end
    assert first["resumes"] == [{"step": 7, "changed": {"max_iters": [10, 15]}}]

    second = train(compose(*BASE, "max_iters=20", "grad_clip=0.5", "init_from=resume"), tmp_path)
    assert second["iters"] == 20
    assert second["resumes"] == [
        {"step": 7, "changed": {"max_iters": [10, 15]}},
        {"step": 15, "changed": {"grad_clip": [1.0, 0.5], "max_iters": [15, 20]}},
    ]
    assert json.loads((tmp_path / "metrics.json").read_text())["resumes"] == second["resumes"]

    lines = (tmp_path / "training.log").read_text().splitlines()
    notes = [ln for ln in lines if ln.startswith("#")]
    assert notes == [
        "# resumed at step 7 with max_iters=15 (was 10)",
        "# resumed at step 15 with grad_clip=0.5 (was 1.0), max_iters=20 (was 15)",
    ]
    assert not any(GUIDE_RE.search(n) for n in notes)  # the guide's parse_log skips them
    assert log_steps(tmp_path) == parse_log(tmp_path / "training.log")[0] == [0, 5, 10, 15, 20]
    assert lines.index(notes[0]) == 2 and lines.index(notes[1]) == 5  # each after the step it resumed from


def test_a_moved_run_folder_keeps_its_best_checkpoint(finished, compose, tmp_path, monkeypatch):
    # every evaluation after the resume is worse than the best before it: best.ckpt must stay
    moved = tmp_path / "moved"
    shutil.copytree(finished, moved)
    original = files(finished)
    best_step = json.loads((finished / "metrics.json").read_text())["best_step"]
    assert checkpoint_step(finished / BEST) == best_step
    real = GPTModule.validation_step

    def worse_after_resume(self, batch, batch_idx, dataloader_idx=0):
        real(self, batch, batch_idx, dataloader_idx)
        if self.global_step > 10:
            self._eval_sums[dataloader_idx][0] += 10.0

    monkeypatch.setattr(GPTModule, "validation_step", worse_after_resume)
    metrics = train(compose(*BASE, "max_iters=20", "learning_rate=1e-3", "init_from=resume"), moved)
    assert [e["step"] for e in metrics["evals"]] == [0, 5, 10, 15, 20]
    assert metrics["best_step"] == best_step == checkpoint_step(moved / BEST)
    assert checkpoint_step(moved / LAST) == 20
    assert files(finished) == original  # the folder it was copied from is not touched


def test_a_stopped_overwrite_run_resumes_from_its_own_checkpoint(compose, tmp_path, monkeypatch):
    train(compose(*BASE, "max_iters=20", "learning_rate=2e-3", "always_save_checkpoint=true"), tmp_path)
    old_log = (tmp_path / "training.log").read_text()
    stop_at(monkeypatch, 7)
    with pytest.raises(RunInterrupted):
        train(compose(*BASE, "max_iters=10", "learning_rate=1e-3", "overwrite=true"), tmp_path)
    monkeypatch.undo()
    assert checkpoint_step(tmp_path / LAST) == 7 and checkpoint_step(tmp_path / BEST) == 5
    assert log_steps(tmp_path) == [0, 5]
    stopped_log = (tmp_path / "training.log").read_text()

    # the old run's learning rate would be refused, and its metrics.json would say "finished"
    metrics = train(compose(*BASE, "max_iters=10", "learning_rate=1e-3", "resume=true"), tmp_path)
    assert metrics["iters"] == 10 and "resumes" not in metrics
    assert log_steps(tmp_path) == [0, 5, 10]
    resumed_log = (tmp_path / "training.log").read_text()
    assert resumed_log.startswith(stopped_log)  # the new run's lines, continued
    assert old_log.splitlines()[1] not in resumed_log  # none of the old run's (step 0 is alike: same seed)


def test_eval_only_with_resume_true_writes_eval_json_only(finished, compose, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    before = files(run)
    result = train(compose(*BASE, "max_iters=10", "learning_rate=1e-3", "eval_only=true", "resume=true"), run)
    after = files(run)
    assert set(after) - set(before) == {"eval.json"}
    assert {k: v for k, v in after.items() if k != "eval.json"} == before  # no step 0 line, no new events
    assert result["step"] == checkpoint_step(run / BEST) == json.loads(after["eval.json"])["step"]
    assert log_steps(run) == [0, 5, 10]
