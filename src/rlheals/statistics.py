"""Intervals for comparing arms of the study (docs/study.md, "Intervals"). Every arm is scored on the same
test hands, one row of 0/1 results per model (seed) of the arm, so a comparison is a linear contrast of
arm means over shared hands. Its variance sums

- the evaluation term: the spread over hands of the contrast taken hand by hand (pairs the shared hands),
  with n_hands - 1 degrees of freedom;
- a seed term per arm of several seeds: the spread of the seeds' accuracies over the number of seeds,
  with n_seeds - 1 degrees of freedom (an arm of one model is that model: it adds no seed term).

The interval uses Student's t on the Welch-Satterthwaite degrees of freedom, so an arm of two seeds widens
it as its one degree of freedom says. The per-hand noise of each seed enters both terms, which makes the
interval slightly conservative. A ratio of contrasts gets the same treatment, linearised (delta method)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

LEVEL = 0.95


@dataclass(frozen=True)
class Estimate:
    """A contrast or ratio with its standard error, degrees of freedom and two-sided interval."""

    value: float
    se: float
    df: float
    level: float = LEVEL

    @property
    def half_width(self) -> float:
        return 0.0 if self.se == 0 else float(stats.t.ppf(0.5 + self.level / 2, self.df)) * self.se

    @property
    def low(self) -> float:
        return self.value - self.half_width

    @property
    def high(self) -> float:
        return self.value + self.half_width

    @property
    def p_value(self) -> float:
        """Two-sided p-value against 0 (1 when the estimate is exactly 0 with no spread)."""
        if self.se == 0:
            return 1.0 if self.value == 0 else 0.0
        return float(2 * stats.t.sf(abs(self.value) / self.se, self.df))

    def beyond(self, x: float = 0.0) -> bool:
        """Whether the interval lies wholly on one side of x."""
        return self.low > x or self.high < x

    def text(self, scale: float = 100.0, digits: int = 1) -> str:
        return interval_text(self.value, self.low, self.high, self.df, scale, digits, self.level)


def interval_text(value: float, low: float, high: float, df: float, scale: float = 100.0, digits: int = 1,
                  level: float = LEVEL) -> str:
    """'value [low, high] (95%, t on df df)', each scaled (100: points) and rounded to `digits`."""
    f = f"{{:.{digits}f}}"
    return (f"{f.format(scale * value)} [{f.format(scale * low)}, {f.format(scale * high)}] "
            f"({100 * level:.0f}%, t on {df:.0f} df)")


def _as_matrix(results) -> np.ndarray:
    m = np.asarray(results, dtype=np.float64)
    if m.ndim == 1:
        m = m[None, :]
    if m.ndim != 2 or m.shape[1] < 2:
        raise ValueError(f"an arm is a (seeds, hands) array of 0/1 results with at least 2 hands, got shape {m.shape}")
    return m


def _terms(arms: Mapping[str, np.ndarray], coef: Mapping[str, float]) -> tuple[float, list[tuple[float, float]]]:
    """The contrast's value and its variance terms (variance, degrees of freedom)."""
    hands = {m.shape[1] for m in arms.values()}
    if len(hands) != 1:
        raise ValueError(f"arms compared must be scored on the same hands: got {sorted(hands)} hands")
    (n,) = hands
    per_hand = sum(c * arms[name].mean(axis=0) for name, c in coef.items())
    terms = [(float(np.var(per_hand, ddof=1)) / n, n - 1.0)]
    for name, c in coef.items():
        k = arms[name].shape[0]
        if k >= 2 and c:
            terms.append((c * c * float(np.var(arms[name].mean(axis=1), ddof=1)) / k, k - 1.0))
    return float(per_hand.mean()), terms


def _estimate(value: float, terms: Sequence[tuple[float, float]], scale: float = 1.0,
              level: float = LEVEL) -> Estimate:
    variance = sum(v for v, _ in terms)
    if variance == 0:
        return Estimate(value, 0.0, math.inf, level)
    df = variance ** 2 / sum(v * v / d for v, d in terms if v > 0)  # Welch-Satterthwaite
    return Estimate(value, math.sqrt(variance) * scale, df, level)


def contrast(arms: Mapping[str, Sequence], coef: Mapping[str, float], level: float = LEVEL) -> Estimate:
    """sum_i coef[i] * (mean accuracy of arm i), arms scored on the same hands in the same column order."""
    arms = {name: _as_matrix(arms[name]) for name in coef}
    value, terms = _terms(arms, coef)
    return _estimate(value, terms, level=level)


def difference(a: Sequence, b: Sequence, level: float = LEVEL) -> Estimate:
    """Mean accuracy of arm a minus arm b, paired on their shared hands."""
    return contrast({"a": a, "b": b}, {"a": 1.0, "b": -1.0}, level)


def ratio(arms: Mapping[str, Sequence], numerator: Mapping[str, float], denominator: Mapping[str, float],
          level: float = LEVEL) -> Estimate:
    """A ratio of two contrasts over the same arms, by the delta method: the interval of the linearised
    contrast numerator - R * denominator, over |denominator|. The caller decides whether the denominator
    is beyond its own interval (else the ratio divides noise by noise)."""
    names = {*numerator, *denominator}
    arms = {name: _as_matrix(arms[name]) for name in names}
    top, _ = _terms(arms, numerator)
    bottom, _ = _terms(arms, denominator)
    if bottom == 0:
        return Estimate(math.nan, math.nan, math.nan, level)
    r = top / bottom
    linear = {name: numerator.get(name, 0.0) - r * denominator.get(name, 0.0) for name in names}
    _, terms = _terms(arms, linear)
    return _estimate(r, terms, scale=1 / abs(bottom), level=level)


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (family-wise error), in the order given."""
    order = sorted(range(len(p_values)), key=lambda i: p_values[i])
    adjusted, running = [0.0] * len(p_values), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(p_values) - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted
