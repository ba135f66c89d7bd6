"""Sweeps that survive: failed runs do not stop the others, two sweeps started together keep
apart, and an interrupted sweep continues with resume=true."""

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time

import pytest
from hydra.core.utils import JobReturn, JobStatus
from hydra.types import RunMode
from omegaconf import OmegaConf

from gptlab.cli.sweep import SweepReport, clear_failure, job_count, job_line
from gptlab.rundir import write_metrics
from gptlab.training.resume import FINISHED, starting_point
from gptlab.training.run import train


def _start(args, cwd) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "gptlab.train", *args],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=os.environ.copy(),
    )


def _runs(sweep) -> dict:
    return {d.name.split("_")[0]: d for d in sweep.iterdir() if d.is_dir() and not d.name.startswith(".")}


def test_failed_runs_do_not_stop_a_sweep(tiny, compose, tmp_path):
    # run 0 diverges to NaN, run 1 has an impossible learning rate, run 2 is fine; a second sweep
    # starts at the same moment. No out_dir: both get outputs/multirun/<date>/<time>_<pid>
    a = _start(["-m", "learning_rate=1e30,-1,2e-3", "max_iters=20", "eval_interval=10", *tiny], tmp_path)
    b = _start(["-m", "learning_rate=-1", *tiny], tmp_path)
    a_out, a_err = a.communicate(timeout=300)
    _, b_err = b.communicate(timeout=300)

    sweeps = sorted(tmp_path.glob("outputs/multirun/*/*"))
    assert len(sweeps) == 2 and all(re.fullmatch(r"\d\d-\d\d-\d\d_\d+", s.name) for s in sweeps), sweeps
    assert b.returncode == 1 and "learning_rate must be > 0" in b_err

    assert a.returncode == 1, a_err[-3000:]
    # each job announces itself out of the sweep's 3; from the second on, with the time left
    jobs = [line.split("] ", 1)[1] for line in a_out.splitlines() if re.match(r"\[[\d:]+\] job \d", line)]
    assert [j.split(":")[0] for j in jobs] == ["job 1/3", "job 2/3", "job 3/3"], a_out[-3000:]
    assert jobs[0] == "job 1/3: 0_learning_rate=1e+30"
    assert re.fullmatch(r"job 3/3: 2_learning_rate=0.002 \| 2 finished, \d+s each: ETA \d+s", jobs[2]), jobs
    sweep = next(s for s in sweeps if (s / "0_learning_rate=1e+30").is_dir())
    runs = _runs(sweep)
    summary = a_err[a_err.index("sweep finished with 2 of 3 runs failed") :]
    assert f"{runs['0'].resolve()}: diverged: NonFiniteLossError: the training loss became NaN/inf" in summary
    assert f"{runs['1'].resolve()}: failed: ConfigError: learning_rate must be > 0" in summary
    assert str(runs["2"].resolve()) not in summary
    # every run has metrics.json with its status; the diverged one with what it measured before
    diverged = json.loads((runs["0"] / "metrics.json").read_text())
    assert diverged["status"] == "diverged" and diverged["error"].startswith("NonFiniteLossError")
    assert diverged["evals"][0]["step"] == 0 and diverged["params"] > 0
    bad = json.loads((runs["1"] / "metrics.json").read_text())
    assert (
        bad["status"] == "failed"
        and "learning_rate must be > 0" in bad["error"]
        and not (runs["1"] / "best.ckpt").exists()
    )
    report = json.loads((sweep / "sweep.json").read_text())
    assert (report["runs"], report["failed"]) == (3, 2) and [j["status"] for j in report["jobs"]] == [
        "diverged",
        "failed",
        "ok",
    ]

    # the run after two failures in the same process gives what it gives on its own
    alone = train(compose("learning_rate=2e-3", "max_iters=20", "eval_interval=10"), tmp_path / "alone")
    finished = json.loads((runs["2"] / "metrics.json").read_text())
    assert finished["final_val_loss"] == pytest.approx(alone["final_val_loss"], abs=1e-5)
    assert report["jobs"][2]["best_val_loss"] == pytest.approx(alone["best_val_loss"], abs=1e-5)


