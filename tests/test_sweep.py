"""Sweeps that survive: failed runs do not stop the others, an interrupted sweep continues with
resume=true, and two sweeps started together keep apart."""

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time

import pytest

from conftest import TINY
from gptlab.train import train

SWEEP = ["-m", "learning_rate=1e30,-1,2e-3,1e-3", "max_iters=200", "eval_interval=10", "always_save_checkpoint=true"]


def _start(args, cwd) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "gptlab.train", *args], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=os.environ.copy())


def test_sweep_survives_failures_and_resumes(data_root, compose, tmp_path):
    # no out_dir: the sweeps get outputs/multirun/<date>/<time>_<pid> under tmp_path
    a = _start([*SWEEP, *TINY, f"data.root={data_root}"], cwd=tmp_path)
    b = _start(["-m", "learning_rate=-1", *TINY, f"data.root={data_root}"], cwd=tmp_path)  # started with it
    t0 = time.time()
    while not list(tmp_path.glob("outputs/multirun/*/*/3_learning_rate=0.001/last.ckpt")):
        assert a.poll() is None, a.communicate()[1][-3000:]
        assert time.time() - t0 < 240
        time.sleep(0.05)
    a.send_signal(signal.SIGTERM)  # pre-empted while its last run trains
    _, a_err = a.communicate(timeout=120)
    _, b_err = b.communicate(timeout=120)

    # two sweeps, two folders
    sweeps = sorted(tmp_path.glob("outputs/multirun/*/*"))
    assert len(sweeps) == 2 and all(re.fullmatch(r"\d\d-\d\d-\d\d_\d+", s.name) for s in sweeps), sweeps
    assert b.returncode == 1 and "learning_rate must be > 0" in b_err

    # the interrupted sweep: runs 0 and 1 failed without stopping it, run 2 finished, run 3 stopped
    assert a.returncode == 143, a_err[-3000:]
    m = re.search(r"^stopped: SIGTERM at optimizer step (\d+).*Resume with:\n  (python -m gptlab.train -m .*)$", a_err, re.M | re.S)
    assert m, a_err[-3000:]
    command = shlex.split(m.group(2).splitlines()[0])
    sweep = next(s for s in sweeps if f"out_dir={s.resolve()}" in command)
    runs = {d.name.split("_")[0]: d for d in sweep.iterdir() if d.is_dir() and not d.name.startswith(".")}
    assert json.loads((runs["0"] / "failed.json").read_text())["type"] == "NonFiniteLossError"
    assert json.loads((runs["1"] / "failed.json").read_text())["type"] == "ConfigError"
    finished = (runs["2"] / "metrics.json").read_text()
    assert not (runs["3"] / "metrics.json").exists()

    # the run that finished after two failures in the same process equals the same run on its own
    alone = train(compose("learning_rate=2e-3", "max_iters=200", "eval_interval=10"), tmp_path / "alone")
    assert json.loads(finished)["final_val_loss"] == pytest.approx(alone["final_val_loss"], abs=1e-5)

    # resume=true: the finished run is skipped, the stopped one continues, the failed ones are
    # tried again; the sweep ends with the list of failures and exit status 1
    mtime = (runs["2"] / "metrics.json").stat().st_mtime_ns
    p = subprocess.run([sys.executable, *command[1:]], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert p.returncode == 1, p.stderr[-3000:]
    summary = p.stderr[p.stderr.index("sweep finished with 2 of 4 runs failed"):]
    assert f"{runs['0']}: NonFiniteLossError: the training loss became NaN/inf" in summary
    assert f"{runs['1']}: ConfigError: learning_rate must be > 0" in summary
    assert (runs["2"] / "metrics.json").stat().st_mtime_ns == mtime  # skipped, not retrained
    resumed = json.loads((runs["3"] / "metrics.json").read_text())
    assert resumed["iters"] == 200 and [e["step"] for e in resumed["evals"]] == list(range(0, 201, 10))
    steps = [int(line.split()[1][:-1]) for line in (runs["3"] / "training.log").read_text().splitlines()]
    assert steps == list(range(0, 201, 10))  # continued where it stopped, nothing repeated
    report = json.loads((sweep / "sweep.json").read_text())
    assert report["runs"] == 4 and report["failed"] == 2
