"""Paired statistics: golden values by hand, and agreement with independent computations."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy.stats import binomtest

from fairbench.metrics.bootstrap import aggregate_estimate
from fairbench.metrics.fairness import FAIRNESS_METRICS
from fairbench.metrics.paired import (aggregate, counts, flows, majority_flows, metric_change, net_group_changes,
                                      paired_bootstrap, sign_test, swap_test, transitions)

GAP = FAIRNESS_METRICS.get("bias_gap")
KL = FAIRNESS_METRICS.get("kl")


def test_paired_bootstrap_golden_two_images():
    # one prompt, baseline [m, m], method [m, f]: gap 1 -> 0, change -1. Paired resamples of the two
    # positions: (0,0) and (1,1) give gap 1 on both sides (change 0); (0,1), (1,0) give -1. So the
    # replicate distribution is {0, -1} with probability 1/2 each: a 95 % interval of [-1, 0].
    est = paired_bootstrap(np.array([0, 0]), np.array([0, 1]), np.array([0, 0]), 1, 2, GAP, n_boot=4000)
    assert est.value == -1.0 and (est.low, est.high) == (-1.0, 0.0)


def _exact_paired_distribution(ref, run, prompt, n_prompts, k, metric):
    """Every equally likely paired-bootstrap outcome, enumerated (an independent computation)."""
    members = [np.flatnonzero(prompt == p) for p in range(n_prompts)]
    values = []
    for picked in itertools.product(range(n_prompts), repeat=n_prompts):
        inner = [itertools.product(members[p], repeat=len(members[p])) for p in picked]
        for draws in itertools.product(*inner):
            units = np.concatenate([np.array(d) for d in draws])
            new_prompt = np.repeat(np.arange(n_prompts), [len(d) for d in draws])
            a = counts(run[units], new_prompt, n_prompts, k)
            b = counts(ref[units], new_prompt, n_prompts, k)
            values.append(float(aggregate(metric, a) - aggregate(metric, b)))
    return np.array(values)


def test_paired_bootstrap_matches_exact_enumeration():
    ref = np.array([0, 0, 1, 0, 1, 1])
    run = np.array([0, 1, 1, 0, 0, 0])
    prompt = np.array([0, 0, 0, 1, 1, 1])
    exact = _exact_paired_distribution(ref, run, prompt, 2, 2, KL)
    est = paired_bootstrap(ref, run, prompt, 2, 2, KL, n_boot=20000, seed=1)
    lo, hi = np.quantile(exact, [0.025, 0.975])
    assert est.low == pytest.approx(lo, abs=0.03) and est.high == pytest.approx(hi, abs=0.03)


def test_paired_point_estimate_is_the_difference_of_the_runs_aggregates():
    rng = np.random.default_rng(0)
    prompt = np.repeat(np.arange(5), 8)
    ref, run = rng.integers(0, 4, 40), rng.integers(0, 4, 40)
    run[:3] = -1  # no face
    est = paired_bootstrap(ref, run, prompt, 5, 4, KL, n_boot=200)
    a = aggregate_estimate(counts(run, prompt, 5, 4), KL, n_boot=10).value
    b = aggregate_estimate(counts(ref, prompt, 5, 4), KL, n_boot=10).value
    assert est.value == pytest.approx(a - b, abs=1e-12)


def test_self_comparison_is_zero_with_a_zero_interval():
    rng = np.random.default_rng(2)
    codes, prompt = rng.integers(0, 2, 48), np.repeat(np.arange(6), 8)
    est = paired_bootstrap(codes, codes, prompt, 6, 2, GAP, n_boot=300)
    assert (est.value, est.low, est.high) == (0.0, 0.0, 0.0)
    assert swap_test(codes, codes, prompt, 6, 2, {"n": net_group_changes}).p_value == 1.0


@pytest.mark.parametrize("a,b,p", [(8, 0, 2 / 256), (6, 0, 2 / 64), (0, 0, 1.0), (5, 5, 1.0), (3, 1, 0.625)])
def test_sign_test_golden(a, b, p):
    assert sign_test(a, b) == pytest.approx(p)


def test_flows_majority_and_transitions_on_a_hand_table():
    # prompt 0: ref m m m f (majority m); run m f f f  -> two m->f (away from majority)
    # prompt 1: ref f f m -  (majority f); run f m m f -> one f->m (away), one face gained
    ref = np.array([0, 0, 0, 1, 1, 1, 0, -1])
    run = np.array([0, 1, 1, 1, 1, 0, 0, 1])
    prompt = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    f = {x.group: (x.into, x.out) for x in flows(ref, run, ["m", "f"])}
    assert f == {"m": (1, 2), "f": (2, 1)}
    maj = majority_flows(ref, run, prompt, 2, 2)
    assert (maj.into, maj.out) == (0, 3) and maj.p_value == pytest.approx(0.25)
    t = transitions(ref, run, ["m", "f"])
    assert t.loc["m", "f"] == 2 and t.loc["f", "m"] == 1 and t.loc["no face", "f"] == 1 and t.to_numpy().sum() == 8


def test_swap_test_exact_golden_and_monte_carlo_against_the_sign_test():
    prompt = np.arange(96) % 12
    ref, run = np.array([1] * 8 + [0] * 88), np.zeros(96, dtype=int)
    exact = swap_test(ref, run, prompt, 12, 2, {"n": net_group_changes, "gap": metric_change(GAP)})
    assert exact.exact and exact.n_discordant == 8 and exact.p_value == pytest.approx(2 / 256)
    assert exact.observed["n"] in (8.0, -8.0)
    # 16 discordant units (Monte Carlo), 12 one way and 4 the other: the count statistic alone is the sign test
    ref = np.array([1] * 12 + [0] * 4 + [0] * 80)
    run = np.array([0] * 12 + [1] * 4 + [0] * 80)
    mc = swap_test(ref, run, prompt, 12, 2, {"n": net_group_changes}, n_perm=20000, seed=3)
    assert not mc.exact and mc.p_value == pytest.approx(binomtest(12, 16).pvalue, abs=0.01)


def test_swap_test_cannot_fail_on_a_few_flips():
    # with D units that differ the smallest reachable p is 2 / 2^D: 5 flips one way give 1/16 > 0.05
    prompt = np.arange(96) % 12
    ref, run = np.array([1] * 5 + [0] * 91), np.zeros(96, dtype=int)
    assert swap_test(ref, run, prompt, 12, 2, {"n": net_group_changes, "kl": metric_change(KL)}).p_value >= 1 / 16
