"""Look at a batch exactly as the model will see it: `python -m gptlab.inspect data=shakespeare_char`.

Prints the shapes and dtypes of X and Y, the ids of a few rows and their decoded text one above
the other, so that Y is visibly X shifted left by one token, plus the vocabulary and split sizes
(the guide's "check the data loading" step, without editing any code).
"""

from __future__ import annotations

import sys

import torch

from gptlab.cli import common as cli
from gptlab.config import INSPECT, check_keys, data_spec, validate
from gptlab.data.datamodule import GPTDataModule
from gptlab.data.dataset import ensure_prepared


def describe_batch(dm: GPTDataModule, split: str, rows: int, show: int) -> list[str]:
    ds = dm._train if split == "train" else dm._eval[1]
    x, y = ds.sample()
    tok = dm.tokenizer
    lines = [
        f"data: {dm.data_dir} | tokenizer {dm.meta['tokenizer']}, vocab {dm.vocab_size:,} | "
        f"train {dm.meta['train_tokens']:,} tokens, val {dm.meta['val_tokens']:,} tokens ({dm.meta['dtype']} on disk)",
        f"batch from '{split}': X {tuple(x.shape)} {x.dtype}, Y {tuple(y.shape)} {y.dtype} "
        f"(batch_size x block_size; Y[:, t] is the target for X[:, :t+1])",
    ]
    for r in range(min(rows, x.shape[0])):
        xs, ys = x[r, :show].tolist(), y[r, :show].tolist()
        lines += [
            f"row {r}:",
            f"  X ids : {xs}",
            f"  Y ids : {ys}",
            f"  X text: {tok.decode(xs)!r}",
            f"  Y text: {tok.decode(ys)!r}",
        ]
    shifted = torch.equal(x[:, 1:], y[:, :-1])
    lines.append(
        "Y is X shifted left by one token in every row: "
        f"{'yes' if shifted else 'NO -- inputs and targets are misaligned'}"
    )
    return lines


@cli.report_errors
def main(argv: list[str] | None = None) -> None:
    args = cli.translate_argv(sys.argv[1:] if argv is None else argv)
    cli.check_override_keys(args, config_name="inspect")
    cfg = cli.compose("inspect", args)
    check_keys(cfg, INSPECT)
    validate(cfg)
    spec = data_spec(cfg)
    ensure_prepared(spec)
    dm = GPTDataModule(spec.dir, int(cfg.block_size), int(cfg.batch_size), seed=int(cfg.seed))
    dm.setup()
    print("\n".join(describe_batch(dm, str(cfg.split), int(cfg.rows), int(cfg.show_tokens))))
