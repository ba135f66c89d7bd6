"""`gptlab report [folder]` / `python -m gptlab.report`: a sweep's report.md and figures."""

from __future__ import annotations

import argparse
import sys

from gptlab.cli.common import report_errors
from gptlab.report.report import report


@report_errors
def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog="gptlab report",
        description="Compare the runs of a sweep: report.md, loss curves, the experiment's verdict.",
    )
    p.add_argument(
        "folder",
        nargs="?",
        default=None,
        help="a sweep's output folder (its run folders each hold metrics.json), or a folder of sweeps "
        "such as outputs/exp2_grad_accum (the newest is reported); default: the newest sweep under outputs/",
    )
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    print(report(args.folder))
