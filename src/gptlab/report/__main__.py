"""`python -m gptlab.report`: the same as `gptlab report` (gptlab.cli.report)."""

from gptlab.cli.report import main

main()
