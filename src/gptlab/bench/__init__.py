"""The benchmark: gptlab against a plain PyTorch loop side by side, single-cost measurements,
and that reference loop."""
