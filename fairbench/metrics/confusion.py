"""Classifier-error correction: recover true group shares from observed ones.

With C[i, j] = P(predict j | true i), observed shares are q = C^T p. The corrected p is the
least-squares solution on the probability simplex (no anchor benchmark does this; reported
beside the raw shares, never instead of them).
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize


def confusion_from_counts(true_idx: np.ndarray, pred_idx: np.ndarray, k: int) -> np.ndarray:
    """Row-normalised confusion matrix from labelled predictions (rows with no data: identity)."""
    c = np.zeros((k, k))
    np.add.at(c, (np.asarray(true_idx), np.asarray(pred_idx)), 1.0)
    rows = c.sum(axis=1, keepdims=True)
    return np.where(rows > 0, c / np.where(rows > 0, rows, 1), np.eye(k))


def correct_shares(observed: np.ndarray, confusion: np.ndarray) -> np.ndarray:
    """argmin_p ||C^T p - q||^2 subject to p >= 0, sum p = 1."""
    q = np.asarray(observed, dtype=np.float64)
    ct = np.asarray(confusion, dtype=np.float64).T
    k = len(q)
    if ct.shape != (k, k):
        raise ValueError(f"confusion matrix must be {k} x {k}, got {confusion.shape}")
    x0 = np.clip(np.linalg.lstsq(ct, q, rcond=None)[0], 0, None)
    x0 = x0 / x0.sum() if x0.sum() > 0 else np.full(k, 1 / k)
    res = minimize(
        lambda p: np.sum((ct @ p - q) ** 2),
        x0,
        jac=lambda p: 2 * ct.T @ (ct @ p - q),
        bounds=[(0.0, 1.0)] * k,
        constraints=[{"type": "eq", "fun": lambda p: p.sum() - 1.0, "jac": lambda p: np.ones_like(p)}],
        method="SLSQP",
        options={"ftol": 1e-12, "maxiter": 200},
    )
    p = np.clip(res.x, 0, None)
    return p / p.sum()


def correct_shares_many(observed: np.ndarray, confusion: np.ndarray) -> np.ndarray:
    """correct_shares over rows (M, K); closed form at K = 2 (the line through the two rows of C^T)."""
    observed = np.asarray(observed, dtype=np.float64)
    if observed.shape[-1] == 2:
        c = np.asarray(confusion, dtype=np.float64)
        denom = c[0, 0] - c[1, 0]
        p = np.clip((observed[:, 0] - c[1, 0]) / denom, 0, 1) if abs(denom) > 1e-12 else np.full(len(observed), 0.5)
        return np.stack([p, 1 - p], axis=1)
    # C's rows sum to 1, so sum(C^T p) = sum(p): the unconstrained solution already sums to 1, and where
    # it is also non-negative it is the simplex solution; only the other rows need the solver
    out = np.empty_like(observed)
    ct = np.asarray(confusion, dtype=np.float64).T
    inside = np.zeros(len(observed), dtype=bool)
    if np.linalg.matrix_rank(ct) == ct.shape[0]:
        direct = np.linalg.solve(ct, observed.T).T
        inside = (direct >= 0).all(axis=1)
        out[inside] = direct[inside]
    for i in np.flatnonzero(~inside):
        out[i] = correct_shares(observed[i], confusion)
    return out


def corrected_share_interval(counts: np.ndarray, confusion_counts: np.ndarray | None, confusion: np.ndarray,
                             n_draws: int = 200, level: float = 0.95, seed: int = 0) -> dict[str, np.ndarray]:
    """Mean over prompts of the classifier-corrected shares, with a percentile interval that carries both
    the images' sampling error and, where held-out counts are given, the confusion matrix's own (as CLEAM
    does, Teo et al. 2023): each draw resamples every prompt's counts from its observed shares and every
    row of the confusion matrix from its posterior Dirichlet(held-out counts + 1/2)."""
    counts = np.asarray(counts, dtype=np.int64)
    counts = counts[counts.sum(axis=1) > 0]
    k = counts.shape[1]
    if not len(counts):
        return {key: np.full(k, np.nan) for key in ("value", "ci_low", "ci_high")}
    rng = np.random.default_rng(seed)
    n = counts.sum(axis=1)
    observed = counts / n[:, None]
    reps = np.empty((n_draws, k))
    for b in range(n_draws):
        c = confusion if confusion_counts is None else np.stack(
            [rng.dirichlet(np.asarray(row, dtype=np.float64) + 0.5) for row in confusion_counts])
        reps[b] = correct_shares_many(rng.multinomial(n, observed) / n[:, None], c).mean(axis=0)
    a = (1 - level) / 2
    low, high = np.quantile(reps, [a, 1 - a], axis=0)
    return {"value": correct_shares_many(observed, confusion).mean(axis=0), "ci_low": low, "ci_high": high}
