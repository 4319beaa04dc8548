"""Finite-sample floor, bias-corrected estimates with bias-aware intervals, per metric.

Every gap-type metric is the plug-in value g(p_hat) of a function that is not smooth at the
target, so E[g(p_hat)] > g(p) there: a perfectly fair generator reads the *floor*, not 0.

The corrected estimate of one prompt is a fixed function U(X) of its counts, designed so that
E_p[U(X)] stays within a known bound B of g(p) for *every* p (an affine estimator of bounded worst-case bias:
Donoho 1994, "Statistical estimation and optimal recovery"; for a nonsmooth functional such as
|p - c|, Cai & Low 2011, "Testing composite hypotheses, Hermite polynomials and optimal
estimation of a nonsmooth functional"). The design is a linear programme over U(0..n) for a
function of one binomial share; a metric of K > 2 groups is corrected where it is a sum of such
terms (per group, or per pair of groups through the pair's own count). The aggregate's interval
is bias-aware (Armstrong & Kolesar 2020, "Simple and honest confidence intervals in nonparametric
regression"): t * se over prompts plus the mean bias bound. No exactly unbiased estimator of
|2p - 1| exists at finite n (it is not a polynomial), hence the bound.
"""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable

import numpy as np
import scipy
from scipy.optimize import linprog
from scipy.special import gammaln, xlogy
from scipy.stats import binom
from scipy.stats import t as student_t

from fairbench import cache
from fairbench.errors import UserError
from fairbench.io import atomic_write_text
from fairbench.metrics.fairness import FAIRNESS_METRICS, uniform

# The design's bias bar, per p: at most max(BAR_ABS * range of g, BAR_REL * |plug-in bias at p|).
BAR_ABS = 0.02
BAR_REL = 0.25
# A pair term of a K > 2 bias_gap is designed at its own random size m = X_i + X_j; meeting
# BAR_REL at every m does not make the m-mixture meet it for the aggregate, so pair designs use a
# tighter relative bar (exact, K = 4 uniform, n = 16: mean bias 1.14x the aggregate's bar with a
# pair bar of 0.2, 0.83x with 0.1, at a 6 % larger standard deviation).
PAIR_BAR_REL = 0.1
# Variance control: |U(k+1) - U(k)| <= slope * (the plug-in's largest step); the first slope of
# this ladder at which the bar can be met is used.
SLOPES = (3.0, 6.0)
DESIGN_GRID = 401  # shares on which the programme constrains the bias
CHECK_GRID = 4001  # finer shares on which the reported bound is measured
MAX_ENUMERATED = 200_000  # count vectors enumerated exactly for a floor or a test; above, simulated
N_SIMULATED = 20_000
# Metrics of K > 2 groups that are sums of one-share or pair terms, with their scale and terms.
# entropy_severity = KL(p || uniform) / log K.
SEPARABLE = {"heim_imbalance": "abs", "mad": "abs_uniform", "kl": "xlogx", "entropy_severity": "entropy"}
# Bump when a design's programme or a term changes: designs are memoised on disk under a key holding it.
DESIGN_VERSION = 1


@dataclass(frozen=True)
class Design:
    """The corrected estimator of one function of a binomial share at sample size n."""

    values: np.ndarray  # U(k) for k = 0..n
    bound: float  # max over p of |E_p U - g(p)|
    slope: float  # the ladder value used
    meets_bar: bool


def _grid(size: int) -> np.ndarray:
    return np.linspace(0.0, 1.0, size)


def _term(kind: str, c: float) -> Callable[[np.ndarray], np.ndarray]:
    """One-share functions the designs are made for."""
    if kind == "abs":  # |p - c|
        return lambda p: np.abs(p - c)
    if kind == "xlogx":  # p log(p / c) - p + c: KL's term without its linear part, which sums to 0
        return lambda p: xlogy(p, p) - p * math.log(c) - p + c
    if kind.startswith("k2:"):  # a registered metric of two groups, target (c, 1 - c)
        metric = FAIRNESS_METRICS.get(kind[3:])
        target = np.array([c, 1 - c])
        return lambda p: metric(np.stack([p, 1 - p], axis=-1), target)
    raise ValueError(f"unknown term {kind!r}")


