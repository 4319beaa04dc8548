"""Paired statistics of two runs over the same units (same prompt id and sample index, same seed).

Two runs of the same prompts share every image seed, so image i of one run pairs with image i of
the other. Every function here takes per-unit integer codes, aligned unit by unit:

    code in 0..K-1  the unit's group (its face's label), or -1 where there is no label (no face)

- `paired_bootstrap`: the change of an aggregate fairness metric, with a two-level paired
  bootstrap (prompts resampled, then sample indices within each prompt, the same on both sides).
- `flows`, `majority_flows`, `sign_test`: label flips by direction with exact sign (McNemar) tests.
- `swap_test`: an exact paired permutation test. Under "the two runs are the same pipeline up to
  numerical noise", the two labels of a unit are exchangeable, so swapping them leaves the joint
  distribution unchanged. The null distribution of a set of statistics is drawn by swapping units
  (all 2^D swap patterns of the D discordant units when D is small), and the statistics are combined
  by min-p, so one p-value covers them all.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import pandas as pd
from scipy.stats import binomtest

from fairbench.metrics.bootstrap import Estimate, _interval
from fairbench.metrics.fairness import FairnessMetric

NO_LABEL = -1
EXACT_MAX_DISCORDANT = 14  # 2^14 swap patterns enumerated exactly; beyond that, Monte Carlo
CountStat = Callable[[np.ndarray, np.ndarray], np.ndarray]


def label_codes(labels: pd.DataFrame, column: str, groups: Sequence[str]) -> np.ndarray:
    """Per-row group index of a label column, NO_LABEL where the image has no face or no label."""
    index = {g: i for i, g in enumerate(groups)}
    values = labels[column].where(labels["face"].astype(bool))
    return np.array([index.get(v, NO_LABEL) if isinstance(v, str) else NO_LABEL for v in values], dtype=np.int64)


def counts(codes: np.ndarray, prompt: np.ndarray, n_prompts: int, k: int) -> np.ndarray:
    """(P, K) group counts of labelled units per prompt."""
    ok = codes >= 0
    out = np.zeros((n_prompts, k), dtype=np.int64)
    np.add.at(out, (prompt[ok], codes[ok]), 1)
    return out


def aggregate(metric: FairnessMetric, c: np.ndarray) -> np.ndarray:
    """Mean over prompts (with at least one face) of a per-prompt metric; c is (..., P, K) counts."""
    c = np.asarray(c, dtype=np.float64)
    n = c.sum(axis=-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        per_prompt = metric(np.where(n > 0, c / np.where(n > 0, n, 1), 1.0 / c.shape[-1]))
    has = n[..., 0] > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(has, per_prompt, 0.0).sum(axis=-1) / has.sum(axis=-1)  # NaN where no prompt has a face


def paired_bootstrap(
    ref: np.ndarray, run: np.ndarray, prompt: np.ndarray, n_prompts: int, k: int, metric: FairnessMetric,
    n_boot: int = 1000, level: float = 0.95, seed: int = 0,
) -> Estimate:
    """Change (run - ref) of the aggregate metric, with a paired two-level bootstrap interval.

    Each replicate draws prompts with replacement, then sample positions within each drawn prompt
    with replacement; a drawn position contributes its unit's label on both sides.
    """
    return paired_bootstrap_many(ref, run, prompt, n_prompts, k, {"m": metric}, n_boot, level, seed)["m"]


def paired_bootstrap_many(
    ref: np.ndarray, run: np.ndarray, prompt: np.ndarray, n_prompts: int, k: int,
    metrics: dict[str, FairnessMetric], n_boot: int = 1000, level: float = 0.95, seed: int = 0,
) -> dict[str, Estimate]:
    """`paired_bootstrap` of several metrics over the same replicates (resampled once)."""
    sizes = np.bincount(prompt, minlength=n_prompts)
    width = int(sizes.max()) if len(sizes) else 0
    n = int((run >= 0).sum() + (ref >= 0).sum())
    if width == 0:
        return {name: Estimate(float("nan"), float("nan"), float("nan"), 0) for name in metrics}
    # (P, width) unit indices per prompt, padded with -1
    order = np.argsort(prompt, kind="stable")
    table = np.full((n_prompts, width), -1, dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    for p in range(n_prompts):
        table[p, : sizes[p]] = order[starts[p] : starts[p] + sizes[p]]
    rng = np.random.default_rng(seed)
    picked = rng.integers(0, n_prompts, size=(n_boot, n_prompts))
    pos = np.floor(rng.random((n_boot, n_prompts, width)) * sizes[picked][..., None]).astype(np.int64)
    pos = np.where(np.arange(width) < sizes[picked][..., None], pos, -1)
    units = np.where(pos >= 0, table[picked[..., None], np.maximum(pos, 0)], -1)
    groups = np.arange(k)

    def side(codes: np.ndarray) -> np.ndarray:
        lab = np.where(units >= 0, codes[np.maximum(units, 0)], NO_LABEL)
        return (lab[..., None] == groups).sum(axis=-2)  # (B, P, K)

    rep_run, rep_ref = side(run), side(ref)
    c_run, c_ref = counts(run, prompt, n_prompts, k), counts(ref, prompt, n_prompts, k)
    out = {}
    for name, metric in metrics.items():
        value = float(aggregate(metric, c_run) - aggregate(metric, c_ref))
        reps = np.asarray(aggregate(metric, rep_run) - aggregate(metric, rep_ref))
        out[name] = Estimate(value, *_interval(value, reps, level), n)
    return out


def share_metric(group: int, name: str) -> FairnessMetric:
    """The share of one group as a metric (face rate, family accuracy), for the paired bootstrap."""
    return FairnessMetric(name, lambda p, t: p[..., group], True, f"share of group {group}")


def sign_test(a: int, b: int) -> float:
    """Exact two-sided sign test (exact McNemar) of a vs b discordant pairs; 1.0 when there are none."""
    return float(binomtest(a, a + b, 0.5).pvalue) if a + b else 1.0


def transitions(ref: np.ndarray, run: np.ndarray, groups: Sequence[str]) -> pd.DataFrame:
    """Counts of (reference label -> run label) pairs, 'no face' included as a row and a column."""
    names = [*groups, "no face"]
    k = len(groups)
    table = np.zeros((k + 1, k + 1), dtype=np.int64)
    np.add.at(table, (np.where(ref >= 0, ref, k), np.where(run >= 0, run, k)), 1)
    return pd.DataFrame(table, index=pd.Index(names, name="from"), columns=pd.Index(names, name="to"))


@dataclass(frozen=True)
class Flow:
    """Labelled units that moved into or out of one group (both sides labelled), with a sign test."""

    group: str
    into: int
    out: int

    @property
    def p_value(self) -> float:
        """Exact two-sided sign test of into vs out."""
        return sign_test(self.into, self.out)

    def to_dict(self) -> dict:
        """Plain dict for JSON."""
        return {"group": self.group, "into": self.into, "out": self.out, "p_value": self.p_value}


def flows(ref: np.ndarray, run: np.ndarray, groups: Sequence[str]) -> list[Flow]:
    """Per group: units whose label moved into it and out of it (units labelled on both sides)."""
    both = (ref >= 0) & (run >= 0) & (ref != run)
    return [Flow(g, int((both & (run == i)).sum()), int((both & (ref == i)).sum())) for i, g in enumerate(groups)]


def majority_flows(ref: np.ndarray, run: np.ndarray, prompt: np.ndarray, n_prompts: int, k: int) -> Flow:
    """Flips toward / away from each prompt's majority group in the reference (prompts with a tie skipped)."""
    c = counts(ref, prompt, n_prompts, k)
    top = c.max(axis=1)
    unique = (c == top[:, None]).sum(axis=1) == 1
    majority = np.where(unique & (top > 0), c.argmax(axis=1), NO_LABEL)[prompt]
    both = (ref >= 0) & (run >= 0) & (ref != run) & (majority >= 0)
    return Flow("majority", int((both & (run == majority)).sum()), int((both & (ref == majority)).sum()))


