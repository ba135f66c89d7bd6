"""Shared fixtures. Tests read Tiny Shakespeare and GPT-2's BPE files from local copies: set
GPTLAB_DATA_MIRROR and TIKTOKEN_CACHE_DIR (as .ci/run does), or keep the default ../shared."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_shared = ROOT.parent / "shared"
if _shared.is_dir():
    os.environ.setdefault("GPTLAB_DATA_MIRROR", str(_shared / "data"))
    os.environ.setdefault("TIKTOKEN_CACHE_DIR", str(_shared / "tiktoken_cache"))

# A model small enough that a few dozen steps take a few seconds on 2 cores.
TINY = [
    "n_layer=2",
    "n_head=2",
    "n_embd=32",
    "block_size=32",
    "batch_size=8",
    "dropout=0.0",
    "eval_iters=4",
    "log_interval=5",
    "warmup_iters=2",
    "sample_tokens=0",
    "eval_sample_tokens=0",
    "profile=none",
    "device=cpu",
]


@pytest.fixture(scope="session")
def data_root(tmp_path_factory) -> Path:
    """A data root with Tiny Shakespeare prepared char-level (once per test session)."""
    from gptlab.data.dataset import DataSpec, prepare_dataset

    root = tmp_path_factory.mktemp("data")
    prepare_dataset(
        DataSpec(name="shakespeare_char", root=str(root), source="tinyshakespeare", tokenizer="char"),
        log=lambda m: None,
    )
    return root


@pytest.fixture
def compose(data_root):
    """compose(*overrides) -> the real train config, shrunk to the tiny model, data in data_root."""
    from gptlab.cli.common import compose as _compose

    def _c(*overrides: str, tiny: bool = True):
        base = [*TINY, f"data.root={data_root}"] if tiny else [f"data.root={data_root}"]
        return _compose("train", [*base, *overrides])

    return _c


def run_cli(*args: str, cwd: Path | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run `python -m ...` in a subprocess as a user would; returns the completed process."""
    return subprocess.run(
        [sys.executable, "-m", *args],
        cwd=cwd or ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=os.environ.copy(),
    )
