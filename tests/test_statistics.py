import math

import numpy as np
import pytest

from rlheals import statistics


def arm(rng, seeds: int, hands: np.ndarray, shift: float = 0.0, seed_sd: float = 0.0) -> np.ndarray:
    """0/1 results of `seeds` models on hands of success probabilities `hands`, each seed shifted by a
    random amount (the spread between training seeds) and the arm by `shift`."""
    p = np.clip(hands[None, :] + shift + rng.normal(0, seed_sd, (seeds, 1)), 0, 1)
    return (rng.random((seeds, hands.size)) < p).astype(float)


def test_one_model_alone_gets_the_binomial_standard_error():
    results = np.r_[np.ones(150), np.zeros(350)]
    est = statistics.contrast({"m": results}, {"m": 1.0})
    assert est.value == pytest.approx(0.3)
    assert est.se == pytest.approx(math.sqrt(0.3 * 0.7 / 499), rel=1e-9)  # the unbiased variance over hands
    assert est.df == pytest.approx(499) and est.half_width == pytest.approx(1.9647 * est.se, rel=1e-3)


def test_two_arms_from_one_distribution_give_an_interval_around_zero_that_is_not_degenerate():
    rng = np.random.default_rng(0)
    hands = rng.uniform(0, 0.6, 500)
    est = statistics.difference(arm(rng, 3, hands, seed_sd=0.02), arm(rng, 3, hands, seed_sd=0.02))
    assert est.low < 0 < est.high and est.high - est.low > 0.01


def test_a_large_true_gap_is_covered_and_decided():
    rng = np.random.default_rng(1)
    hands = rng.uniform(0.1, 0.5, 500)
    est = statistics.difference(arm(rng, 3, hands, shift=0.3, seed_sd=0.01), arm(rng, 3, hands, seed_sd=0.01))
    assert est.low <= 0.3 <= est.high and est.low > 0 and est.p_value < 1e-3


def test_two_seeds_that_agree_by_chance_leave_the_evaluation_noise():
    # Both seeds of each arm score 100 of 500 hands, on different hands: no spread between seeds is seen,
    # yet the interval keeps the evaluation's noise over the hands.
    a = np.zeros((2, 500))
    a[0, :100] = a[1, 50:150] = 1
    b = np.zeros((2, 500))
    b[0, 200:300] = b[1, 250:350] = 1
    est = statistics.difference(a, b)
    assert est.value == 0 and est.se > 0.02 and est.low < -0.04 and est.high > 0.04


def test_few_seeds_widen_the_interval_by_their_degrees_of_freedom():
    # Two seeds per arm, at 10% and 30%, against an arm at 15%: the seeds' spread dominates and has one
    # degree of freedom, so the quantile is t's on about 1 df (12.7), not the normal 1.96.
    a = np.zeros((2, 500))
    a[0, :50] = a[1, :150] = 1
    b = np.zeros((2, 500))
    b[0, 300:375] = b[1, 310:385] = 1
    est = statistics.difference(a, b)
    assert est.value == pytest.approx(0.05)
    assert est.df < 1.5 and est.half_width > 5 * est.se and est.low < 0 < est.high


def test_pairing_on_shared_hands_narrows_the_interval_of_correlated_arms():
    rng = np.random.default_rng(3)
    easy = rng.random(500) < 0.4
    a = easy.astype(float)
    b = a.copy()
    flip = rng.choice(500, 20, replace=False)
    b[flip] = 1 - b[flip]
    paired = statistics.difference(a, b)
    unpaired = math.hypot(statistics.contrast({"a": a}, {"a": 1}).se, statistics.contrast({"b": b}, {"b": 1}).se)
    assert paired.se < unpaired / 2


def test_the_interval_covers_the_true_difference_at_its_level_with_seed_and_hand_noise():
    rng = np.random.default_rng(4)
    covered, runs = 0, 300
    for _ in range(runs):
        hands = rng.uniform(0, 0.5, 300)  # a fresh draw of hands each time: hand noise is part of it
        gap = 0.05
        est = statistics.difference(arm(rng, 3, hands, shift=gap, seed_sd=0.03), arm(rng, 3, hands, seed_sd=0.03))
        covered += est.low <= gap <= est.high
    assert covered / runs >= 0.92


def test_arms_on_different_hands_are_refused():
    with pytest.raises(ValueError, match="same hands"):
        statistics.difference(np.ones((2, 500)), np.ones((2, 400)))
    with pytest.raises(ValueError, match="at least 2 hands"):
        statistics.difference(np.ones((2, 1)), np.ones((2, 1)))


def test_a_ratio_with_an_exact_denominator_scales_the_numerators_interval():
    rng = np.random.default_rng(5)
    rl = arm(rng, 3, np.full(500, 0.2), seed_sd=0.02)
    start = np.zeros(500)
    ref = np.zeros(500)
    ref[:200] = 1  # the reference is 40 points above the start on the same hands, hand for hand
    num = statistics.contrast({"rl": rl, "start": start}, {"rl": 1, "start": -1})
    r = statistics.ratio({"rl": rl, "start": start, "ref": ref}, {"rl": 1, "start": -1}, {"ref": 1, "start": -1})
    assert r.value == pytest.approx(num.value / 0.4)
    # The denominator's own spread over hands enters too, so the ratio's interval is at least as wide.
    assert r.se >= num.se / 0.4 * 0.5 and r.low < r.value < r.high


def test_a_ratio_covers_its_true_value():
    rng = np.random.default_rng(6)
    covered, runs = 0, 300
    for _ in range(runs):
        hands = rng.uniform(0, 0.6, 500)
        ref = arm(rng, 1, hands, shift=0.3)
        start = arm(rng, 1, hands)
        rl = arm(rng, 3, hands, shift=0.15, seed_sd=0.02)
        r = statistics.ratio({"rl": rl, "start": start, "ref": ref}, {"rl": 1, "start": -1}, {"ref": 1, "start": -1})
        covered += r.low <= 0.5 <= r.high
    assert covered / runs >= 0.9


def test_holm_adjusts_in_the_order_given_and_never_lowers_a_p_value():
    assert statistics.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert statistics.holm([0.5]) == [0.5]
    adjusted = statistics.holm([0.2, 0.001, 0.9, 0.04])
    assert all(a >= p for a, p in zip(adjusted, [0.2, 0.001, 0.9, 0.04]))
    assert max(adjusted) <= 1.0
