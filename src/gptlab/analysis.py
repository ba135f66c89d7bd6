"""What a run's loss curves say, as pure functions of numbers (no files, no plots): the guide's
analysis template -- how fast the loss fell early, whether the run converged, whether it
overfits -- and the measures its experiments ask for (two curves compared, the loss change over
a window of steps, the guide's parameter formula). gptlab.report reads the runs and calls these.

A curve is a list of (step, loss) points in step order. Every threshold is a named constant
below, and `rules()` writes the rules from them, so the report states exactly what it applied.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import median

Point = tuple[int, float]

# convergence verdict, on the train loss at the evaluations
DIVERGE_MIN_DROP = 0.1  # a run that learned ends at least this far below its step-0 loss
DIVERGE_GIVE_BACK = 0.5  # and has not given back more than this share of its fall since its lowest point
OSCILLATE_RISE = 0.02  # a rise of more than this fraction between consecutive evaluations ...
OSCILLATE_COUNT = 2  # ... this many times or more is oscillation
CONVERGED_WINDOW = 0.2  # the last fraction of the steps a converged run ...
CONVERGED_CHANGE = 0.02  # ... changed its loss by less than this fraction
# early loss drop: over the first fraction of max_iters
EARLY_FRACTION = 0.1
# overfitting flag
OVERFIT_GAP = 0.1  # final val loss - final train loss above this
OVERFIT_VAL_RISE = 0.05  # or val loss this far above its best while the train loss kept falling
# grad_accum: two eval curves within this of each other at every evaluation are "the same" (float32)
SAME_CURVES_TOL = 0.01
# precisions whose rounding alone moves a curve by more than that tolerance can: in them the
# floor is measured (one layout again in float32), not assumed
LOW_PRECISION = ("bfloat16", "float16")

# the experiments whose own question a report answers (report.analysis in an experiment's config)
ANALYSES = ("hparams", "grad_accum", "regularization", "lr_schedule", "scaling", "modern")


def finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


# --- the loss in other units: perplexity, and bits per character (char tokens) or per byte (BPE)


def perplexity(loss: float | None) -> float | None:
    """exp(loss): the number of equally likely tokens the model is as unsure as (inf past exp's range)."""
    if not finite(loss):
        return None
    return math.exp(loss) if loss < 700 else math.inf


def bits(loss: float | None, bytes_per_token: float = 1.0) -> float | None:
    """The loss (nats per token) as bits per character (char tokens: bytes_per_token 1) or per byte
    of text (BPE: the val split's UTF-8 bytes per token), comparable across tokenizers."""
    return loss / math.log(2) / bytes_per_token if finite(loss) else None


def loss_units(final: float | None, best: float | None, unit: str, bytes_per_token: float = 1.0) -> dict:
    """metrics.json's perplexities and bits (unit bpc or bpb) of the final and the best val loss."""
    return {
        "final_val_ppl": perplexity(final),
        "best_val_ppl": perplexity(best),
        f"final_val_{unit}": bits(final, bytes_per_token),
        f"best_val_{unit}": bits(best, bytes_per_token),
    }


@dataclass(frozen=True)
class Verdict:
    name: str  # converged | still improving | oscillating | diverged | unknown
    why: str  # the numbers behind it


def nearest(points: list[Point], step: float) -> Point:
    """The point whose step is closest to `step` (the earlier one on a tie)."""
    return min(points, key=lambda p: (abs(p[0] - step), p[0]))


def convergence(curve: list[Point], status: str = "ok") -> Verdict:
    """converged / still improving / oscillating / diverged, by the rules `rules()` states."""
    if status == "diverged":
        return Verdict("diverged", "the run stopped on a non-finite loss")
    bad = next((s for s, loss in curve if not finite(loss)), None)
    if bad is not None:
        return Verdict("diverged", f"non-finite loss at step {bad}")
    if len(curve) < 2:
        return Verdict("unknown", "fewer than two points on the curve")
    (s0, start), (s_end, final) = curve[0], curve[-1]
    s_low, low = min(curve, key=lambda p: p[1])
    if final > start - DIVERGE_MIN_DROP:
        return Verdict(
            "diverged", f"final {final:.3f} is not {DIVERGE_MIN_DROP:g} below the step-{s0} loss {start:.3f}"
        )
    if final - low > DIVERGE_GIVE_BACK * (start - low):
        share = (final - low) / (start - low)
        return Verdict(
            "diverged", f"gave back {share:.0%} of its fall: {low:.3f} at step {s_low}, {final:.3f} at step {s_end}"
        )
    rises = [s for (_, a), (s, b) in zip(curve, curve[1:]) if b > a * (1 + OSCILLATE_RISE)]
    if len(rises) >= OSCILLATE_COUNT:
        return Verdict("oscillating", f"rose by more than {OSCILLATE_RISE:.0%} at steps {', '.join(map(str, rises))}")
    ref_step, ref = nearest(curve[:-1], s_end - CONVERGED_WINDOW * (s_end - s0))
    change = (final - ref) / ref
    window = f"steps {ref_step}-{s_end}: {ref:.3f} -> {final:.3f} ({change:+.2%})"
    if abs(change) < CONVERGED_CHANGE:
        return Verdict("converged", window)
    if change > 0:
        return Verdict("oscillating", f"rose over the last steps, {window}")
    return Verdict("still improving", window)


@dataclass(frozen=True)
class Window:
    start_step: int
    start_loss: float
    end_step: int
    end_loss: float

    @property
    def change(self) -> float:
        return self.end_loss - self.start_loss


def window_change(points: list[Point], start: float, end: float) -> Window | None:
    """The loss change between the points nearest `start` and `end` (None when they coincide)."""
    if not points:
        return None
    a, b = nearest(points, start), nearest(points, end)
    return Window(a[0], a[1], b[0], b[1]) if b[0] > a[0] else None


def early_drop(points: list[Point], max_iters: int) -> Window | None:
    """The loss change over the first EARLY_FRACTION of max_iters (negative: it fell)."""
    return window_change(points, 0, EARLY_FRACTION * max_iters)


def speed_labels(drops: list[float | None]) -> list[str | None]:
    """'fast' / 'slow' for a fall above / below the median fall of the runs that have one;
    None without at least two of them."""
    known = [d for d in drops if finite(d)]
    if len(known) < 2:
        return [None] * len(drops)
    mid = median(known)
    return [None if not finite(d) else "fast" if d > mid else "slow" if d < mid else "median" for d in drops]


@dataclass(frozen=True)
class Overfit:
    flag: bool | None  # None: not enough numbers to tell
    gap: float | None
    why: str


def overfitting(
    final_train: float | None,
    final_val: float | None,
    best_val: float | None = None,
    train_at_best: float | None = None,
) -> Overfit:
    """Overfitting when the final gap exceeds OVERFIT_GAP, or when val loss rose OVERFIT_VAL_RISE
    above its best while the train loss kept falling (train_at_best: train loss when val was best)."""
    if not (finite(final_train) and finite(final_val)):
        return Overfit(None, None, "no final train and val loss")
    gap = round(final_val - final_train, 9)  # 1.35 - 1.25 is 0.10000000000000009 in floats, not above 0.1
    if gap > OVERFIT_GAP:
        return Overfit(True, gap, f"gap {gap:.3f} > {OVERFIT_GAP:g}")
    rise = round(final_val - best_val, 9) if finite(best_val) else None
    if rise is None or rise < OVERFIT_VAL_RISE:
        return Overfit(
            False,
            gap,
            f"gap {gap:.3f} <= {OVERFIT_GAP:g}"
            + (f", val within {OVERFIT_VAL_RISE:g} of its best" if rise is not None else ""),
        )
    if finite(train_at_best) and final_train < train_at_best:
        return Overfit(
            True,
            gap,
            f"val rose {rise:.3f} above its best {best_val:.3f}"
            f" while train fell {train_at_best:.3f} -> {final_train:.3f}",
        )
    return Overfit(
        False,
        gap,
        f"gap {gap:.3f} <= {OVERFIT_GAP:g}; val rose {rise:.3f} above its best, but train did not fall meanwhile",
    )


@dataclass(frozen=True)
class CurveDiff:
    max_abs: float  # largest |a - b| over the common steps
    step: int  # where it is
    common: int  # how many steps both curves have


def curve_difference(a: list[Point], b: list[Point]) -> CurveDiff | None:
    """Largest |a - b| at the steps both curves have (None without a common step)."""
    bs = dict(b)
    diffs = [(abs(loss - bs[s]), s) for s, loss in a if s in bs]
    if not diffs:
        return None
    worst = max(diffs, key=lambda d: d[0] if math.isfinite(d[0]) else math.inf)
    return CurveDiff(worst[0], worst[1], len(diffs))


@dataclass(frozen=True)
class SameOrNot:
    same: bool
    text: str  # the verdict in words, with the figures it rests on


def same_curves(diff: float, dtype: str | None, floor: float | None) -> SameOrNot:
    """Are two curves that differ by at most `diff` the same? In float32 (or an unknown dtype):
    within SAME_CURVES_TOL. In bfloat16 / float16: within `floor`, the measured distance between
    one layout's low-precision run and its float32 run (None: not measured, the tolerance decides
    and the text says the floor is missing)."""
    if dtype not in LOW_PRECISION:
        same = diff <= SAME_CURVES_TOL
        return SameOrNot(
            same,
            f"**{'the same' if same else 'not the same'}** -- the eval curves differ by at most "
            f"{fmt_delta(diff)} ({'≤' if same else '>'} the tolerance {SAME_CURVES_TOL:g})",
        )
    short = {"bfloat16": "bf16", "float16": "fp16"}[dtype]
    if floor is None:
        same = diff <= SAME_CURVES_TOL
        return SameOrNot(
            same,
            f"**{'the same' if same else 'not the same'}** within the float tolerance {SAME_CURVES_TOL:g} "
            f"(largest difference {fmt_delta(diff)}), but the runs are {dtype} and the sweep has no float32 run "
            f"of either layout: {short} rounding's floor is not measured, so this verdict cannot tell rounding "
            "from a real difference (conf/experiment/exp2_grad_accum.yaml's large_batch_float32 measures it)",
        )
    if diff <= floor:
        return SameOrNot(True, f"**the same within {short} rounding** ({fmt_delta(diff)} ≤ floor {fmt_delta(floor)})")
    return SameOrNot(False, f"**different** ({fmt_delta(diff)} > floor {fmt_delta(floor)})")


def fmt_delta(v: float) -> str:
    """A loss difference: 4 decimals, or its size when float rounding (1e-6) would print 0.0000."""
    return f"{v:.4f}" if v == 0 or v >= 1e-3 else f"{v:.1e}"


def guide_params(n_layer: int, n_embd: int, vocab_size: int) -> int:
    """The guide's estimate: n_layer * (4 + 12) * n_embd^2 (attention + MLP) + vocab_size * n_embd."""
    return n_layer * 16 * n_embd**2 + vocab_size * n_embd


def schedule_name(warmup_iters: int, decay_lr: bool) -> str:
    """Experiment 4's four schedules, named from the two settings that make them."""
    warm, decay = int(warmup_iters) > 0, bool(decay_lr)
    return {
        (False, False): "no schedule",
        (True, False): "warmup only",
        (False, True): "decay only",
        (True, True): "warmup + decay",
    }[(warm, decay)]


@dataclass(frozen=True)
class SizeStep:
    smaller: str
    larger: str
    fall: float  # val loss of the smaller minus that of the larger (> 0: the larger is better)
    per_decade: float  # that fall per 10x parameters


def size_steps(points: list[tuple[str, float, float]]) -> list[SizeStep]:
    """(name, parameters, val loss) sorted by parameters -> the gain of each step up in size."""
    pts = sorted(points, key=lambda p: p[1])
    return [
        SizeStep(a[0], b[0], a[2] - b[2], (a[2] - b[2]) / math.log10(b[1] / a[1]))
        for a, b in zip(pts, pts[1:])
        if b[1] > a[1]
    ]


def diminishing_from(steps: list[SizeStep]) -> SizeStep | None:
    """The first step up whose gain per 10x parameters is smaller than the step before it."""
    return next((b for a, b in zip(steps, steps[1:]) if b.per_decade < a.per_decade), None)


@dataclass(frozen=True)
class OverSeeds:
    n: int  # how many seeds
    mean: float
    spread: float  # max - min: the seed-to-seed range (0 with one seed)


def over_seeds(values: list[float | None]) -> OverSeeds | None:
    """Mean and range of one setting's runs with different seeds (None without a finite value)."""
    known = [v for v in values if finite(v)]
    if not known:
        return None
    return OverSeeds(len(known), sum(known) / len(known), max(known) - min(known))


def beyond_spread(a: OverSeeds, base: OverSeeds) -> bool | None:
    """Whether a's mean differs from base's by more than the seed-to-seed range of either (None:
    fewer than two seeds on a side, so there is no spread to compare with)."""
    if a.n < 2 or base.n < 2:
        return None
    return abs(a.mean - base.mean) > max(a.spread, base.spread)


def time_to_reach(points: list[tuple[float, float]], target: float) -> float | None:
    """The wall time of the first evaluation at or below target, from (seconds, val loss) points in
    time order; None when no evaluation got there."""
    return next((t for t, loss in points if finite(loss) and loss <= target), None)


def rules() -> list[str]:
    """The rules above in words, from the constants (for the report)."""
    return [
        f"- **early loss drop**: the train loss at the point nearest {EARLY_FRACTION:.0%} of max_iters minus its "
        "step-0 value (the step-0 evaluation); *fast* / *slow*: a larger / smaller fall than the sweep's median.",
        f"- **diverged**: the run stopped on a non-finite loss, or a loss is not finite, or the final train loss is "
        f"not at least {DIVERGE_MIN_DROP:g} below its step-0 value, or it gave back more than {DIVERGE_GIVE_BACK:.0%} "
        "of its fall since its lowest point.",
        f"- **oscillating**: the train loss rose by more than {OSCILLATE_RISE:.0%} between consecutive evaluations "
        f"at least {OSCILLATE_COUNT} times, or rose by {CONVERGED_CHANGE:.0%} or more over the last "
        f"{CONVERGED_WINDOW:.0%} of the steps.",
        f"- **converged**: otherwise, when the last {CONVERGED_WINDOW:.0%} of the steps changed the train loss by less "
        f"than {CONVERGED_CHANGE:.0%}; **still improving**: it fell by {CONVERGED_CHANGE:.0%} or more. The verdicts "
        "read the train loss at the evaluations (eval mode, clean batches).",
        f"- **same curves** (grad_accum): in float32, the eval curves (train and val) differ by at most "
        f"{SAME_CURVES_TOL:g} at every common evaluation. In {' or '.join(LOW_PRECISION)}, by at most the *floor*: "
        "the largest difference between one layout's run in that precision and the same layout's run in float32 "
        "(TF32 matmuls on a GPU), measured in the sweep itself.",
        f"- **overfitting**: the final gap (val - train) is above {OVERFIT_GAP:g}, or the val loss ended "
        f"{OVERFIT_VAL_RISE:g} or more above its best while the train loss kept falling.",
    ]


def diagnose(norms: dict[str, float], ratio: float = 1000.0, floor: float = 1e-8) -> list[str]:
    """Flag layers whose gradient norm is vanishing (below `floor`, or `ratio` times below the
    median layer) or exploding (`ratio` times above the median, or not finite). One line each."""
    finite = [v for v in norms.values() if math.isfinite(v)]
    mid = median(finite) if finite else 0.0
    found = []
    for name, v in norms.items():
        if not math.isfinite(v):
            found.append(f"{name}: exploding (gradient norm is {v})")
        elif v < floor or (mid > 0 and v < mid / ratio):
            found.append(f"{name}: vanishing (gradient norm {v:.2e}, median layer {mid:.2e})")
        elif mid > 0 and v > mid * ratio:
            found.append(f"{name}: exploding (gradient norm {v:.2e}, median layer {mid:.2e})")
    return found