@lru_cache(maxsize=8192)
def design(kind: str, c: float, n: int, bar_abs: float = BAR_ABS, bar_rel: float = BAR_REL) -> Design:
    """The estimator U(0..n) of g(p) = term(kind, c) from X ~ Binomial(n, p) closest to the plug-in
    (in expected L1 over k) whose bias meets the bar at every p; if none does, the one whose bias
    is the smallest multiple of the bar."""
    # Each design is a linear programme (~0.1 s); a run needs about a hundred and every process would
    # solve them again, so they are memoised in fairbench's cache too. JSON floats round-trip exactly.
    path = _design_file(kind, c, n, bar_abs, bar_rel)
    cached = _read_design(path, n)
    if cached is not None:
        return cached
    d = _solve_design(kind, c, n, bar_abs, bar_rel)
    try:
        atomic_write_text(path, json.dumps({"values": d.values.tolist(), "bound": d.bound, "slope": d.slope,
                                            "meets_bar": d.meets_bar}))
    except UserError:  # a read-only cache costs time, never a result
        pass
    return d


def _design_file(kind: str, c: float, n: int, bar_abs: float, bar_rel: float) -> Path:
    spec = {"kind": kind, "c": repr(c), "n": n, "bar_abs": repr(bar_abs), "bar_rel": repr(bar_rel),
            "grids": [DESIGN_GRID, CHECK_GRID], "slopes": list(SLOPES), "version": DESIGN_VERSION,
            "scipy": scipy.__version__, "numpy": np.__version__}
    return cache.root() / "estimator-designs" / f"{cache.key(spec)}.json"


