"""Two-process DDP on the CPU (gloo), through Lightning's launcher, as a user runs it."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gptlab.errors import ConfigError
from gptlab.training.run import train

HERE = Path(__file__).parent
# global batch per optimizer step: 8 sequences x 2 micro-batches x 2 processes = 32 (DDP) and
# 16 x 2 x 1 = 32 (one process); after the tiny settings
COMMON = [
    "max_iters=30",
    "eval_interval=10",
    "eval_iters=10",
    "learning_rate=1e-2",
    "gradient_accumulation_steps=2",
]


def test_ddp_two_processes_match_one_process_with_the_same_global_batch(tmp_path, tiny, compose, tb_events):
    ddp_run, single_run = tmp_path / "ddp", tmp_path / "single"
    args = [*tiny, *COMMON, "trainer=ddp", "trainer.devices=2", "batch_size=8"]
    # a script of ours as __main__: Lightning starts rank 1 by running it again with the same argv
    p = subprocess.run(
        [sys.executable, str(HERE / "ddp_driver.py"), str(ddp_run), *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=os.environ.copy(),
    )
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    single = train(compose(*COMMON, "batch_size=16"), single_run)

    # the global batch counts both processes, and the line is printed by rank 0 only
    out = p.stdout + p.stderr
    assert out.count("tokens per optimizer step: 8 batch x 32 block x 2 accum x 2 process(es) = 1,024") == 1
    assert out.count("step 30: train loss") == 1

    r0, r1 = (json.loads((ddp_run / f"probe_rank{r}.json").read_text()) for r in (0, 1))
    assert r0["world_size"] == r1["world_size"] == 2
    assert r0["first_batch"] != r1["first_batch"]  # the ranks draw different windows
    assert r0["weights"] == r1["weights"]  # gradients were averaged: the replicas stayed identical
    # one gradient all-reduce per optimizer step: none on the first micro-batch of each pair
    assert r0["optimizer_steps"] == r1["optimizer_steps"] == 30
    assert r0["allreduces"] == r1["allreduces"] == 30

    # only rank 0 wrote: one set of run files, TensorBoard events from one process
    assert len({f.name.rsplit(".", 2)[-2] for f in ddp_run.glob("events.out.tfevents.*")}) == 1
    assert (ddp_run / "training.log").read_text().count("step 30:") == 1
    ddp = json.loads((ddp_run / "metrics.json").read_text())

    # Same learning-rate schedule per optimizer step, exactly.
    assert tb_events(ddp_run).scalars("train/lr") == tb_events(single_run).scalars("train/lr")
    # The loss curves. Both start from the same weights, but the two ranks draw other windows than
    # the one process does, so the runs see different data: they agree on the untrained loss to
    # evaluation noise, stay within the spread that different batches cause (largest in the fast
    # first steps at this learning rate, ~0.2), and end within a few hundredths. A DDP run that
    # summed the evaluation over ranks, skipped steps or diverged would be off by far more.
    d, s = ddp["evals"], single["evals"]
    assert [e["step"] for e in d] == [e["step"] for e in s] == [0, 10, 20, 30]
    for split in ("train_loss", "val_loss"):
        assert abs(d[0][split] - s[0][split]) < 0.02
        assert all(abs(a[split] - b[split]) < 0.3 for a, b in zip(d, s))
        assert abs(d[-1][split] - s[-1][split]) < 0.1
        assert d[-1][split] < d[0][split] - 0.7  # it learned: 4.17 at random


def test_fsdp_and_device_counts_are_checked_up_front(compose):
    with pytest.raises(ConfigError, match="trainer=fsdp needs CUDA GPUs"):
        train(compose("trainer=fsdp"), "unused")
    with pytest.raises(ConfigError, match="trainer.devices must be a number of processes"):
        train(compose("trainer=ddp", "trainer.devices=auto"), "unused")


@pytest.mark.slow
def test_ddp_inside_a_multirun(tmp_path, tiny, run_cli):
    """Each job of a sweep starts its own ranks, as a single run of that job's settings."""
    out = tmp_path / "sweep"
    p = run_cli(
        "gptlab.train",
        "-m",
        "trainer=ddp",
        "learning_rate=1e-3,1e-2",
        "max_iters=10",
        "eval_interval=10",
        *tiny,
        f"out_dir={out}",
        cwd=tmp_path,
    )
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    jobs = sorted(d.name for d in out.iterdir() if d.is_dir())
    assert jobs == ["0_learning_rate=0.001", "1_learning_rate=0.01"]
    finals = []
    for job in jobs:
        metrics = json.loads((out / job / "metrics.json").read_text())
        finals.append(metrics["final_val_loss"])
        config = (out / job / "config.yaml").read_text()
        assert "strategy: ddp" in config
        # rank 1 logged nothing: each line once in the job's console.log
        assert (out / job / "console.log").read_text().count("tokens per optimizer step") == 1
    assert finals[0] != finals[1]  # the jobs really ran their own learning rates
    assert p.stdout.count("x 2 process(es)") == 2  # both jobs ran with two processes
    assert not (tmp_path / "outputs").exists()  # the ranks made no folders of their own
