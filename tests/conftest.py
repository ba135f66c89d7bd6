"""Shared fixtures. Tests read Tiny Shakespeare and GPT-2's BPE files from local copies: set
GPTLAB_DATA_MIRROR and TIKTOKEN_CACHE_DIR (as .ci/run does), or keep the default ../shared.

Tests import nothing from here or from each other (pytest runs them with --import-mode=importlib):
what they share is a fixture. `tiny` and `compose` give the real train config shrunk to a tiny
model, `run_cli` runs a command as a user would, `tb_events` reads a run's TensorBoard events,
`wandb_runs` the offline W&B runs a folder holds."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gptlab.cli.common import compose as compose_config
from gptlab.data.dataset import DataSpec, prepare_dataset

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
    root = tmp_path_factory.mktemp("data")
    prepare_dataset(
        DataSpec(name="shakespeare_char", root=str(root), source="tinyshakespeare", tokenizer="char"),
        log=lambda m: None,
    )
    return root


@pytest.fixture(scope="session")
def bpe_root(tmp_path_factory) -> Path:
    """A data root with Tiny Shakespeare prepared with GPT-2's BPE (once per test session): use it
    with data=shakespeare data.root=<it>."""
    root = tmp_path_factory.mktemp("bpe_data")
    prepare_dataset(
        DataSpec(name="shakespeare_gpt2", root=str(root), source="tinyshakespeare", tokenizer="gpt2"),
        log=lambda m: None,
    )
    return root


@pytest.fixture(scope="session")
def tiny(data_root) -> list[str]:
    """The overrides of a tiny run on the session's data: give them to compose or a command line."""
    return [*TINY, f"data.root={data_root}"]


@pytest.fixture(scope="session")
def compose(tiny, data_root):
    """compose(*overrides) -> the real train config, shrunk to the tiny model, data in data_root;
    tiny=False keeps the configs' own sizes."""

    tiny_overrides = tiny

    def _c(*overrides: str, tiny: bool = True):
        base = tiny_overrides if tiny else [f"data.root={data_root}"]
        return compose_config("train", [*base, *overrides])

    return _c


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def run_cli():
    """run_cli(*args, cwd=None, timeout=300): `python -m *args` in a subprocess as a user would
    run it (in the repository unless cwd is given); returns the completed process."""

    def _run(*args: str, cwd: Path | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", *args],
            cwd=cwd or ROOT,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=os.environ.copy(),
        )

    return _run


class TensorBoardEvents:
    """A run folder's TensorBoard events, read back by TensorBoard's own reader, every event kept."""

    def __init__(self, run_dir):
        # only here: tensorboard's event reader, slow to import and needed by a few tests
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        self._ea = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "histograms": 0, "tensors": 0})
        self._ea.Reload()

    def tags(self, kind: str = "scalars") -> set[str]:
        return set(self._ea.Tags()[kind])

    def scalars(self, tag: str) -> dict[int, float]:
        """{step: value} of one scalar tag."""
        return {e.step: e.value for e in self._ea.Scalars(tag)}

    def histograms(self, tag: str) -> list:
        return self._ea.Histograms(tag)

    def tensors(self, tag: str) -> list:
        return self._ea.Tensors(tag)


@pytest.fixture(scope="session")
def tb_events():
    """tb_events(run_dir) -> TensorBoardEvents: .tags(kind), .scalars(tag) as {step: value}, ..."""
    return TensorBoardEvents


class WandbOfflineRun:
    """One offline W&B run folder (<dir>/wandb/offline-run-*), read back from its run-<id>.wandb
    file: W&B's transaction log (LevelDB's log format after a 7-byte ':W&B' header, 32 KiB blocks,
    each record a wandb_internal_pb2.Record). wandb itself no longer ships a Python reader."""

    BLOCK = 32768

    def __init__(self, folder):
        from wandb.proto import wandb_internal_pb2  # only here: optional (gptlab[wandb])

        self.folder = Path(folder)
        (self.file,) = self.folder.glob("run-*.wandb")
        # wandb.finish() returns before W&B's service process has written the whole file: wait for
        # the run's exit record
        deadline = time.monotonic() + 60
        while True:
            self.records = list(self._records(self.file.read_bytes(), wandb_internal_pb2.Record))
            if any(r.WhichOneof("record_type") == "exit" for r in self.records) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        (run,) = [r.run for r in self.records if r.WhichOneof("record_type") == "run"]
        self.run_id, self.project, self.name = run.run_id, run.project, run.display_name

    def _records(self, data: bytes, record_type):
        assert data[:4] == b":W&B", f"{self.file} is not a W&B run file"
        pos, chunk = 7, b""
        while pos + 7 <= len(data):
            left = self.BLOCK - pos % self.BLOCK
            if left < 7:  # a block's tail too short for a header is padding
                pos += left
                continue
            _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
            if length == 0 and kind == 0:
                pos += left
                continue
            chunk += data[pos + 7 : pos + 7 + length]
            pos += 7 + length
            if kind in (1, 4):  # a whole record, or the last piece of one
                record = record_type()
                record.ParseFromString(chunk)
                chunk = b""
                yield record

    def history(self) -> list[dict]:
        """Each wandb.log call as {key: value} (values decoded from JSON; nested keys joined by '/')."""
        rows = []
        for r in self.records:
            if r.WhichOneof("record_type") == "history":
                rows.append({(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in r.history.item})
        return rows

    def scalars(self, key: str) -> dict[int, float]:
        """{trainer/global_step: value} of one logged key."""
        return {int(h["trainer/global_step"]): h[key] for h in self.history() if key in h}

    def config(self) -> dict:
        out = {}
        for r in self.records:
            if r.WhichOneof("record_type") == "config":
                out.update({(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in r.config.update})
        return out


@pytest.fixture(scope="session")
def wandb_runs():
    """wandb_runs(save_dir) -> [WandbOfflineRun] of <save_dir>/wandb/offline-run-*, oldest first:
    .run_id, .project, .name, .history(), .scalars(key) as {step: value}, .config()."""
    return lambda save_dir: [WandbOfflineRun(f) for f in sorted(Path(save_dir).glob("wandb/offline-run-*"))]