def _read_design(path: Path, n: int) -> Design | None:
    """A memoised design, or None where it is missing or malformed (then it is solved again)."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        values = np.asarray(raw["values"], dtype=np.float64)
        d = Design(values, float(raw["bound"]), float(raw["slope"]), bool(raw["meets_bar"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    ok = values.shape == (n + 1,) and np.isfinite(values).all() and math.isfinite(d.bound)
    return d if ok else None


def _solve_design(kind: str, c: float, n: int, bar_abs: float, bar_rel: float) -> Design:
    """design() without the memo: the linear programme itself."""
    g = _term(kind, c)
    k = np.arange(n + 1)
    plug = g(k / n) if n else np.zeros(1)
    p = _grid(DESIGN_GRID)
    pmf = binom.pmf(k[None, :], n, p[:, None])
    gp = g(p)
    spread = float(gp.max() - gp.min())
    if n == 0 or spread == 0:
        return Design(plug.astype(np.float64), 0.0, 0.0, True)
    allow = np.maximum(bar_abs * spread, bar_rel * np.abs(pmf @ plug - gp))
    step = float(np.abs(np.diff(plug)).max()) if n > 1 else spread
    for slope in SLOPES:
        values = _closest(pmf, gp, allow, slope * step, plug)
        if values is not None:
            return Design(values, bias_bound(values, g), slope, True)
    values = _smallest_bias(pmf, gp, allow, SLOPES[-1] * step)
    return Design(values, bias_bound(values, g), SLOPES[-1], False)


def _steps(m: int, width: int) -> np.ndarray:
    """Rows (U(k+1) - U(k)) over the first m of `width` variables."""
    diff = np.zeros((m - 1, width))
    diff[np.arange(m - 1), np.arange(m - 1)] = -1.0
    diff[np.arange(m - 1), np.arange(1, m)] = 1.0
    return diff


def _closest(pmf: np.ndarray, gp: np.ndarray, allow: np.ndarray, max_step: float,
             plug: np.ndarray) -> np.ndarray | None:
    """min sum_k |U(k) - plug(k)| s.t. |pmf @ U - g| <= allow, |U(k+1) - U(k)| <= max_step; None if infeasible."""
    grid, m = pmf.shape
    eye, zeros, diff = np.eye(m), np.zeros((grid, m)), _steps(m, 2 * m)
    a_ub = np.vstack([np.hstack([pmf, zeros]), np.hstack([-pmf, zeros]), diff, -diff,
                      np.hstack([eye, -eye]), np.hstack([-eye, -eye])])
    b_ub = np.concatenate([gp + allow, allow - gp, np.full(2 * (m - 1), max_step), plug, -plug])
    cost = np.concatenate([np.zeros(m), np.ones(m)])
    res = linprog(cost, A_ub=a_ub, b_ub=b_ub, bounds=[(None, None)] * m + [(0, None)] * m, method="highs")
    return res.x[:m] if res.status == 0 else None


def _smallest_bias(pmf: np.ndarray, gp: np.ndarray, allow: np.ndarray, max_step: float) -> np.ndarray:
    """min t s.t. |pmf @ U - g| <= t * allow and |U(k+1) - U(k)| <= max_step."""
    grid, m = pmf.shape
    diff = _steps(m, m + 1)
    a_ub = np.vstack([np.hstack([pmf, -allow[:, None]]), np.hstack([-pmf, -allow[:, None]]), diff, -diff])
    b_ub = np.concatenate([gp, -gp, np.full(2 * (m - 1), max_step)])
    cost = np.zeros(m + 1)
    cost[-1] = 1.0
    res = linprog(cost, A_ub=a_ub, b_ub=b_ub, bounds=[(None, None)] * m + [(0, None)], method="highs")
    if res.status != 0:  # the plug-in is always feasible, so this is a solver failure (a bug)
        raise RuntimeError(f"estimator design failed: {res.message}")
    return res.x[:-1]


def bias_bound(values: np.ndarray, g: Callable[[np.ndarray], np.ndarray]) -> float:
    """max over a fine grid of shares of |E_p U(X) - g(p)|, X ~ Binomial(len(values) - 1, p)."""
    n = len(values) - 1
    p = _grid(CHECK_GRID)
    return float(np.abs(binom.pmf(np.arange(n + 1)[None, :], n, p[:, None]) @ values - g(p)).max())


@lru_cache(maxsize=4096)
def _pair_bound(n: int) -> float:
    """Bias bound of the pair term (m / n) V_m(X_i) of |p_i - p_j|, m = X_i + X_j ~ Binomial(n, s)."""
    bounds = np.array([0.0] + [2 * design("abs", 0.5, m, BAR_ABS, PAIR_BAR_REL).bound for m in range(1, n + 1)])
    s = _grid(DESIGN_GRID)
    m = np.arange(n + 1)
    return float((binom.pmf(m[None, :], n, s[:, None]) @ (m / n * bounds)).max())


def correctable(metric: str, k: int) -> bool:
    """Whether `metric` of k groups has a corrected estimate (K = 2: all; K > 2: sums of terms)."""
    return k == 2 or metric in SEPARABLE or metric == "bias_gap"


@lru_cache(maxsize=1024)
def _pair_table(n: int) -> np.ndarray:
    """T[m, x] = 2 V_m(x): the pair estimator of |2r - 1| from x of m, for m <= n (0 elsewhere)."""
    table = np.zeros((n + 1, n + 1))
    for m in range(1, n + 1):
        table[m, : m + 1] = 2 * design("abs", 0.5, m, BAR_ABS, PAIR_BAR_REL).values
    return table


def corrected_values(counts: np.ndarray, metric: str, target: np.ndarray) -> tuple[np.ndarray, float]:
    """Corrected estimates of count vectors (M, K) that share one n > 0, and their bias bound."""
    counts = np.asarray(counts, dtype=np.int64)
    n, k = int(counts[0].sum()), counts.shape[1]
    if k == 2:
        d = design(f"k2:{metric}", float(target[0]), n)
        return d.values[counts[:, 0]], d.bound
    if metric == "bias_gap":
        table, total = _pair_table(n), 0.0
        for i, j in itertools.combinations(range(k), 2):
            m = counts[:, i] + counts[:, j]
            total = total + m / n * table[m, counts[:, i]]
        scale = 2 / (k * (k - 1))
        return scale * total, scale * math.comb(k, 2) * _pair_bound(n)
    kind = SEPARABLE[metric]
    centres = np.full(k, 1.0 / k) if kind in ("abs_uniform", "entropy") else target
    one = "abs" if kind.startswith("abs") else "xlogx"
    # kl sums K terms (the bar's absolute part is shared among them); the others average them
    bar = BAR_ABS if kind.startswith("abs") else BAR_ABS / k
    parts = [design(one, float(c), n, bar) for c in centres]
    total = sum(d.values[counts[:, g]] for g, d in enumerate(parts))
    bound = sum(d.bound for d in parts)
    scale = {"abs": 1 / k, "abs_uniform": 1 / k, "xlogx": 1.0, "entropy": 1 / math.log(k)}[kind]
    return scale * total, scale * bound


def corrected_value(counts: np.ndarray, metric: str, target: np.ndarray) -> tuple[float, float]:
    """(corrected estimate, its bias bound) of one prompt's counts; (nan, nan) where not correctable."""
    counts = np.asarray(counts, dtype=np.int64)
    if counts.sum() == 0 or not correctable(metric, len(counts)):
        return float("nan"), float("nan")
    values, bound = corrected_values(counts[None, :], metric, target)
    return float(values[0]), bound


