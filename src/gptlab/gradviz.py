"""`python -m gptlab.gradviz`: the same as `gptlab gradviz` (gptlab.report.gradviz)."""

from gptlab.cli.common import report_errors
from gptlab.report.gradviz import main

if __name__ == "__main__":
    raise SystemExit(report_errors(main)())
