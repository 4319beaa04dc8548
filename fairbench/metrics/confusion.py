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
