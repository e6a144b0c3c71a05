"""B, T and the RL starting points read off synthetic SFT curves, and the forgetting criterion."""

import pytest

from rlheals import curve
from rlheals.episodes import wilson

STEPS = [0, 25, 50, 100, 200, 400, 600, 800]


def rows(accuracies, n=500):
    out = []
    for step, acc in zip(STEPS, accuracies):
        low, high = wilson(round(acc * n), n)
        out.append({"sft_step": step, "accuracy": acc, "accuracy_low": low, "accuracy_high": high})
    return out


def test_a_clear_peak():
    points = curve.choose_points(rows([0.05, 0.2, 0.35, 0.3, 0.2, 0.1, 0.08, 0.05]))
    assert points == {"B": 50, "T": 800, "before_peak": 25, "peak": 50, "mid_decline": 400, "last": 800}


def test_a_tie_takes_the_earliest_step():
    points = curve.choose_points(rows([0.05, 0.1, 0.3, 0.3, 0.3, 0.1, 0.1, 0.1]))
    assert points["B"] == points["peak"] == 50 and points["before_peak"] == 25


def test_the_base_model_is_never_the_peak():
    points = curve.choose_points(rows([0.5, 0.2, 0.1, 0.1, 0.1, 0.1, 0.1, 0.05]))
    assert points["B"] == 25 and points["before_peak"] is None and points["mid_decline"] == 400


def test_a_rising_curve_peaks_at_the_end():
    points = curve.choose_points(rows([0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7]))
    assert points["B"] == points["T"] == 800 and points["mid_decline"] is None and points["before_peak"] == 400


def test_the_criterion():
    ood = rows([0.05, 0.2, 0.35, 0.3, 0.2, 0.1, 0.08, 0.05])
    id_ = rows([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8])
    shown = curve.forgetting(id_, ood)
    assert shown.shown and shown.peak_step == 50 and shown.drop == pytest.approx(0.30)
    # ID not up by 15 points: not shown, whatever OOD does.
    assert not curve.forgetting(rows([0.1] * 7 + [0.2]), ood).shown
    # A drop of 8 points: below the 10 the criterion asks for.
    assert not curve.forgetting(id_, rows([0.0, 0.1, 0.18, 0.15, 0.12, 0.11, 0.1, 0.1])).shown
    # Large enough on paper, but on 50 hands the intervals overlap.
    assert not curve.forgetting(rows([0.1] * 7 + [0.8], n=50), rows([0, 0.1, 0.3, 0.2, 0.2, 0.2, 0.2, 0.18], n=50)).shown
    with pytest.raises(ValueError, match="after step 0"):
        curve.peak(rows([0.1]))
