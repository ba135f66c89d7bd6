"""Runs that must never lose data: eval_only leaves a run's history alone, overwrite clears the
old run before writing, one run per folder, and booleans that are booleans."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from gptlab.errors import ConfigError
from gptlab.rundir import RunLock, clear_run
from gptlab.training.module import GPTModule
from gptlab.training.run import train


def snapshot(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def finished(tmp_path_factory, compose):
    run = tmp_path_factory.mktemp("finished")
    train(compose("max_iters=20", "eval_interval=10"), run)
    return run


def test_eval_only_leaves_a_finished_runs_history_alone(finished, tiny, run_cli):
    before = snapshot(finished)
    p = run_cli("gptlab.train", *tiny, f"out_dir={finished}", "eval_only=true", "resume=true")
    assert p.returncode == 0, p.stderr[-2000:]
    after = snapshot(finished)
    for name, data in before.items():
        if name.parts[0] not in (".lock",):
            assert after[name] == data, f"{name} changed"
    ev = json.loads((finished / "eval.json").read_text())
    m = json.loads((finished / "metrics.json").read_text())
    assert ev["checkpoint"].endswith("best.ckpt") and ev["step"] == m["best_step"]
    assert abs(ev["val_loss"] - m["best_val_loss"]) < 0.05  # the trained weights, not a random model (~4.2)
    assert (finished / ".hydra_eval" / "config.yaml").is_file() and (finished / "eval.log").is_file()


@pytest.mark.parametrize("value", ["no", "yes", "0", "False_"])
def test_booleans_accept_only_true_or_false(compose, tmp_path, value):
    for key in ("overwrite", "eval_only", "compile"):
        with pytest.raises(ConfigError, match=f"{key} must be true or false"):
            train(compose(f"{key}={value}"), tmp_path)
    assert not any(tmp_path.iterdir()) or [p.name for p in tmp_path.iterdir()] == [".lock"]


def test_overwrite_clears_the_earlier_run_first(finished, compose, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    for p in finished.iterdir():
        if p.is_file():
            (run / p.name).write_bytes(p.read_bytes())
    (run / "my_notes.txt").write_text("mine")
    removed = {p.name for p in clear_run(run)}
    assert {"best.ckpt", "last.ckpt", "training.log", "metrics.json", "config.yaml"} <= removed
    kept = sorted(
        p.name for p in run.iterdir() if not p.name.startswith(".") and p.name not in ("console.log", "eval.log")
    )
    assert kept == ["my_notes.txt"]  # Hydra's own logs stay: the new run's lines are going there already
    # a whole new run over the copy: only its own evaluations in training.log
    for p in finished.iterdir():
        if p.is_file():
            (run / p.name).write_bytes(p.read_bytes())
    old_events = {p.name for p in run.glob("events.out.tfevents.*")}
    m = train(compose("max_iters=6", "eval_interval=3", "overwrite=true"), run)
    assert [e["step"] for e in m["evals"]] == [0, 3, 6]
    assert [ln.split(":")[0] for ln in (run / "training.log").read_text().splitlines()] == [
        "step 0",
        "step 3",
        "step 6",
    ]
    assert old_events and not old_events & {p.name for p in run.glob("events.out.tfevents.*")}
    with pytest.raises(ConfigError, match="drop one of them"):
        train(compose("overwrite=true", "init_from=resume"), run)


def test_a_second_run_in_the_same_folder_is_refused(compose, tmp_path):
    with RunLock(tmp_path):
        with pytest.raises(ConfigError, match=rf"in use by another run \(pid {os.getpid()} on"):
            train(compose("max_iters=2"), tmp_path)
    assert not (tmp_path / "training.log").exists()


def test_a_killed_runs_lock_is_taken_over(tmp_path):
    code = (
        f"import time; from gptlab.rundir import RunLock; l = RunLock({str(tmp_path)!r}).__enter__(); "
        "print('held', flush=True); time.sleep(60)"
    )
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "held"
    with pytest.raises(ConfigError, match=f"pid {p.pid}"):
        RunLock(tmp_path).__enter__()
    p.send_signal(signal.SIGKILL)
    p.wait()
    time.sleep(0.1)
    with RunLock(tmp_path):
        assert (tmp_path / ".lock").read_text().startswith(str(os.getpid()))


def test_ckpt_path_alone_continues_the_run(finished, compose, tmp_path):
    run = tmp_path / "more"
    m = train(compose("max_iters=30", "eval_interval=10", f"ckpt_path={finished / 'last.ckpt'}"), run)
    assert m["iters"] == 30 and [e["step"] for e in m["evals"]][-2:] == [20, 30]
    assert 0 not in [e["step"] for e in m["evals"]][2:]  # continued, not started from scratch


def test_ctrl_c_in_the_learning_rate_search_gives_sigint_back(compose, tmp_path, monkeypatch):
    """Lightning ignores SIGINT after a KeyboardInterrupt inside its Tuner (learning_rate=auto runs
    one before training); a sweep's next job, or a notebook, must still stop on Ctrl-C."""

    def interrupted(self, batch, batch_idx):
        raise KeyboardInterrupt

    monkeypatch.setattr(GPTModule, "training_step", interrupted)
    before = signal.getsignal(signal.SIGINT)
    with pytest.raises((SystemExit, KeyboardInterrupt)):
        train(compose("learning_rate=auto", "lr_find.num_steps=20"), tmp_path / "run")
    assert signal.getsignal(signal.SIGINT) is before
