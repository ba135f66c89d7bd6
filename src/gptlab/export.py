"""`python -m gptlab.export`: the same as `gptlab export` (gptlab.cli.export)."""

from gptlab.cli.export import main

if __name__ == "__main__":
    raise SystemExit(main())
