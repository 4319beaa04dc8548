"""Embedding-distance fairness: how far a prompt's conditioning leans toward one group's variant of it.

In the spirit of Fair Mapping's "FairScore" (its paper's first version; ICLR 2024 reviews, OpenReview
vDJ4tzczlG), which the reviews describe as embedding-distance based and close to its training loss
L_fair = sum_j (d(v, v_j) - mean_k d(v, v_k))^2. Here v is a prompt's conditioning as the method hands
it to the denoiser and v_j the unmodified model's conditioning of the same prompt naming group j
("a photo of the face of a female nurse"); d is Fair Mapping's distance (per token, averaged over
tokens). Per prompt, the spread is scale-free, so a method cannot lower it by shrinking every
embedding: mean_j |d_j - mean_k d_k| / mean_k d_k, 0 when v is equidistant from every group's variant.
The paper's exact formula is not published; this is fairbench's definition (docs/metrics.md).
"""

from __future__ import annotations

import math

import numpy as np
from scipy.stats import t as student_t


def distance_spread(d: np.ndarray) -> np.ndarray:
    """Per row of distances (..., K): mean_j |d_j - mean_k d_k| / mean_k d_k."""
    d = np.asarray(d, dtype=np.float64)
    mean = d.mean(axis=-1, keepdims=True)
    return (np.abs(d - mean).mean(axis=-1, keepdims=True) / mean)[..., 0]


def embedding_gap(per_prompt: np.ndarray, level: float = 0.95) -> dict[str, float]:
    """Mean over prompts with its t(P - 1) interval (the prompts are the sampling units)."""
    values = np.asarray(per_prompt, dtype=np.float64)
    value = float(values.mean())
    if len(values) < 2:
        return {"value": value, "ci_low": float("nan"), "ci_high": float("nan"), "n_prompts": int(len(values))}
    half = float(student_t.ppf((1 + level) / 2, len(values) - 1)) * math.sqrt(float(values.var(ddof=1)) / len(values))
    return {"value": value, "ci_low": value - half, "ci_high": value + half, "n_prompts": int(len(values))}
