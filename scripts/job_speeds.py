"""Each job's speed in a sweep whose jobs ran side by side on one GPU, against the same shape
trained alone: `python scripts/job_speeds.py SWEEP [SOLO_METRICS_JSON]`. Prints a markdown table
(run, dtype, parameters, tokens/step, tokens/s, share of the solo speed where the shape matches)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from gptlab.rundir import read_metrics  # noqa: E402


def main() -> None:
    sweep = Path(sys.argv[1])
    solo = json.loads(Path(sys.argv[2]).read_text()) if len(sys.argv) > 2 else None
    print("| run | dtype | params | tokens/step | tokens/s | of solo |\n|---|---|---|---|---|---|")
    for d in sorted(p for p in sweep.iterdir() if p.is_dir() and p.name[:1].isdigit()):
        m = read_metrics(d) or {}
        tok = m.get("tokens_per_s")
        # the same model and batch as the solo run: its share of the speed that run had alone
        same = solo and (m.get("params"), m.get("tokens_per_step")) == (solo.get("params"), solo.get("tokens_per_step"))
        share = f"{tok / solo['tokens_per_s']:.0%}" if same and tok and m.get("dtype") == solo.get("dtype") else "-"
        speed = f"{tok:,.0f}" if isinstance(tok, (int, float)) else "-"
        cells = [d.name, m.get("dtype", "-"), m.get("params", "-"), m.get("tokens_per_step", "-"), speed, share]
        print("| " + " | ".join(map(str, cells)) + " |")


if __name__ == "__main__":
    main()
