"""`python -m gptlab.bench`: the same as `gptlab bench` (gptlab.bench.bench)."""

from gptlab.bench.bench import main

main()
