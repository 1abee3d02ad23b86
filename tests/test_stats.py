"""Intervals and paired tests against values computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from laaq.stats import mcnemar_exact, paired_bootstrap, paired_test, t_interval, wilson


@pytest.mark.parametrize(("k", "n", "lo", "hi"), [
    (5, 10, 0.2366, 0.7634),   # textbook values (Newcombe 1998, z = 1.96)
    (0, 10, 0.0, 0.2775),      # never [0, 0] like the Wald interval
    (10, 10, 0.7225, 1.0),
    (81, 263, 0.2553, 0.3662),  # Newcombe's example 81/263
])
def test_wilson_matches_hand_computed(k: int, n: int, lo: float, hi: float) -> None:
    got = wilson(k, n)
    assert got[0] == pytest.approx(lo, abs=1e-4) and got[1] == pytest.approx(hi, abs=1e-4)


def test_wilson_half_width_at_the_sizes_we_use() -> None:
    lo, hi = wilson(500, 1000)
    assert (hi - lo) / 2 == pytest.approx(0.031, abs=0.001)  # ±3 points at 1,000 images
    lo, hi = wilson(250, 500)
    assert (hi - lo) / 2 == pytest.approx(0.0437, abs=0.001)


def test_mcnemar_exact_by_hand() -> None:
    assert mcnemar_exact(0, 6) == pytest.approx(2 * 0.5**6)  # 0.03125
    assert mcnemar_exact(1, 9) == pytest.approx(2 * 11 / 1024)  # P(X <= 1), X ~ Bin(10, 1/2), two-sided
    assert mcnemar_exact(3, 3) == 1.0 and mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(9, 1) == mcnemar_exact(1, 9)


def test_paired_test_counts_only_discordant_images() -> None:
    a = np.array([1, 1, 1, 0, 0, 1, 1, 1], bool)
    b = np.array([1, 0, 0, 0, 1, 0, 0, 0], bool)
    t = paired_test(a, b)
    assert (t.only_a, t.only_b, t.n) == (5, 1, 8)
    assert t.p_value == pytest.approx(2 * 7 / 64)  # P(X <= 1), X ~ Bin(6, 1/2) = 7/64
    assert "not distinguishable" in t.verdict("A", "B")
    with pytest.raises(ValueError, match="same images"):
        paired_test(a, b[:5])


def test_paired_bootstrap_and_t_interval() -> None:
    rng = np.random.default_rng(0)
    same = [rng.integers(0, 2, 300).astype(float) for _ in range(5)]
    d = paired_bootstrap(same, same, reps=300)
    assert d.mean == 0 and d.lo == 0 and d.hi == 0 and not d.distinguishable
    noisy = [rng.integers(0, 2, 300).astype(float) for _ in range(5)]
    d = paired_bootstrap(same, noisy, reps=500)
    assert d.lo < 0 < d.hi and "not distinguishable" in d.describe()
    better = [np.maximum(x, rng.random(300) < 0.3) for x in same]  # right wherever `same` is, and more
    d = paired_bootstrap(better, same, reps=500)
    assert d.lo > 0 and d.distinguishable
    t = t_interval(np.array([0.01, 0.03, 0.02, 0.04, 0.00]))
    # mean 0.02, sd 0.0158 (ddof 1), t_{0.975,4} = 2.776 -> half width 0.0196
    assert t.mean == pytest.approx(0.02) and t.hi - t.mean == pytest.approx(2.7764 * 0.015811 / math.sqrt(5), rel=1e-3)


def test_crossed_bootstrap_shares_one_image_draw_and_tests_a_margin() -> None:
    import numpy as np

    from laaq.stats import crossed_bootstrap, holm, paired_bootstrap

    rng = np.random.default_rng(0)
    image_effect = rng.random(200) < 0.5  # the same images for every seed: their noise is common
    a = [(image_effect | (rng.random(200) < 0.1)).astype(float) for _ in range(5)]
    b = [image_effect.astype(float) * (rng.random(200) < 0.9) for _ in range(5)]
    crossed, p = crossed_bootstrap(a, b, reps=500, margin=0.0)
    hier = paired_bootstrap(a, b, reps=500)
    assert crossed.mean == hier.mean and crossed.lo <= crossed.mean <= crossed.hi
    assert crossed.hi - crossed.lo >= 0.9 * (hier.hi - hier.lo)  # not narrower than independent draws
    assert p < 0.01  # A beats B clearly: "difference <= 0" rejected
    _, p_far = crossed_bootstrap(a, b, reps=500, margin=0.5)
    assert p_far > 0.5  # "difference <= 50 points" is not rejected
    same, p_same = crossed_bootstrap(a, a, reps=100)
    assert (same.lo, same.hi) == (0.0, 0.0) and p_same == 1.0
    assert holm([0.01, 0.04, 0.03]) == [True, False, False]  # 0.01 <= 0.05/3; then 0.03 > 0.05/2 stops
    assert holm([0.001, 0.02, 0.04]) == [True, True, True]
