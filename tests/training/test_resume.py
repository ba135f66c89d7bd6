"""Runs that stop and continue: exact resume, SIGINT / SIGTERM / SIGKILL, and what they leave on disk."""

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from gptlab.cli import common as cli
from gptlab.data.datamodule import GPTDataModule
from gptlab.errors import RunInterrupted
from gptlab.rundir import LAST
from gptlab.training.checkpoint import checkpoint_step, load_checkpoint
from gptlab.training.module import GPTModule
from gptlab.training.run import train

# dropout > 0 and gradient accumulation: both RNG streams and the accumulation boundary matter.
# lr_decay_iters is fixed so that a 20-step run follows the 40-step run's schedule.
EXACT = ["dropout=0.1", "gradient_accumulation_steps=2", "eval_interval=10", "warmup_iters=5", "lr_decay_iters=40"]


def log_steps(run_dir) -> list[int]:
    return [
        int(m.group(1))
        for line in (run_dir / "training.log").read_text().splitlines()
        if (m := re.match(r"step (\d+):", line))
    ]


@pytest.fixture(scope="module")
def straight(tmp_path_factory, compose):
    """40 steps without a stop; the training loss of every step in TensorBoard (log_interval=1)."""
    run = tmp_path_factory.mktemp("straight")
    train(compose(*EXACT, "max_iters=40", "log_interval=1"), run)
    return run


def test_resume_matches_an_unbroken_run(straight, compose, tmp_path, tb_events):
    # 20 steps, stop, resume for 20 more: steps 21-40 see the same batches, dropout masks,
    # learning rates and optimizer state as the run that never stopped
    run, step20 = tmp_path / "run", tmp_path / "step20"
    train(compose(*EXACT, "max_iters=20", "log_interval=1"), run)
    step20.mkdir()
    for name in (LAST, "best.ckpt"):
        shutil.copy(run / name, step20 / name)
    metrics = train(compose(*EXACT, "max_iters=40", "log_interval=1", "init_from=resume"), run)
    want = tb_events(straight).scalars("train/batch_loss")
    got = tb_events(run).scalars("train/batch_loss")
    assert sorted(got) == list(range(1, 41))  # TensorBoard steps continue, none repeated
    for step in range(21, 41):
        assert got[step] == pytest.approx(want[step], abs=1e-6), step
    assert tb_events(run).scalars("val/loss") == pytest.approx(tb_events(straight).scalars("val/loss"), abs=1e-6)
    # the losses against tokens seen survive the resumed writer's purge of the stretch after the checkpoint
    assert tb_events(run).scalars("by_tokens/val_loss") == pytest.approx(
        tb_events(straight).scalars("by_tokens/val_loss"), abs=1e-6
    )
    assert log_steps(run) == [0, 10, 20, 30, 40]  # appended, no evaluation repeated
    assert [e["step"] for e in metrics["evals"]] == [0, 10, 20, 30, 40]  # metrics.json covers both parts
    assert metrics["iters"] == 40

    # as if killed after logging steps 21-40 but before any checkpoint after step 20: resuming
    # again (now with a progress line every 20 steps) hides the first copy of those steps in
    # TensorBoard (purge_step) and in training.log
    for name in (LAST, "best.ckpt"):
        shutil.copy(step20 / name, run / name)
    (run / "metrics.json").unlink()
    train(compose(*EXACT, "max_iters=40", "log_interval=20", "resume=true"), run)
    got = tb_events(run).scalars("train/batch_loss")
    assert sorted(got) == [*range(1, 21), 40]
    assert got[40] == pytest.approx(np.mean([want[s] for s in range(21, 41)]), abs=1e-5)
    assert tb_events(run).scalars("val/loss") == pytest.approx(tb_events(straight).scalars("val/loss"), abs=1e-6)
    assert log_steps(run) == [0, 10, 20, 30, 40]


@pytest.mark.parametrize("stop", [23, 30], ids=["between-evaluations", "at-an-evaluation"])
def test_sigint_mid_step_saves_and_resumes_exactly(straight, compose, tmp_path, monkeypatch, tb_events, stop):
    # Ctrl+C arrives during the first micro-batch of a step: the step (and its evaluation, when
    # one is due) is finished, saved, and the run stops; the resumed run's progress lines average
    # the same steps as the unbroken run's, and its evaluations are the same
    real_step = GPTModule.training_step

    def step_with_ctrl_c(self, batch, batch_idx):
        if self.global_step == stop - 1 and batch_idx % 2 == 0:
            signal.raise_signal(signal.SIGINT)
        return real_step(self, batch, batch_idx)

    monkeypatch.setattr(GPTModule, "training_step", step_with_ctrl_c)
    with pytest.raises(RunInterrupted, match=rf"SIGINT at optimizer step {stop}: .*resume=true out_dir=") as e:
        train(compose(*EXACT, "max_iters=40", "log_interval=5"), tmp_path)
    assert e.value.exit_code == 130
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handlers given back
    assert checkpoint_step(tmp_path / LAST) == stop and not (tmp_path / "metrics.json").exists()

    monkeypatch.setattr(GPTModule, "training_step", real_step)
    train(compose(*EXACT, "max_iters=40", "log_interval=5", "resume=true"), tmp_path)
    per_step = tb_events(straight).scalars("train/batch_loss")
    got = tb_events(tmp_path).scalars("train/batch_loss")
    assert sorted(got) == [5, 10, 15, 20, 25, 30, 35, 40]
    for step in got:  # step 25 averages steps 21-25, some of them from before the stop
        assert got[step] == pytest.approx(np.mean([per_step[s] for s in range(step - 4, step + 1)]), abs=1e-5), step
    assert tb_events(tmp_path).scalars("val/loss") == pytest.approx(tb_events(straight).scalars("val/loss"), abs=1e-6)
    assert log_steps(tmp_path) == [0, 10, 20, 30, 40]