def smoothed_shares(counts: np.ndarray) -> np.ndarray:
    """(X + 1/2) / (n + K/2): shares off the boundary (Jeffreys), so a prompt whose faces all fell in
    one group still has a sampling variance."""
    counts = np.asarray(counts, dtype=np.float64)
    return (counts + 0.5) / (counts.sum(axis=-1, keepdims=True) + 0.5 * counts.shape[-1])


def sampling_variance(counts: np.ndarray, metric: str, target: np.ndarray, n_sim: int, seed: int) -> np.ndarray:
    """Variance of the corrected estimate under each row's smoothed shares, for rows (M, K) sharing one n:
    exact at K = 2, else simulated (n_sim seeded draws per row)."""
    counts = np.asarray(counts, dtype=np.int64)
    n, k = int(counts[0].sum()), counts.shape[1]
    shares = smoothed_shares(counts)
    if k == 2:
        table = design(f"k2:{metric}", float(target[0]), n).values
        pmf = binom.pmf(np.arange(n + 1)[None, :], n, shares[:, :1])
        return np.maximum(0.0, pmf @ table**2 - (pmf @ table) ** 2)
    draws = np.random.default_rng(seed).multinomial(n, shares, size=(n_sim, len(counts)))  # (S, M, K)
    values, _ = corrected_values(draws.reshape(-1, k), metric, target)
    return values.reshape(n_sim, len(counts)).var(axis=0)


def corrected_sd(counts: np.ndarray, metric: str, target: np.ndarray, n_sim: int, seed: int) -> float:
    """Standard deviation of one prompt's corrected estimate under its smoothed shares."""
    return float(np.sqrt(max(0.0, sampling_variance(np.asarray(counts)[None, :], metric, target, n_sim, seed)[0])))


@dataclass(frozen=True)
class Corrected:
    """A bias-corrected estimate with its bias-aware interval and the bias bound inside it."""

    value: float
    low: float
    high: float
    bias_bound: float

    def to_dict(self) -> dict:
        """Plain dict for metrics.json."""
        return {"value": self.value, "ci_low": self.low, "ci_high": self.high, "bias_bound": self.bias_bound}


