"""`gptlab export <run> --format hf <dir>` / `python -m gptlab.export`: a run's model as a
Hugging Face GPT-2 folder that `GPT2LMHeadModel.from_pretrained(dir)` loads."""

from __future__ import annotations

import argparse
import sys

from gptlab.cli.common import report_errors
from gptlab.training.checkpoint import load_checkpoint
from gptlab.training.hf import export


@report_errors
def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog="gptlab export",
        description="Write a run's model in another format: --format hf, a folder that transformers' "
        "GPT2LMHeadModel.from_pretrained loads (config.json, model.safetensors, GPT-2's tokenizer files for BPE runs).",
    )
    p.add_argument(
        "run", help="a run folder (its best.ckpt, else last.ckpt, else weights file), a .ckpt or a weights file"
    )
    p.add_argument("dir", help="the folder to write: new, empty, or an earlier export (replaced)")
    p.add_argument("--format", choices=["hf"], default="hf", help="hf: Hugging Face's GPT-2 (the default)")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    tokenizer = load_checkpoint(args.run, mmap=True)["gptlab"].get("tokenizer", {}).get("tokenizer")
    files = export(args.run, args.dir)
    print(f"wrote {args.dir}: {', '.join(files)}")
    if tokenizer == "char":
        print(
            "a character-level run: no tokenizer files (transformers has no tokenizer for its character table; "
            "the characters are in config.json's gptlab_tokenizer)"
        )
    elif tokenizer not in ("gpt2", None):
        print(f"no tokenizer files: gptlab writes them for GPT-2 BPE only, this run used {tokenizer}")
    print(f"load it with: transformers.GPT2LMHeadModel.from_pretrained({str(args.dir)!r})")
