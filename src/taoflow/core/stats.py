"""Uncertainty for evaluation numbers: bootstrap CIs over items, paired comparisons, McNemar.

Every benchmark number taoflow reports is a mean of per-item scores, so its uncertainty is that
of resampling the items (prompts): a percentile bootstrap, seeded so the same scores give the
same interval. Two models compared on the same items are compared *paired* (per-item
differences), which cancels item difficulty and is what makes "better" decidable with a few
hundred items: a model is better when the CI of the mean difference lies above zero.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from taoflow.core.lazy import lazy_module

_stats = lazy_module("scipy.stats")  # imported on first use: SciPy is seconds of start-up


@dataclass(frozen=True)
class Estimate:
    """A mean over ``n`` items with its bootstrap confidence interval."""

    value: float
    ci_low: float
    ci_high: float
    n: int

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)


def _as_array(values: Sequence[float] | np.ndarray) -> np.ndarray:
    array = np.asarray(values, dtype=float)
    if array.ndim != 1:
        raise ValueError(f"expected one score per item (1-D), got shape {array.shape}")
    if np.isnan(array).any():
        raise ValueError("per-item scores contain NaN; drop or score those items first")
    return array


def bootstrap_ci(
    values: Sequence[float] | np.ndarray,
    *,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> Estimate:
    """Mean of per-item ``values`` with a seeded percentile-bootstrap CI over items.

    Percentile rather than BCa: BCa is undefined when every resample gives the same mean
    (all-correct or all-wrong items), which is common for small benchmarks.
    With fewer than two items there is nothing to resample: the interval is the value itself.
    """
    array = _as_array(values)
    n = len(array)
    if n == 0:
        return Estimate(math.nan, math.nan, math.nan, 0)
    mean = float(array.mean())
    if n < 2 or np.all(array == array[0]):
        return Estimate(mean, mean, mean, n)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=RuntimeWarning)
        result = _stats.bootstrap(
            (array,),
            np.mean,
            n_resamples=n_resamples,
            confidence_level=confidence,
            method="percentile",
            vectorized=True,
            rng=np.random.default_rng(seed),
        )
    low, high = result.confidence_interval
    return Estimate(mean, float(low), float(high), n)


@dataclass(frozen=True)
class PairedComparison:
    """Mean per-item difference ``a - b`` with its CI, and the counts behind it."""

    diff: float
    ci_low: float
    ci_high: float
    n: int
    wins: int  # items where a scored higher
    losses: int  # items where b scored higher
    ties: int
    p_value: float | None = None  # exact McNemar, when both score vectors are binary

    @property
    def better(self) -> bool:
        """``a`` is better than ``b``: the whole interval of the difference is above zero."""
        return self.ci_low > 0

    @property
    def worse(self) -> bool:
        return self.ci_high < 0

    def as_dict(self) -> dict[str, float | int | bool | None]:
        return {**asdict(self), "better": self.better, "worse": self.worse}


def mcnemar_exact(a: Sequence[float], b: Sequence[float]) -> tuple[int, int, float]:
    """Exact McNemar test on paired binary outcomes: (a-only correct, b-only correct, p-value).

    Only discordant items carry information; under "no difference" each is a fair coin, so the
    p-value is a two-sided binomial test on them (exact, unlike the chi-square version, which is
    wrong for the small discordant counts typical here).
    """
    left, right = _as_array(a), _as_array(b)
    if left.shape != right.shape:
        raise ValueError(f"paired scores differ in length: {len(left)} vs {len(right)}")
    if not (np.isin(left, (0, 1)).all() and np.isin(right, (0, 1)).all()):
        raise ValueError("McNemar needs binary (0/1) per-item outcomes")
    wins = int(((left == 1) & (right == 0)).sum())
    losses = int(((left == 0) & (right == 1)).sum())
    if wins + losses == 0:
        return wins, losses, 1.0
    return wins, losses, float(_stats.binomtest(wins, wins + losses, 0.5).pvalue)


def paired_comparison(
    a: Sequence[float] | np.ndarray,
    b: Sequence[float] | np.ndarray,
    *,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> PairedComparison:
    """Compare two models' scores on the same items (same order): bootstrap CI of ``a - b``.

    Adds the exact McNemar p-value when both are 0/1 outcomes (e.g. greedy accuracy).
    """
    left, right = _as_array(a), _as_array(b)
    if left.shape != right.shape:
        raise ValueError(f"paired scores differ in length: {len(left)} vs {len(right)}")
    estimate = bootstrap_ci(left - right, n_resamples=n_resamples, confidence=confidence, seed=seed)
    p_value = None
    if np.isin(left, (0, 1)).all() and np.isin(right, (0, 1)).all():
        p_value = mcnemar_exact(left, right)[2]
    return PairedComparison(
        diff=estimate.value,
        ci_low=estimate.ci_low,
        ci_high=estimate.ci_high,
        n=estimate.n,
        wins=int((left > right).sum()),
        losses=int((left < right).sum()),
        ties=int((left == right).sum()),
        p_value=p_value,
    )


def win_scores(a: Sequence[float], b: Sequence[float]) -> np.ndarray:
    """Per-item outcome of ``a`` against ``b``: 1 win, 0.5 tie, 0 loss (its mean is the win rate)."""
    left, right = _as_array(a), _as_array(b)
    if left.shape != right.shape:
        raise ValueError(f"paired scores differ in length: {len(left)} vs {len(right)}")
    return np.where(left > right, 1.0, np.where(left < right, 0.0, 0.5))


__all__ = [
    "Estimate",
    "PairedComparison",
    "bootstrap_ci",
    "mcnemar_exact",
    "paired_comparison",
    "win_scores",
]
