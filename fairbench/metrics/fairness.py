"""Fairness metrics of group shares, under their anchors' names (see docs/metrics.md).

Each metric is a pure function of shares p with shape (..., K) (rows sum to 1) and a target
distribution t (uniform unless given), vectorised over leading axes so bootstrap replicates
are computed in one call.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
from scipy.special import rel_entr

from fairbench.registry import Registry


def uniform(k: int) -> np.ndarray:
    """The uniform target over k groups."""
    return np.full(k, 1.0 / k)


def fairness_discrepancy(p: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Choi et al. 2020: L2 distance between shares and target, ||p - t||_2."""
    return np.linalg.norm(p - t, axis=-1)


def kl_to_target(p: np.ndarray, t: np.ndarray) -> np.ndarray:
    """ITI-GEN: KL(p || t) = sum_k p_k log(p_k / t_k), with 0 log 0 = 0."""
    return rel_entr(p, t).sum(axis=-1)


def mean_absolute_deviation(p: np.ndarray, t: np.ndarray) -> np.ndarray:
    """DALL-Eval MAD: mean_k |p_k - mean(p)|. For K = 2 it equals HEIM's |f_female - 0.5|."""
    return np.abs(p - p.mean(axis=-1, keepdims=True)).mean(axis=-1)


def heim_imbalance(p: np.ndarray, t: np.ndarray) -> np.ndarray:
    """HEIM: (1/K) sum_k |p_k - t_k| (gender_imbalance at K = 2, skin_tone_imbalance at K = 10)."""
    return np.abs(p - t).mean(axis=-1)


def entropy_severity(p: np.ndarray, t: np.ndarray) -> np.ndarray:
    """OpenBias: 1 - H(p) / log K (0 = uniform, 1 = a single group)."""
    k = p.shape[-1]
    h = -np.sum(np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0), axis=-1)
    return 1.0 - h / np.log(k)


def pairwise_gap(p: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Shen et al. 2024 bias: (1 / (K (K - 1))) sum_{i != j} |p_i - p_j|; |f_m - f_f| at K = 2."""
    k = p.shape[-1]
    diffs = np.abs(p[..., :, None] - p[..., None, :]).sum(axis=(-1, -2))
    return diffs / (k * (k - 1))


def dp_difference(p: np.ndarray, t: np.ndarray) -> np.ndarray:
    """fairlearn demographic parity difference on shares: max_k p_k - min_k p_k."""
    return p.max(axis=-1) - p.min(axis=-1)


def dp_ratio(p: np.ndarray, t: np.ndarray) -> np.ndarray:
    """fairlearn demographic parity ratio on shares: min_k p_k / max_k p_k."""
    return p.min(axis=-1) / p.max(axis=-1)


@dataclass(frozen=True)
class FairnessMetric:
    """A registered fairness metric."""

    name: str
    fn: Callable[[np.ndarray, np.ndarray], np.ndarray]
    higher_is_better: bool
    anchor: str

    def __call__(self, p: np.ndarray, t: np.ndarray | None = None) -> np.ndarray:
        p = np.asarray(p, dtype=np.float64)
        return self.fn(p, uniform(p.shape[-1]) if t is None else np.asarray(t, dtype=np.float64))


FAIRNESS_METRICS: Registry[FairnessMetric] = Registry("metric")
for _m in (
    FairnessMetric("fd", fairness_discrepancy, False, "Choi et al. 2020 (fairness discrepancy)"),
    FairnessMetric("kl", kl_to_target, False, "ITI-GEN (Zhang et al. 2023)"),
    FairnessMetric("mad", mean_absolute_deviation, False, "DALL-Eval (Cho et al. 2023)"),
    FairnessMetric("heim_imbalance", heim_imbalance, False, "HEIM (Lee et al. 2023)"),
    FairnessMetric("entropy_severity", entropy_severity, False, "OpenBias (D'Inca et al. 2024)"),
    FairnessMetric("bias_gap", pairwise_gap, False, "Shen et al. 2024 (ICLR)"),
    FairnessMetric("dp_difference", dp_difference, False, "fairlearn demographic_parity_difference"),
    FairnessMetric("dp_ratio", dp_ratio, True, "fairlearn demographic_parity_ratio"),
):
    FAIRNESS_METRICS.add(_m.name, _m, higher_is_better=_m.higher_is_better, anchor=_m.anchor)
