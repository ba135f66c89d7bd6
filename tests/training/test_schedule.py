import pytest

from gptlab.training.schedule import get_lr

KW = dict(learning_rate=1e-3, warmup_iters=100, lr_decay_iters=1000, min_lr=1e-4)


def test_warmup_ramps_linearly_from_near_zero_to_peak():
    assert get_lr(0, **KW) == pytest.approx(1e-3 / 101)
    assert get_lr(49, **KW) == pytest.approx(1e-3 * 50 / 101)
    assert get_lr(99, **KW) == pytest.approx(1e-3 * 100 / 101)
    assert get_lr(100, **KW) == pytest.approx(1e-3)  # warmup ends at the peak


def test_cosine_decay_midpoint_and_floor():
    mid = 100 + (1000 - 100) // 2
    assert get_lr(mid, **KW) == pytest.approx((1e-3 + 1e-4) / 2)
    assert get_lr(1000, **KW) == pytest.approx(1e-4)
    assert get_lr(5000, **KW) == pytest.approx(1e-4)  # after lr_decay_iters: min_lr


def test_monotone_decay_after_warmup():
    lrs = [get_lr(s, **KW) for s in range(100, 1001)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))


def test_no_decay_and_no_warmup():
    assert get_lr(500, **{**KW, "warmup_iters": 0}, decay_lr=False) == 1e-3
    assert get_lr(0, **{**KW, "warmup_iters": 0}) == pytest.approx(1e-3)
    assert get_lr(50, **KW, decay_lr=False) == pytest.approx(1e-3 * 51 / 101)  # warmup only