def net_group_changes(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(R, K): change in each group's total count (a - b), from (R, P, K) counts."""
    return (a - b).sum(axis=-2)


def metric_change(metric: FairnessMetric) -> CountStat:
    """Statistic: change of the aggregate metric (a - b), from (R, P, K) counts."""
    return lambda a, b: aggregate(metric, a) - aggregate(metric, b)


def share_change(group: int) -> CountStat:
    """Statistic: change of one group's pooled share among labelled units (a - b)."""
    def stat(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        ta, tb = a.sum(axis=(-1, -2)), b.sum(axis=(-1, -2))
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.nan_to_num(a[..., group].sum(-1) / ta) - np.nan_to_num(b[..., group].sum(-1) / tb)
    return stat


@dataclass(frozen=True)
class SwapTest:
    """Result of the paired unit-swap permutation test of one quantity."""

    n_units: int
    n_discordant: int
    observed: dict[str, float]
    p_values: dict[str, float]
    p_value: float
    exact: bool
    n_permutations: int

    def to_dict(self) -> dict:
        """Plain dict for JSON."""
        return {"n_units": self.n_units, "n_discordant": self.n_discordant, "observed": self.observed,
                "p_values": self.p_values, "p_value": self.p_value, "exact": self.exact,
                "n_permutations": self.n_permutations}


def swap_patterns(d: int, n_perm: int, rng: np.random.Generator) -> tuple[np.ndarray, bool]:
    """(R, d) booleans (True = swap the unit); row 0 is the observed pattern (no swap)."""
    if d <= EXACT_MAX_DISCORDANT:
        return np.array(list(itertools.product([False, True], repeat=d)), dtype=bool).reshape(2 ** d, d), True
    return np.vstack([np.zeros((1, d), dtype=bool), rng.random((n_perm, d)) < 0.5]), False


def swap_test(
    ref: np.ndarray, run: np.ndarray, prompt: np.ndarray, n_prompts: int, k: int, stats: dict[str, CountStat],
    n_perm: int = 9999, seed: int = 0,
) -> SwapTest:
    """Paired permutation test: how extreme the run-vs-reference statistics are among unit swaps.

    Each statistic is antisymmetric (swapping every unit negates it), so |statistic| is tested
    two-sided; the per-statistic p-values are combined by min-p over the same swap patterns.
    """
    disc = np.flatnonzero(ref != run)
    base = counts(np.where(ref == run, ref, NO_LABEL), prompt, n_prompts, k)
    patterns, exact = swap_patterns(len(disc), n_perm, np.random.default_rng(seed))
    onehot_ref = np.zeros((len(disc), n_prompts, k))
    onehot_run = np.zeros((len(disc), n_prompts, k))
    for j, u in enumerate(disc):
        if ref[u] >= 0:
            onehot_ref[j, prompt[u], ref[u]] = 1
        if run[u] >= 0:
            onehot_run[j, prompt[u], run[u]] = 1
    w = patterns.astype(np.float64)  # 1 = swapped
    flat_ref, flat_run = onehot_ref.reshape(len(disc), n_prompts * k), onehot_run.reshape(len(disc), n_prompts * k)
    side_a = base + ((1 - w) @ flat_run + w @ flat_ref).reshape(-1, n_prompts, k)
    side_b = base + ((1 - w) @ flat_ref + w @ flat_run).reshape(-1, n_prompts, k)
    observed, p_values, per_stat = {}, {}, []
    for name, fn in stats.items():
        raw = np.nan_to_num(np.asarray(fn(side_a, side_b), dtype=np.float64))
        if raw.ndim == 2:  # a vector statistic (one change per group): its largest entry, with its sign
            raw = raw[np.arange(len(raw)), np.abs(raw).argmax(axis=1)]
        v = np.abs(raw)
        tol = 1e-9 * max(1.0, float(v.max()))
        # p of every pattern: the share of patterns at least as extreme as it
        p_all = (len(v) - np.searchsorted(np.sort(v), v - tol, side="left")) / len(v)
        per_stat.append(p_all)
        observed[name], p_values[name] = float(raw[0]), float(p_all[0])
    minp = np.min(np.vstack(per_stat), axis=0)
    p = float(np.mean(minp <= minp[0] * (1 + 1e-9)))
    return SwapTest(len(ref), len(disc), observed, p_values, p, exact, len(patterns))
