"""Prepare a dataset: `python -m gptlab.prepare data=shakespeare_char` (or shakespeare, or
data=text data.path=FILE). Training runs this itself when the files are missing."""

from __future__ import annotations

import sys

from gptlab.cli import common as cli
from gptlab.config import data_spec
from gptlab.data.dataset import prepare_dataset
from gptlab.errors import ConfigError


@cli.report_errors
def main(argv: list[str] | None = None) -> None:
    args = cli.translate_argv(sys.argv[1:] if argv is None else argv)
    cli.check_override_keys(args)
    cfg = cli.compose("train", args)
    if cfg.data.get("path") is None and cfg.data.get("source") is None:
        raise ConfigError("data=text needs a file: data.path=FILE")
    prepare_dataset(data_spec(cfg))
