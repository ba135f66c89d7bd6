"""`python -m gptlab.docstats`: the same as `gptlab docstats` (gptlab.cli.docstats)."""

from gptlab.cli.docstats import main

if __name__ == "__main__":
    raise SystemExit(main())
