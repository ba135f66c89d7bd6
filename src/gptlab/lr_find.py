"""`python -m gptlab.lr_find`: the same as `gptlab lr-find` (gptlab.cli.lr_find)."""

from gptlab.cli.lr_find import main

if __name__ == "__main__":
    raise SystemExit(main())
