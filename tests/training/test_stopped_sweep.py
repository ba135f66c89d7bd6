"""A sweep stopped by a signal still writes sweep.json: the runs so far, the interrupted one stopped."""

import json
import os
import signal
import subprocess
import sys
import time


def test_a_stopped_sweep_writes_its_summary(tiny, tmp_path):
    sweep = tmp_path / "sweep"
    # job 0 finishes, job 1 trains until it is stopped, job 2 never starts
    args = ["-m", "max_iters=10,100000,10", "eval_interval=5", *tiny, f"out_dir={sweep}"]
    p = subprocess.Popen(
        [sys.executable, "-m", "gptlab.train", *args],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=os.environ.copy(),
    )
    log = sweep / "1_max_iters=100000" / "training.log"
    t0 = time.time()
    while not (log.is_file() and log.read_text()):  # its step-0 evaluation is done: it trains
        assert p.poll() is None, p.communicate()[1][-3000:]
        assert time.time() - t0 < 120
        time.sleep(0.05)
    time.sleep(1.0)
    p.send_signal(signal.SIGTERM)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 143, err[-3000:]

    summary = json.loads((sweep / "sweep.json").read_text())
    assert summary["stopped"] is True and (summary["runs"], summary["failed"]) == (2, 1)
    first, second = summary["jobs"]
    assert first["status"] == "ok" and first["best_val_loss"] > 0 and first["overrides"][0] == "max_iters=10"
    assert second["status"] == "stopped" and second["dir"] == str((sweep / "1_max_iters=100000").resolve())
    assert "sweep stopped: 1 of the 2 runs started finished" in out + err