@pytest.mark.slow
def test_interrupted_sweep_continues_with_resume_true(tiny, tmp_path):
    args = [
        "-m",
        "learning_rate=2e-3,1e-3",
        "max_iters=200",
        "eval_interval=20",
        "always_save_checkpoint=true",
        *tiny,
    ]
    a = _start(args, tmp_path)
    t0 = time.time()
    while not list(tmp_path.glob("outputs/multirun/*/*/1_learning_rate=0.001/last.ckpt")):
        assert a.poll() is None, a.communicate()[1][-3000:]
        assert time.time() - t0 < 240
        time.sleep(0.05)
    a.send_signal(signal.SIGTERM)  # pre-empted while its second run trains
    _, err = a.communicate(timeout=120)
    assert a.returncode == 143, err[-3000:]
    m = re.search(
        r"^stopped: SIGTERM at optimizer step (\d+).*Resume with:\n  (python -m gptlab.train -m .*)$", err, re.M
    )
    assert m, err[-3000:]
    command = shlex.split(m.group(2))
    (sweep,) = tmp_path.glob("outputs/multirun/*/*")
    assert command[-2:] == ["resume=true", f"out_dir={sweep.resolve()}"] and "learning_rate=2e-3,1e-3" in command
    runs = _runs(sweep)
    mtime = (runs["0"] / "metrics.json").stat().st_mtime_ns
    assert not (runs["1"] / "metrics.json").exists()

    # the printed command: the finished run is skipped, the stopped one continues where it stopped
    p = subprocess.run([sys.executable, *command[1:]], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "sweep finished: all 2 runs completed" in p.stdout + p.stderr
    assert (runs["0"] / "metrics.json").stat().st_mtime_ns == mtime  # not retrained
    resumed = json.loads((runs["1"] / "metrics.json").read_text())
    assert resumed["iters"] == 200 and [e["step"] for e in resumed["evals"]] == list(range(0, 201, 20))
    steps = [int(line.split()[1][:-1]) for line in (runs["1"] / "training.log").read_text().splitlines()]
    assert steps == list(range(0, 201, 20))  # continued where it stopped, nothing repeated


def test_resume_true_runs_failed_and_diverged_runs_again(tmp_path):
    for status, again in (("failed", True), ("diverged", True), ("eval_only", True), ("ok", False)):
        (tmp_path / "metrics.json").write_text(json.dumps({"status": status}))
        start = starting_point(tmp_path, "scratch", None, resume=True, overwrite=False, eval_only=False)
        assert (start != FINISHED) == again, status
        clear_failure(tmp_path)  # what a sweep job does before it starts: only a failure record goes
        assert (tmp_path / "metrics.json").exists() == (status in ("ok", "eval_only")), status


def test_resume_true_skips_the_finished_runs_of_a_sweep(tiny, run_cli, tmp_path):
    """The cheap side of the slow test above: a finished 2-job sweep run again with resume=true
    retrains nothing; a job whose metrics.json is missing continues from its checkpoint."""
    sweep = tmp_path / "sweep"
    args = [
        "gptlab.train",
        "-m",
        "learning_rate=1e-3,2e-3",
        "max_iters=4",
        "eval_interval=2",
        *tiny,
        f"out_dir={sweep}",
    ]
    p = run_cli(*args, cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    runs = _runs(sweep)
    assert sorted(runs) == ["0", "1"]
    before = {job: (run / "metrics.json").stat().st_mtime_ns for job, run in runs.items()}
    (runs["1"] / "metrics.json").unlink()  # as if job 1 was stopped after its last checkpoint

    p = run_cli(*args, "resume=true", cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    out = p.stdout + p.stderr
    assert f"resume=true: {runs['0']} already finished" in out and "sweep finished: all 2 runs completed" in out
    assert (runs["0"] / "metrics.json").stat().st_mtime_ns == before["0"]  # not retrained
    again = json.loads((runs["1"] / "metrics.json").read_text())
    assert again["status"] == "ok" and again["iters"] == 4
    steps = [int(line.split()[1][:-1]) for line in (runs["1"] / "training.log").read_text().splitlines()]
    assert steps == [0, 2, 4]  # continued from its step-4 checkpoint: nothing trained twice


def _sweep_config(
    params: dict, task: list[str], sweeper: str = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"
):
    hydra = {"sweeper": {"_target_": sweeper, "params": params}, "overrides": {"task": task}}
    return OmegaConf.create({"hydra": hydra})


def test_job_count_is_the_basic_sweepers_own_expansion():
    # an experiment's declared grid times the command line's sweeps; a swept key given again wins
    assert job_count(_sweep_config({"dropout": "0,0.2", "weight_decay": "0,0.1"}, ["seed=1,2,3"])) == 12
    assert job_count(_sweep_config({"dropout": "0,0.2"}, ["dropout=0.1", "max_iters=5"])) == 1
    assert job_count(_sweep_config({}, ["learning_rate=range(1,4)", "n_layer=choice(2,4)"])) == 6
    optuna = _sweep_config({}, [], sweeper="hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper")
    assert job_count(optuna) is None
    optuna.hydra.sweeper.n_trials = 20
    assert job_count(optuna) == 20


def test_job_line_gives_the_time_left_from_finished_jobs():
    assert job_line(0, 4, "0_a=1", []) == "job 1/4: 0_a=1"
    assert job_line(2, 4, "2_a=3", [60.0, 70.0]) == "job 3/4: 2_a=3 | 2 finished, 1m05s each: ETA 2m10s"
    assert job_line(5, None, "5_x", [10.0]) == "job 6: 5_x"  # a sweeper that does not say how many


def test_resumed_sweeps_time_left_ignores_the_jobs_it_skips(tmp_path):
    """resume=true passes over finished runs in no time; counting them would shrink the time left."""
    report = SweepReport()
    report.total, report.sequential = 2, True
    for num, finished in ((0, True), (1, False)):
        out = tmp_path / f"{num}_job"
        out.mkdir()
        if finished:
            write_metrics(out, {"status": "ok", "best_val_loss": 2.0})
        hydra = {"mode": RunMode.MULTIRUN, "job": {"num": num}, "runtime": {"output_dir": str(out)}}
        cfg = OmegaConf.create({"resume": True, "hydra": hydra})
        report.on_job_start(cfg)
        report.on_job_end(cfg, JobReturn(status=JobStatus.COMPLETED))
    assert len(report.durations) == 1  # only the job that trained
