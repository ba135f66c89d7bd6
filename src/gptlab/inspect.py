"""`python -m gptlab.inspect`: the same as `gptlab inspect` (gptlab.cli.inspect)."""

from gptlab.cli.inspect import main

if __name__ == "__main__":
    raise SystemExit(main())
