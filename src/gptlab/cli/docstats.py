"""How a dataset's documents batch, before training:
`python -m gptlab.docstats data=shakespeare_char block_size=256 batch_size=64`.

Takes the same config and overrides as train (the CPU recipe included), prepares the dataset if
needed, and prints the train split's document lengths and the padding efficiency (real tokens /
slots) of each batching mode, measured on batches drawn by the samplers training uses.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import numpy as np

from gptlab.cli import common as cli
from gptlab.config import data_spec, validate
from gptlab.data.dataset import ensure_prepared, load_meta, open_documents
from gptlab.data.packing import PackedRows, PaddedBatches, padding_efficiency

log = logging.getLogger("gptlab")


def document_stats(
    data_dir: Path, block_size: int, batch_size: int, bucket_batches: int, seed: int, n_batches: int = 400
) -> dict:
    """Document lengths of the train split and the padding efficiency of n_batches batches of
    each mode (random windows are always full: 1.0)."""
    meta = load_meta(data_dir)
    offsets = open_documents(data_dir, "train", meta)
    lengths = np.diff(offsets)
    args = (Path(data_dir) / "train.bin", meta["dtype"], offsets, block_size, batch_size, seed)

    def measure(sampler) -> float:
        return padding_efficiency(sampler.sample() for _ in range(n_batches))

    eff = {"random": 1.0, "packed": measure(PackedRows(*args))}
    eff["padded, no bucketing"] = measure(PaddedBatches(*args, bucket_batches=1))
    if bucket_batches > 1:
        eff[f"padded, bucket_batches={bucket_batches}"] = measure(PaddedBatches(*args, bucket_batches=bucket_batches))
    return {
        "kind": meta["documents"]["kind"],
        "documents": len(lengths),
        "tokens": int(offsets[-1]),
        "median": float(np.median(lengths)),
        "mean": float(lengths.mean()),
        "p90": float(np.percentile(lengths, 90)),
        "max": int(lengths.max()),
        "truncated_docs": float((lengths > block_size + 1).mean()),
        "truncated_tokens": float(np.maximum(lengths - block_size - 1, 0).sum() / offsets[-1]),
        "efficiency": eff,
    }


@cli.report_errors
def main(argv: list[str] | None = None) -> None:
    cli.setup_console_logging()
    args = cli.translate_argv(sys.argv[1:] if argv is None else argv)
    cli.check_override_keys(args)
    cfg = cli.compose("train", args)
    validate(cfg)
    spec = data_spec(cfg)
    ensure_prepared(spec, log=log.info, documents=True)
    T, B, bucket = int(cfg.block_size), int(cfg.batch_size), int(cfg.data.get("bucket_batches", 16))
    s = document_stats(spec.dir, T, B, bucket, int(cfg.seed))
    print(
        f"{spec.dir} train split: {s['documents']:,} documents ({s['kind']}), {s['tokens']:,} tokens\n"
        f"tokens per document: median {s['median']:.0f}, mean {s['mean']:.0f}"
        f", 90th percentile {s['p90']:.0f}, max {s['max']:,}\n"
        f"longer than block_size + 1 = {T + 1}: {s['truncated_docs']:.1%} of documents, cut off there "
        f"({s['truncated_tokens']:.1%} of tokens never reach packed or padded batches)\n"
        f"padding efficiency (real tokens / slots), {B} rows per batch, block_size {T}:"
    )
    for mode, e in s["efficiency"].items():
        print(f"  {mode:<28} {e:6.1%}")