NAN = Corrected(float("nan"), float("nan"), float("nan"), float("nan"))


def metric_range(metric: str, target: np.ndarray) -> tuple[float, float]:
    """The values `metric` can take against `target`: between its lowest value (at the target, or at uniform
    shares for the metrics that ignore the target) and its value at the most one-sided shares (each metric is
    convex in the shares, so it peaks at a vertex of the simplex; dp_ratio, the one score, is 0 there and 1 at
    uniform shares)."""
    return _metric_range(metric, tuple(float(x) for x in target))


@lru_cache(maxsize=256)
def _metric_range(metric: str, target_shares: tuple[float, ...]) -> tuple[float, float]:
    target, k = np.array(target_shares), len(target_shares)  # cached: every prompt of a run asks the same
    values = FAIRNESS_METRICS.get(metric)(np.vstack([target, uniform(k), np.eye(k)]), target)
    return float(np.nanmin(values)), float(np.nanmax(values))


def within(value: float, half: float, bound: float, span: tuple[float, float]) -> Corrected:
    """value +- half, cut to the values the quantity can take (stretched to the estimate where the estimate lies
    beyond them, so an interval always holds its estimate): the truth lies in `span`, so the cut interval covers
    it exactly when the uncut one does (coverage unchanged)."""
    return Corrected(value, max(value - half, min(span[0], value)), min(value + half, max(span[1], value)), bound)


def prompt_corrected(counts: np.ndarray, metric: str, target: np.ndarray | None = None, n_sim: int = 1000,
                     level: float = 0.95, seed: int = 0) -> Corrected:
    """One prompt: U(X) +- (z * sd under the observed shares + bias bound); the sd is simulated."""
    counts = np.asarray(counts, dtype=np.int64)
    target = uniform(len(counts)) if target is None else np.asarray(target, dtype=np.float64)
    value, bound = corrected_value(counts, metric, target)
    if not np.isfinite(value):
        return NAN
    z = float(student_t.ppf((1 + level) / 2, np.inf))
    half = z * corrected_sd(counts, metric, target, n_sim, seed) + bound
    return within(value, half, bound, metric_range(metric, target))


def aggregate_corrected(counts: np.ndarray, metric: str, target: np.ndarray | None = None, n_sim: int = 1000,
                        level: float = 0.95, seed: int = 0) -> Corrected:
    """Mean over prompts (P, K) of the corrected estimate: t(P - 1) * se over prompts + mean bound."""
    counts = np.asarray(counts, dtype=np.int64)
    counts = counts[counts.sum(axis=1) > 0]
    if not len(counts) or not correctable(metric, counts.shape[1]):
        return NAN
    target = uniform(counts.shape[1]) if target is None else np.asarray(target, dtype=np.float64)
    if len(counts) == 1:
        return prompt_corrected(counts[0], metric, target, n_sim, level, seed)
    values, bounds, model = per_prompt_values(counts, metric, target, variance=(n_sim, seed))
    value, bound = float(values.mean()), float(bounds.mean())
    # the spread over prompts, or the sampling spread alone where prompts agree too well to show it
    se = math.sqrt(max(float(values.var(ddof=1)), float(np.mean(model))) / len(values))
    half = float(student_t.ppf((1 + level) / 2, len(values) - 1)) * se + bound
    return within(value, half, bound, metric_range(metric, target))


def per_prompt_values(counts: np.ndarray, metric: str, target: np.ndarray,
                      variance: tuple[int, int] | None = None) -> tuple[np.ndarray, ...]:
    """Corrected estimates and bias bounds of prompts (P, K) with faces, grouped by face count; with
    variance=(n_sim, seed), also each one's sampling variance."""
    n = counts.sum(axis=1)
    values, bounds, var = np.empty(len(counts)), np.empty(len(counts)), np.empty(len(counts))
    for i, size in enumerate(np.unique(n)):
        rows = n == size
        values[rows], bounds[rows] = corrected_values(counts[rows], metric, target)
        if variance:
            var[rows] = sampling_variance(counts[rows], metric, target, variance[0], variance[1] + i)
    return (values, bounds, var) if variance else (values, bounds)


