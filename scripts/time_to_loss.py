"""Seconds of training until a run's val loss first reaches a target, from its metrics.json.

    python scripts/time_to_loss.py <run>/metrics.json 1.47

Each evaluation records its wall time since training started (evaluations included), so the
answer is the first evaluation at or below the target; between evaluations the crossing is not seen.
"""

import json
import sys


def main(path: str, target: float) -> str:
    m = json.load(open(path))
    best = f"best val {m['best_val_loss']:.4f} at step {m['best_step']}, train() {m['wall_time_s']:.1f} s"
    for e in m["evals"]:
        if e["val_loss"] <= target:
            return f"val {e['val_loss']:.4f} <= {target} at step {e['step']}, {e['wall_time_s']:.1f} s; {best}"
    return f"never reached val <= {target}; {best}"


if __name__ == "__main__":
    print(main(sys.argv[1], float(sys.argv[2])))
