"""Bootstrap intervals for share-based metrics, per prompt and over prompts.

Resampling n labels with replacement from a prompt's images is exactly a draw of counts from
Multinomial(n, p_hat), so replicates are drawn as multinomial counts: the same bootstrap,
vectorised, with no per-image loop.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fairbench.metrics.fairness import FairnessMetric


@dataclass(frozen=True)
class Estimate:
    """A point estimate with its bootstrap interval and sample size."""

    value: float
    low: float
    high: float
    n: int

    def to_dict(self) -> dict:
        """Plain dict for metrics.json."""
        return {"value": self.value, "ci_low": self.low, "ci_high": self.high, "n": self.n}


def _interval(value: float, reps: np.ndarray, level: float) -> tuple[float, float]:
    reps = reps[np.isfinite(reps)]
    if not np.isfinite(value) or reps.size == 0:
        return float("nan"), float("nan")
    a = (1 - level) / 2
    lo, hi = np.quantile(reps, [a, 1 - a])
    # A percentile interval can exclude its own estimate for statistics at a boundary (KL at
    # p = U); extend it so no table shows an estimate outside its interval.
    return float(min(lo, value)), float(max(hi, value))


def shares(counts: np.ndarray) -> np.ndarray:
    """Counts (..., K) -> shares; rows with no observations become NaN."""
    counts = np.asarray(counts, dtype=np.float64)
    total = counts.sum(axis=-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, counts / np.where(total > 0, total, 1), np.nan)


def prompt_estimate(
    counts: np.ndarray, metric: FairnessMetric, target: np.ndarray | None = None,
    n_boot: int = 1000, level: float = 0.95, seed: int = 0,
) -> Estimate:
    """Metric of one prompt's group counts, with a bootstrap interval over its images."""
    counts = np.asarray(counts)
    n = int(counts.sum())
    if n == 0:
        return Estimate(float("nan"), float("nan"), float("nan"), 0)
    p = counts / n
    value = float(metric(p, target))
    rng = np.random.default_rng(seed)
    reps = metric(rng.multinomial(n, p, size=n_boot) / n, target)
    return Estimate(value, *_interval(value, reps, level), n)


def aggregate_estimate(
    counts: np.ndarray, metric: FairnessMetric, target: np.ndarray | None = None,
    n_boot: int = 1000, level: float = 0.95, seed: int = 0,
) -> Estimate:
    """Mean of the per-prompt metric over prompts (P, K counts), with a two-level bootstrap:
    prompts resampled with replacement, then images within each prompt."""
    counts = np.asarray(counts)
    counts = counts[counts.sum(axis=1) > 0]
    if len(counts) == 0:
        return Estimate(float("nan"), float("nan"), float("nan"), 0)
    n = counts.sum(axis=1)
    p = counts / n[:, None]
    value = float(np.mean(metric(p, target)))
    rng = np.random.default_rng(seed)
    resampled = rng.multinomial(n, p, size=(n_boot, len(n))) / n[None, :, None]  # (B, P, K)
    per_prompt = metric(resampled, target)  # (B, P)
    pick = rng.integers(0, len(n), size=(n_boot, len(n)))
    reps = np.take_along_axis(per_prompt, pick, axis=1).mean(axis=1)
    return Estimate(value, *_interval(value, reps, level), int(n.sum()))
