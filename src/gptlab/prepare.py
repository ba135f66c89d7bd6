"""`python -m gptlab.prepare`: the same as `gptlab prepare` (gptlab.cli.prepare)."""

from gptlab.cli.prepare import main

if __name__ == "__main__":
    raise SystemExit(main())
