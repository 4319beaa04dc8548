"""Per-prompt skew test: an exact test of each prompt's group counts against the target, with
Benjamini-Hochberg control of the false discovery rate over the prompts. A statement with no floor."""

from __future__ import annotations

from typing import Any

import numpy as np

from fairbench.metrics.correction import N_SIMULATED, log_pmf, compositions, enumerable

# Probabilities within this relative distance of the observed one count as "as likely" (the
# tolerance scipy.stats.binomtest uses, so K = 2 agrees with it).
RELATIVE_TOLERANCE = 1 + 1e-7


def exact_test(counts: np.ndarray, target: np.ndarray, seed: int = 0) -> float:
    """Two-sided exact multinomial test: P(a count vector no more likely than the observed one).

    Every count vector is enumerated where that is cheap (at K = 2 this is the binomial test);
    above, a Monte Carlo p-value (1 + hits) / (1 + draws) from N_SIMULATED seeded draws."""
    counts = np.asarray(counts, dtype=np.int64)
    target = np.asarray(target, dtype=np.float64)
    n, k = int(counts.sum()), len(counts)
    if n == 0:
        return float("nan")
    observed = log_pmf(counts, target)
    if enumerable(n, k):
        log_p = log_pmf(compositions(n, k), target)
        return float(min(1.0, np.exp(log_p[log_p <= observed + np.log(RELATIVE_TOLERANCE)]).sum()))
    draws = np.random.default_rng(seed).multinomial(n, target, size=N_SIMULATED)
    hits = int((log_pmf(draws, target) <= observed + np.log(RELATIVE_TOLERANCE)).sum())
    return (1 + hits) / (1 + N_SIMULATED)


def benjamini_hochberg(p_values: np.ndarray) -> np.ndarray:
    """BH-adjusted p-values (q-values); NaN stays NaN and is not counted among the tests.

    Written out (six lines) because the run needs the adjusted values and the NaN handling;
    checked against scipy.stats.false_discovery_control in the tests."""
    p = np.asarray(p_values, dtype=np.float64)
    out = np.full_like(p, np.nan)
    ok = np.flatnonzero(np.isfinite(p))
    order = ok[np.argsort(p[ok], kind="stable")]
    m = len(order)
    adjusted = p[order] * m / np.arange(1, m + 1)
    out[order] = np.minimum(1.0, np.minimum.accumulate(adjusted[::-1])[::-1])
    return out


def skew_test(counts: np.ndarray, prompt_ids: list[str], target: np.ndarray, q: float = 0.05,
              seed: int = 0) -> dict[str, Any]:
    """Every prompt's exact test, BH at level q: which prompts are significantly skewed."""
    p_values = np.array([exact_test(c, target, seed + i) for i, c in enumerate(np.asarray(counts))])
    q_values = benjamini_hochberg(p_values)
    skewed = [pid for pid, qv in zip(prompt_ids, q_values) if np.isfinite(qv) and qv <= q]
    return {"q": q, "n_tested": int(np.isfinite(p_values).sum()), "n_skewed": len(skewed), "skewed": skewed,
            "p_values": p_values.tolist(), "q_values": q_values.tolist(),
            "test": "exact multinomial (binomial at K = 2), Benjamini-Hochberg over prompts"}