# -- the floor --------------------------------------------------------------------------------


def compositions(n: int, k: int) -> np.ndarray:
    """Every count vector of k non-negative integers summing to n, shape (C(n + k - 1, k - 1), k)."""
    cuts = np.array(list(itertools.combinations(range(n + k - 1), k - 1)), dtype=np.int64).reshape(-1, k - 1)
    edges = np.hstack([np.full((len(cuts), 1), -1), cuts, np.full((len(cuts), 1), n + k - 1)])
    return np.diff(edges, axis=1) - 1


def log_pmf(counts: np.ndarray, shares: np.ndarray) -> np.ndarray:
    """log Multinomial(counts; n, shares), broadcast over leading axes."""
    n = counts.sum(axis=-1)
    return gammaln(n + 1) - gammaln(counts + 1).sum(axis=-1) + xlogy(counts, shares).sum(axis=-1)


def enumerable(n: int, k: int) -> bool:
    """Whether the count vectors of (n, k) are few enough to enumerate exactly."""
    return math.comb(n + k - 1, k - 1) <= MAX_ENUMERATED


@lru_cache(maxsize=4096)
def _floor(metric: str, n: int, target: tuple[float, ...], seed: int) -> float:
    t = np.array(target)
    fn = FAIRNESS_METRICS.get(metric)
    if enumerable(n, len(t)):
        counts = compositions(n, len(t))
        return float(np.exp(log_pmf(counts, t)) @ fn(counts / n, t))
    draws = np.random.default_rng(seed).multinomial(n, t, size=N_SIMULATED)
    return float(fn(draws / n, t).mean())


def floor(metric: str, n: int, target: np.ndarray, seed: int = 0) -> float:
    """E[metric(p_hat)] for a generator whose true shares equal the target, at n faces.

    Exact (every count vector enumerated) where that is cheap, else simulated with `seed`."""
    if n == 0:
        return float("nan")
    return _floor(metric, n, tuple(float(x) for x in target), seed)


def mean_floor(counts: np.ndarray, metric: str, target: np.ndarray | None = None, seed: int = 0) -> float:
    """The aggregate's floor: the mean over prompts with faces of each one's floor at its face count."""
    counts = np.asarray(counts)
    target = uniform(counts.shape[1]) if target is None else target
    sizes = [int(n) for n in counts.sum(axis=1) if n > 0]
    return float(np.mean([floor(metric, n, target, seed) for n in sizes])) if sizes else float("nan")


def paired_corrected(before: np.ndarray, after: np.ndarray, metric: str, target: np.ndarray | None = None,
                     level: float = 0.95) -> Corrected:
    """Change of the corrected aggregate between two runs of the same prompts (P, K counts each, any n):
    the mean per-prompt difference, t(P - 1) * se of the differences + both sides' mean bias bounds."""
    before, after = np.asarray(before, dtype=np.int64), np.asarray(after, dtype=np.int64)
    both = (before.sum(axis=1) > 0) & (after.sum(axis=1) > 0)
    if both.sum() < 2 or not correctable(metric, before.shape[1]):
        return NAN
    target = uniform(before.shape[1]) if target is None else np.asarray(target, dtype=np.float64)
    (vb, bb), (va, ba) = (per_prompt_values(c[both], metric, target) for c in (before, after))
    diff = va - vb
    se = float(diff.std(ddof=1)) / math.sqrt(len(diff))
    bound = float(bb.mean() + ba.mean())
    half = float(student_t.ppf((1 + level) / 2, len(diff) - 1)) * se + bound
    lo, hi = metric_range(metric, target)
    return within(float(diff.mean()), half, bound, (lo - hi, hi - lo))
