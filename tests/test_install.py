"""gptlab as a user gets it: the wheel (not the repository's src/ and conf/) holds every package
and config file, and an installed copy runs its commands from another folder."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
tomllib = pytest.importorskip("tomllib")  # Python >= 3.11


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel built from a copy of the project's files, so the build leaves nothing in the repository."""
    tmp = tmp_path_factory.mktemp("wheel")
    copy = tmp / "gptlab"
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
    for name in ("src", "conf"):
        shutil.copytree(ROOT / name, copy / name, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, copy / name)
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", str(copy), "-w", tmp]
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    (found,) = tmp.glob("gptlab-*.whl")
    return found


def test_the_wheel_holds_every_package_and_config_file(wheel):
    listed = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    # gptlab, and the Optuna sweeper in the hydra_plugins namespace package (no __init__.py of its own)
    on_disk = {".".join(p.parent.relative_to(ROOT / "src").parts) for p in (ROOT / "src").rglob("__init__.py")}
    missing = on_disk - set(listed)
    assert not missing, f"add {sorted(missing)} to [tool.setuptools] packages in pyproject.toml"
    names = set(zipfile.ZipFile(wheel).namelist())
    for pkg in set(listed) - {"gptlab.conf"}:
        assert pkg.replace(".", "/") + "/__init__.py" in names, f"{pkg} is listed but not in the wheel"
    modules = {p.relative_to(ROOT / "src").as_posix() for p in (ROOT / "src").rglob("*.py")}
    assert modules <= names
    configs = {"gptlab/conf/" + p.relative_to(ROOT / "conf").as_posix() for p in (ROOT / "conf").rglob("*.yaml")}
    assert "gptlab/conf/train.yaml" in configs and configs <= names
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "gptlab = gptlab.__main__:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


@pytest.mark.slow
def test_an_installed_copy_runs_from_another_folder(wheel, tmp_path):
    site = tmp_path / "site"
    pip = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), str(wheel)]
    subprocess.run(pip, check=True, capture_output=True, text=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    # the project's dependencies come from this venv, gptlab only from the installed wheel
    env = {**os.environ, "PYTHONPATH": str(site)}

    def run(*args: str) -> str:
        p = subprocess.run(args, cwd=elsewhere, env=env, capture_output=True, text=True, timeout=600)
        assert p.returncode == 0, p.stdout + p.stderr
        return p.stdout

    where = run(sys.executable, "-c", "import gptlab, gptlab.cli.common as c; print(gptlab.__file__, c.CONF_DIR)")
    assert all(Path(w).is_relative_to(site) for w in where.split()), where
    assert "train" in run(str(site / "bin" / "gptlab"), "--help")
    job = run(sys.executable, "-m", "gptlab.train", "--cfg", "job", "profile=cpu")
    assert "n_layer: 4" in job and "batch_size: 12" in job  # conf/model/cpu.yaml and conf/recipe/cpu.yaml
    run_dir = tmp_path / "run"
    run(
        str(site / "bin" / "gptlab"),
        "train",
        "max_iters=20",
        "eval_interval=10",
        "warmup_iters=5",
        "n_layer=2",
        "n_head=2",
        "n_embd=32",
        "block_size=32",
        "batch_size=4",
        "eval_iters=2",
        "device=cpu",
        f"data.root={tmp_path / 'data'}",
        f"out_dir={run_dir}",
    )
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "ok" and metrics["iters"] == 20
    assert metrics["best_val_loss"] < metrics["evals"][0]["val_loss"]
