"""A/B throughput of two settings of `python -m gptlab.train`, alternating A, B, A, B, ...

    python scripts/ab.py --a monitor.enabled=true --b monitor.enabled=false --rounds 4 -- max_iters=500

Each run is a fresh subprocess writing to a temporary folder; the figure compared is the run's own
tokens/s (training steps only, from metrics.json) and its wall time. Alternating and reporting the
ratio per round keeps machine noise (other processes, thermal drift) out of the comparison.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path


def run(overrides: list[str], out: Path) -> dict:
    cmd = [sys.executable, "-m", "gptlab.train", f"out_dir={out}", "sample_tokens=0", *overrides]
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(f"run failed: {' '.join(cmd)}\n{p.stderr[-2000:]}")
    return json.loads((out / "metrics.json").read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--a", nargs="*", default=[], help="overrides of side A")
    ap.add_argument("--b", nargs="*", default=[], help="overrides of side B")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("common", nargs="*", help="overrides for both sides (after --)")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            ma = run([*args.common, *args.a], Path(tmp) / f"a{r}")
            mb = run([*args.common, *args.b], Path(tmp) / f"b{r}")
            rows.append((ma["tokens_per_s"], mb["tokens_per_s"], ma["wall_time_s"], mb["wall_time_s"]))
            print(
                f"round {r}: A {ma['tokens_per_s']:,.0f} tok/s ({ma['wall_time_s']:.1f} s)   "
                f"B {mb['tokens_per_s']:,.0f} tok/s ({mb['wall_time_s']:.1f} s)"
                f"   A/B {ma['tokens_per_s'] / mb['tokens_per_s']:.3f}",
                flush=True,
            )
    tok = [a / b for a, b, _, _ in rows]
    wall = [wb / wa for _, _, wa, wb in rows]  # > 1: A finished faster
    print(
        f"A: {' '.join(args.a) or '(defaults)'}   B: {' '.join(args.b) or '(defaults)'}"
        f"   common: {' '.join(args.common)}"
    )
    print(f"tokens/s A/B: min {min(tok):.3f}  median {statistics.median(tok):.3f}  max {max(tok):.3f}")
    print(f"wall time B/A: min {min(wall):.3f}  median {statistics.median(wall):.3f}  max {max(wall):.3f}")


if __name__ == "__main__":
    main()
