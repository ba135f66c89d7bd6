"""SLURM's warning signals (SIGUSR1, submitit's SIGUSR2) stop a run as SIGTERM does -- the step
finished, last.ckpt saved, exit status 128 + signal -- and are then passed on to the job
scheduler's requeue handler; the requeued command continues with resume=true."""

import re
import signal

import pytest

from gptlab.errors import RunInterrupted
from gptlab.rundir import LAST
from gptlab.training.checkpoint import checkpoint_step
from gptlab.training.module import GPTModule
from gptlab.training.run import cluster_plugins, train

ARGS = ["gradient_accumulation_steps=2", "eval_interval=5", "lr_decay_iters=10", "max_iters=10"]


def signal_during_step(monkeypatch, signum: int, step: int) -> None:
    """The signal arrives during the first micro-batch of optimizer step `step`."""
    real = GPTModule.training_step

    def training_step(self, batch, batch_idx):
        if self.global_step == step - 1 and batch_idx % 2 == 0:
            signal.raise_signal(signum)
        return real(self, batch, batch_idx)

    monkeypatch.setattr(GPTModule, "training_step", training_step)


@pytest.fixture
def requeue_handler():
    """A scheduler's handler (as submitit's for USR2): records the checkpoint it found, then exits."""
    calls = []
    previous = {s: signal.getsignal(s) for s in (signal.SIGUSR1, signal.SIGUSR2)}

    def handler(signum, frame):
        calls.append((signum, checkpoint_step(handler.run_dir / LAST)))
        raise SystemExit(-1)  # submitit's requeue ends the process

    yield handler, calls
    for s, h in previous.items():
        signal.signal(s, h)


def test_sigusr1_saves_passes_the_signal_on_and_resumes(compose, tmp_path, monkeypatch, requeue_handler):
    handler, calls = requeue_handler
    handler.run_dir = tmp_path
    signal.signal(signal.SIGUSR1, handler)
    signal_during_step(monkeypatch, signal.SIGUSR1, 7)
    with pytest.raises(RunInterrupted, match=r"SIGUSR1 at optimizer step 7: ") as e:
        train(compose(*ARGS), tmp_path)
    assert e.value.exit_code == 128 + signal.SIGUSR1
    assert calls == [(signal.SIGUSR1, 7)]  # the requeue came after the checkpoint of the finished step
    assert signal.getsignal(signal.SIGUSR1) is handler  # given back
    assert not (tmp_path / "metrics.json").exists()

    monkeypatch.undo()
    metrics = train(compose(*ARGS, "resume=true"), tmp_path)  # what the requeued job runs
    assert metrics["iters"] == 10
    steps = [int(m.group(1)) for m in re.finditer(r"^step (\d+):", (tmp_path / "training.log").read_text(), re.M)]
    assert steps == [0, 5, 10]


def test_sigusr2_without_a_scheduler_handler_saves_and_stops(compose, tmp_path, monkeypatch):
    assert signal.getsignal(signal.SIGUSR2) is signal.SIG_DFL
    signal_during_step(monkeypatch, signal.SIGUSR2, 3)
    with pytest.raises(RunInterrupted, match=r"SIGUSR2 at optimizer step 3: ") as e:
        train(compose(*ARGS), tmp_path)
    assert e.value.exit_code == 128 + signal.SIGUSR2
    assert checkpoint_step(tmp_path / LAST) == 3
    assert signal.getsignal(signal.SIGUSR2) is signal.SIG_DFL


def test_lightnings_slurm_auto_requeue_is_off_under_slurm(monkeypatch):
    for k in ("SLURM_NTASKS", "SLURM_JOB_NAME"):
        monkeypatch.delenv(k, raising=False)
    assert cluster_plugins() == []
    monkeypatch.setenv("SLURM_NTASKS", "1")
    monkeypatch.setenv("SLURM_JOB_NAME", "train")
    (env,) = cluster_plugins()
    assert env.auto_requeue is False  # no SIGUSR1 handler of Lightning's, no hpc_ckpt_N.ckpt files
