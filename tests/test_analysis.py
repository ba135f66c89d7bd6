"""gptlab.analysis: the verdicts and measures of the guide's analysis template, on curves whose
answer is known."""

import math

import pytest

from gptlab import analysis as an


def curve(f, steps=range(0, 1001, 100)):
    return [(s, f(s)) for s in steps]


def test_convergence_verdicts():
    converged = curve(lambda s: 1.5 + 2.7 * math.exp(-s / 100))
    improving = curve(lambda s: 4.2 - 2.0 * s / 1000)
    oscillating = list(zip(range(0, 1001, 100), [4.2, 3.0, 2.5, 2.7, 2.3, 2.5, 2.2, 2.4, 2.2, 2.25, 2.2]))
    nan = [(0, 4.2), (100, 3.0), (200, float("nan"))]
    blow_up = [(0, 4.2), (100, 3.0), (200, 2.5), (300, 3.5), (400, 6.0)]
    gave_back = [(0, 4.2), (100, 2.0), (200, 3.5)]  # lower than at the start, but 68% of its fall lost
    flat = [(0, 4.2), (100, 4.15), (200, 4.15)]  # never learned
    assert an.convergence(converged).name == "converged"
    v = an.convergence(improving)
    assert v.name == "still improving" and "steps 800-1000" in v.why and "2.600 -> 2.200 (-15.38%)" in v.why
    v = an.convergence(oscillating)
    assert v.name == "oscillating" and "steps 300, 500, 700" in v.why
    assert an.convergence(nan).why == "non-finite loss at step 200"
    for c in (nan, blow_up, gave_back, flat):
        assert an.convergence(c).name == "diverged", c
    assert "gave back 68%" in an.convergence(gave_back).why
    assert an.convergence(converged, status="diverged").name == "diverged"  # the run said so
    rising_end = curve(lambda s: 1.5 + 2.7 * math.exp(-s / 100) + (0.1 if s == 1000 else 0))
    assert an.convergence(rising_end).name == "oscillating"


def test_early_drop_and_window_change():
    pts = [(0, 4.2)] + [(s, 4.2 - 0.01 * s) for s in range(10, 1001, 10)]
    w = an.early_drop(pts, max_iters=1000)
    assert (w.start_step, w.end_step) == (0, 100) and w.change == pytest.approx(-1.0)
    w = an.window_change(pts, 1000 - 200, 1000)
    assert (w.start_step, w.end_step, w.start_loss) == (800, 1000, pytest.approx(-3.8)) and w.change == pytest.approx(
        -2.0
    )
    sparse = [(0, 4.2), (250, 3.0), (500, 2.5)]
    assert an.early_drop(sparse, max_iters=500) is None  # 50 is nearest step 0: no window
    assert an.window_change(sparse, 0, 100) is None and an.window_change(sparse, 0, 200).end_step == 250
    assert an.speed_labels([1.0, 2.0, None, 3.0]) == ["slow", "median", None, "fast"]
    assert an.speed_labels([1.0, None]) == [None, None]


def test_overfitting_flag_both_ways():
    assert an.overfitting(1.2, 1.8).flag is True and "gap 0.600 > 0.1" in an.overfitting(1.2, 1.8).why
    assert an.overfitting(1.4, 1.45).flag is False
    # small gap, but val rose 0.06 above its best while train fell from 1.5 to 1.4
    o = an.overfitting(1.40, 1.48, best_val=1.42, train_at_best=1.5)
    assert o.flag is True and "val rose 0.060" in o.why
    assert an.overfitting(1.40, 1.48, best_val=1.42, train_at_best=1.3).flag is False  # train rose too: not overfitting
    assert an.overfitting(None, 1.5).flag is None


def test_curve_difference_and_formulas():
    a = [(0, 4.2), (100, 3.0), (200, 2.5)]
    d = an.curve_difference(a, [(0, 4.2), (100, 3.05), (200, 2.49), (300, 2.0)])
    assert (d.max_abs, d.step, d.common) == (pytest.approx(0.05), 100, 3)
    assert an.curve_difference(a, [(50, 1.0)]) is None
    # the guide's estimates for experiment 5's four models (char-level, vocab 65): 532K, 4.2M, 14.2M, 33.6M
    assert [an.guide_params(n, e, 65) for n, e in [(2, 128), (4, 256), (6, 384), (8, 512)]] == [
        524_288 + 8_320,
        4_194_304 + 16_640,
        14_155_776 + 24_960,
        33_554_432 + 33_280,
    ]
    assert [an.schedule_name(w, d) for w, d in [(0, False), (100, False), (0, True), (100, True)]] == [
        "no schedule",
        "warmup only",
        "decay only",
        "warmup + decay",
    ]
    steps = an.size_steps([("b", 4e6, 1.7), ("a", 5e5, 2.0), ("c", 1.4e7, 1.55), ("d", 3.4e7, 1.50)])
    assert [(s.smaller, s.larger) for s in steps] == [("a", "b"), ("b", "c"), ("c", "d")]
    assert an.diminishing_from(steps).larger == "c"


def test_rules_state_the_thresholds():
    text = "\n".join(an.rules())
    assert f"more than {an.OSCILLATE_RISE:.0%}" in text and f"above {an.OVERFIT_GAP:g}" in text
