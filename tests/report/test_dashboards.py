"""A real sweep, as a user runs it from the command line, and what it leaves behind: one folder
per run named by what differs, training.log / metrics.json / TensorBoard events in each, the
real TensorBoard server reading them back over HTTP, memory that does not grow from job to job,
and the report."""

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from gptlab.report.report import parse_log

SWEEP = ["experiment=exp3_regularization", "-m", "dropout=0,0.2", "weight_decay=0,0.1"]
# after the tiny settings: 1.6M parameters (weights, gradients and AdamW's two moments: ~26 MB per
# job): a job that kept the previous job's model alive would show in the next job's peak memory
SHRUNK = [
    "n_embd=256",
    "max_iters=20",
    "eval_interval=10",
    "eval_iters=2",
    "eval_sample_tokens=40",
    "sample_tokens=40",
]
RUNS = [
    "0_dropout=0,weight_decay=0",
    "1_dropout=0,weight_decay=0.1",
    "2_dropout=0.2,weight_decay=0",
    "3_dropout=0.2,weight_decay=0.1",
]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, tiny, run_cli):
    cwd = tmp_path_factory.mktemp("sweep_cwd")
    tiny_but_dropout = [o for o in tiny if not o.startswith("dropout=")]  # the sweep sets dropout
    p = run_cli("gptlab.train", *SWEEP, *tiny_but_dropout, *SHRUNK, cwd=cwd)
    assert p.returncode == 0, p.stderr[-3000:]
    (folder,) = (cwd / "outputs" / "exp3_regularization").iterdir()  # outputs/<experiment>/<date>_<time>_<pid>
    return folder


def test_layout_and_files(sweep):
    assert sorted(d.name for d in sweep.iterdir() if d.is_dir()) == RUNS
    summary = json.loads((sweep / "sweep.json").read_text())
    assert (summary["runs"], summary["failed"]) == (4, 0)
    for name in RUNS:
        run = sweep / name
        assert list(run.glob("events.out.tfevents.*")) and (run / "config.yaml").is_file()
        m = json.loads((run / "metrics.json").read_text())
        assert m["status"] == "ok" and m["iters"] == m["max_iters"] == 20
        assert m["tokens_seen"] == 20 * 8 * 32 and m["tokens_per_s"] > 0 and m["wall_time_s"] > 0
        assert m["params"] > 1.5e6 and m["peak_memory_kind"] == "rss" and m["peak_memory_bytes"] > 100e6
        assert (
            m["best_val_loss"] == min(e["val_loss"] for e in m["evals"])
            and m["best_train_loss"] <= m["final_train_loss"]
        )
        assert [s for s, _ in m["train_curve"]] == [5, 10, 15, 20] and len(m["sample"]) > 0
        steps, train, val = parse_log(run / "training.log")
        assert steps == [0, 10, 20] and val[-1] == pytest.approx(m["final_val_loss"], abs=1e-4)


def test_memory_does_not_grow_across_sequential_jobs(sweep):
    peaks = [json.loads((sweep / n / "metrics.json").read_text())["peak_memory_bytes"] for n in RUNS]
    # the first job also pays for what is imported and cached once; from the second on, a job that
    # kept the model, optimizer state or loaders of the one before would add ~26 MB each time
    assert max(peaks[1:]) - min(peaks[1:]) < 15e6, [f"{p / 1e6:.0f} MB" for p in peaks]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str):
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())


def test_tensorboard_serves_the_runs_and_their_tags(sweep):
    port = _free_port()
    tb = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tensorboard.main",
            "--logdir",
            str(sweep),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--reload_interval",
            "1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=os.environ.copy(),
    )
    try:
        base = f"http://127.0.0.1:{port}/data"
        deadline, runs = time.time() + 90, []
        while time.time() < deadline and sorted(runs) != RUNS:
            assert tb.poll() is None, tb.stderr.read()[-2000:]
            try:
                runs = _get(f"{base}/runs")
            except OSError:
                pass
            time.sleep(0.5)
        assert sorted(runs) == RUNS  # runs named by what differs
        scalars = _get(f"{base}/plugin/scalars/tags")
        for name in RUNS:
            assert {
                "train/loss",
                "val/loss",
                "train/lr",
                "train/grad_norm",
                "perf/tokens_per_sec",
                "by_tokens/train_loss",
                "by_tokens/val_loss",
            } <= set(scalars[name]), scalars[name].keys()
        series = _get(f"{base}/plugin/scalars/scalars?run={urllib.request.quote(RUNS[0])}&tag=by_tokens/val_loss")
        assert [row[1] for row in series] == [0, 10 * 8 * 32, 20 * 8 * 32]  # steps are tokens seen
        text = _get(f"{base}/plugin/text/tags")
        assert all(any(t.startswith("samples/eval") for t in text[name]) for name in RUNS), (
            text
        )  # torch adds /text_summary
        req = urllib.request.Request(
            f"{base}/plugin/hparams/experiment",
            data=json.dumps({"experimentName": ""}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=10) as r:
            exp = json.loads(r.read())
        hparams = {h["name"] for h in exp["hparamInfos"]}
        metrics = {m["name"]["tag"] for m in exp["metricInfos"]}
        assert {"dropout", "weight_decay", "learning_rate"} <= hparams
        assert {"hp/best_val_loss", "hp/final_val_loss"} <= metrics
    finally:
        tb.terminate()
        tb.wait(timeout=30)


@pytest.mark.slow
def test_joblib_launcher_runs_jobs_in_parallel_processes(tmp_path, tiny, run_cli):
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    out = tmp_path / "sweep"
    p = run_cli(
        "gptlab.train",
        "-m",
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
        "learning_rate=1e-3,2e-3,-1",
        *tiny,
        "max_iters=10",
        "eval_interval=5",
        f"out_dir={out}",
    )
    assert p.returncode == 1, p.stderr[-3000:]  # the third run's learning rate is refused; the sweep says so
    summary = json.loads((out / "sweep.json").read_text())
    assert [j["status"] for j in summary["jobs"]] == ["ok", "ok", "failed"]
    assert "sweep finished with 1 of 3 runs failed" in p.stderr
    assert "Joblib.Parallel(n_jobs=2" in p.stdout + p.stderr  # Hydra's joblib launcher ran them
    assert all(
        json.loads((out / d / "metrics.json").read_text())["iters"] == 10
        for d in ("0_learning_rate=0.001", "1_learning_rate=0.002")
    )


def test_report_of_the_sweep(sweep, run_cli):
    p = run_cli("gptlab.report", str(sweep))
    assert p.returncode == 0, p.stderr[-3000:]
    text = (sweep / "report.md").read_text()
    assert "## how far does each regularization close the gap between train and val loss?" in text
    assert "**Verdict:** the baseline dropout=0, weight_decay=0" in text
    assert all(f"(`{name}`)" in text for name in RUNS)  # the analysis template, once per run
    assert (sweep / "loss_curves.png").read_bytes()[:4] == b"\x89PNG"
