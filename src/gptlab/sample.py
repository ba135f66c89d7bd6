"""`python -m gptlab.sample`: the same as `gptlab sample` (gptlab.cli.sample)."""

from gptlab.cli.sample import main

if __name__ == "__main__":
    raise SystemExit(main())
