"""Gather what an offline GPU machine needs besides torch and lightning into .gpucarry/:
hydra-core, omegaconf and antlr4, Hydra's joblib launcher and joblib (pure Python, copied from
this environment; the launcher runs scripts/gpu_experiments.sh's jobs side by side), Tiny Shakespeare,
and GPT-2's BPE files; and nanoGPT's code where a copy is found (GPTLAB_NANOGPT_DIR, or
../shared/anchors/nanoGPT next to the repository), run as a side of the bench, never imported.
`make gpu-carry`; then scripts/bench_gpu.sh puts them on the path.

    python scripts/gpu_carry.py [DEST]   (default .gpucarry, ignored by git)
"""

from __future__ import annotations

import importlib
import os
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

PACKAGES = ("hydra", "omegaconf", "antlr4", "hydra_plugins/hydra_joblib_launcher", "joblib")  # PyYAML is usually there


def main() -> None:
    dest = Path(sys.argv[1] if len(sys.argv) > 1 else ROOT / ".gpucarry")
    site = dest / "site"
    for name in PACKAGES:
        # __path__, not __file__: hydra_plugins is a namespace package (no __init__.py)
        src = Path(next(iter(importlib.import_module(name.replace("/", ".")).__path__)))
        shutil.copytree(src, site / name, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))

    from gptlab.data.dataset import fetch_corpus
    from gptlab.data.tokenizer import TiktokenTokenizer

    text = fetch_corpus("tinyshakespeare", ROOT / "data" / "raw")  # the mirror or the network
    (dest / "data" / "tinyshakespeare").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(text, dest / "data" / "tinyshakespeare" / "input.txt")
    # tiktoken keeps its downloads in TIKTOKEN_CACHE_DIR: point it at the carry folder and load once
    cache = dest / "tiktoken_cache"
    cache.mkdir(parents=True, exist_ok=True)
    if os.environ.get("TIKTOKEN_CACHE_DIR"):
        shutil.copytree(os.environ["TIKTOKEN_CACHE_DIR"], cache, dirs_exist_ok=True)
    os.environ["TIKTOKEN_CACHE_DIR"] = str(cache)
    TiktokenTokenizer("gpt2")
    nanogpt = Path(os.environ.get("GPTLAB_NANOGPT_DIR", ROOT.parent / "shared" / "anchors" / "nanoGPT"))
    if (nanogpt / "train.py").is_file():
        # its code and configs, not its data folder: the bench runs it as it is
        shutil.copytree(nanogpt, dest / "nanoGPT", dirs_exist_ok=True, ignore=shutil.ignore_patterns("data", "*.pyc"))
    size = sum(f.stat().st_size for f in dest.rglob("*") if f.is_file())
    extra = ", nanoGPT" if (dest / "nanoGPT").is_dir() else ""
    print(f"{dest}: {', '.join(PACKAGES)}, Tiny Shakespeare, GPT-2 BPE files{extra} ({size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