def _start(*args, cwd) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "gptlab.train", *args],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=os.environ.copy(),
    )


def _wait_for(path, proc, timeout=120.0) -> None:
    t0 = time.time()
    while not path.is_file():
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.time() - t0 < timeout, f"{path} did not appear"
        time.sleep(0.05)


def test_sigkill_leaves_a_loadable_checkpoint_and_resume_completes(tiny, compose, tmp_path):
    run = tmp_path / "run"
    args = [*tiny, "max_iters=100000", "eval_interval=5", "always_save_checkpoint=true", f"out_dir={run}"]
    p = _start(*args, cwd=tmp_path)
    _wait_for(run / LAST, p)
    time.sleep(0.5)  # let it run on past the first checkpoint, writing more of them
    p.kill()  # SIGKILL: no handler runs, no cleanup
    p.communicate()
    step = checkpoint_step(run / LAST)
    assert step >= 5 and step % 5 == 0 and "optimizer_states" in load_checkpoint(run / LAST)
    (run / ".last.ckpt.x1y2z3.tmp").write_bytes(b"half a checkpoint")  # as a kill mid-write leaves
    assert not (run / "metrics.json").exists()

    metrics = train(
        compose(f"max_iters={step + 5}", "eval_interval=5", "always_save_checkpoint=true", "resume=true"), run
    )
    assert metrics["iters"] == step + 5
    assert log_steps(run) == list(range(0, step + 6, 5))
    assert not list(run.glob(".*.tmp"))  # the leftover of the cut write is gone


def test_sigterm_saves_and_prints_the_command_that_resumes(tiny, tmp_path):
    run = tmp_path / "run"
    p = _start(*tiny, "max_iters=100000", "eval_interval=5", "learning_rate=2e-3", f"out_dir={run}", cwd=tmp_path)
    _wait_for(run / "best.ckpt", p)
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 143, err[-3000:]  # 128 + SIGTERM: not finished
    m = re.search(
        r"^stopped: SIGTERM at optimizer step (\d+): .*Resume with:\n  (python -m gptlab.train .*)$", err, re.M
    )
    assert m, err[-3000:]
    step, command = int(m.group(1)), shlex.split(m.group(2))
    assert checkpoint_step(run / LAST) == step and not (run / "metrics.json").exists()
    assert "learning_rate=2e-3" in command and command[-2:] == ["resume=true", f"out_dir={run}"]

    # the printed command's settings, with a nearer end so that the test finishes (in process: the
    # command line itself is exercised by the sweep test)
    overrides = [a if not a.startswith("max_iters=") else f"max_iters={step + 3}" for a in command[3:]]
    metrics = train(compose_cli(overrides), run)
    assert metrics["iters"] == step + 3 and (run / "metrics.json").is_file()
    assert log_steps(run)[-1] == step + 3 and len(set(log_steps(run))) == len(log_steps(run))


def compose_cli(args: list[str]):
    return cli.compose("train", cli.translate_argv(args))


def test_sampler_state_replays_the_prefetched_batch_and_ranks_stay_apart(data_root):
    d = data_root / "shakespeare_char"
    first = GPTDataModule(d, block_size=16, batch_size=4, seed=7)
    first.setup()
    drawn, _ = first._train.sample()  # drawn ahead by Lightning's fetcher, not trained on yet
    state = first.state_dict()

    class Rank1:
        global_rank = 1

        class accelerator:  # noqa: N801
            pass

    again, other = GPTDataModule(d, 16, 4, seed=7), GPTDataModule(d, 16, 4, seed=7)
    other.trainer = Rank1()
    for dm in (again, other):
        dm.setup()
        dm.load_state_dict(state)
    assert torch.equal(again._train.sample()[0], drawn)  # the resumed run trains on it
    assert not torch.equal(other._train.sample()[0], drawn)  # another DDP rank keeps its own windows


def test_resume_true_leaves_a_finished_run_alone(straight, compose):
    def files():  # the lock file is the one thing a run in the folder writes (its pid)
        return {p.name: p.stat().st_mtime_ns for p in straight.iterdir() if p.name != ".lock"}

    before = files()
    metrics = train(compose(*EXACT, "max_iters=40", "log_interval=1", "resume=true"), straight)
    assert metrics["iters"] == 40  # read from its metrics.json
    assert files() == before  # nothing trained or rewritten
