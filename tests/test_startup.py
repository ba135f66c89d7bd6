"""Start-up: what a command imports before it needs it, and the time from the command to step 0
(gptlab/startup.py, docs/performance.md "Start-up")."""

import json
import subprocess
import sys

from gptlab import startup

HEAVY = ("lightning", "torchmetrics", "matplotlib.pyplot", "transformers", "torch.utils.tensorboard")


def _modules_after(code: str) -> set[str]:
    """The heavy modules present after running code in a fresh interpreter."""
    out = subprocess.run(
        [sys.executable, "-c", f"{code}\nimport sys\nprint(' '.join(m for m in {HEAVY!r} if m in sys.modules))"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    return set(out.stdout.split())


def test_import_of_the_train_entry_loads_no_lightning():
    assert _modules_after("import gptlab.train") == set()


def test_a_refused_override_never_imports_lightning():
    code = (
        "from gptlab.cli.train import main\n"
        "try:\n    main(['max_iters=abc'])\nexcept SystemExit as e:\n    assert e.code == 2, e.code"
    )
    assert _modules_after(code) == set()


def test_lightning_in_a_gptlab_command_skips_matplotlib_and_transformers():
    # torchmetrics, imported by Lightning, would import both when installed (both are, in dev)
    assert _modules_after("import gptlab.cli, lightning") == {"lightning", "torchmetrics"}


def test_clock_phases_add_up_to_the_total():
    clock = startup.StartupClock(0.0, "command")
    clock._last = 0.0
    clock.mark("imports")
    total = clock.ready("trainer")
    assert abs(sum(clock.phases.values()) - total) < 1e-9
    assert clock.line().startswith(f"ready in {total:.1f} s (command to step 0: imports")
    assert startup.process_age() is None or startup.process_age() > 0


def test_startup_s_in_metrics_json(run_cli, tiny, tmp_path):
    out = run_cli("gptlab.train", *tiny, f"out_dir={tmp_path}")
    assert out.returncode == 0, out.stderr[-2000:]
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert m["startup_s"] > 0
    assert set(m["startup_phases_s"]) >= {"imports", "config", "data", "model", "step-0 eval"}
    assert "ready in" in (tmp_path / "console.log").read_text()
