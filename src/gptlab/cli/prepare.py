"""Prepare a dataset: `python -m gptlab.prepare data=shakespeare_char` (or shakespeare, or
data=text data.path=FILE). Training runs this itself when the files are missing."""

from __future__ import annotations

import sys

from gptlab.cli import common as cli
from gptlab.config import data_spec, validate
from gptlab.data.dataset import prepare_dataset


@cli.report_errors
def main(argv: list[str] | None = None) -> None:
    args = cli.translate_argv(sys.argv[1:] if argv is None else argv)
    cli.check_override_keys(args)
    cfg = cli.compose("train", args)
    validate(cfg)  # data=text without data.path=FILE among the rest
    prepare_dataset(data_spec(cfg))
