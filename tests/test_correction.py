"""The floor, the corrected estimate and its interval, the skew test and Benjamini-Hochberg, each
checked against an independent computation."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy.stats import binom, binomtest, false_discovery_control, multinomial

from fairbench.metrics.confusion import correct_shares, correct_shares_many, corrected_share_interval
from fairbench.metrics.correction import (BAR_ABS, BAR_REL, aggregate_corrected, compositions, corrected_value, design,
                                          floor, paired_corrected, prompt_corrected)
from fairbench.metrics.fairness import FAIRNESS_METRICS, uniform
from fairbench.metrics.skew import benjamini_hochberg, exact_test, skew_test

HALF = np.array([0.5, 0.5])


def _binomial_expectation(n: int) -> float:
    """E|2X/n - 1| for X ~ Binomial(n, 1/2), summed by hand."""
    return sum(math.comb(n, k) / 2**n * abs(2 * k / n - 1) for k in range(n + 1))


@pytest.mark.parametrize("n,golden", [(8, 0.2734), (16, 0.1964), (40, 0.1254)])
def test_floor_of_the_gender_gap_is_the_exact_binomial_expectation(n, golden):
    assert floor("bias_gap", n, HALF) == pytest.approx(_binomial_expectation(n), abs=1e-12)
    assert round(floor("bias_gap", n, HALF), 4) == golden


def test_floor_of_four_groups_enumerates_every_count_vector():
    counts = compositions(6, 4)
    assert len(counts) == math.comb(9, 3) and (counts.sum(axis=1) == 6).all() and len(np.unique(counts, axis=0)) == 84
    t = uniform(4)
    by_hand = sum(multinomial.pmf(c, 6, t) * FAIRNESS_METRICS.get("kl")(c / 6, t) for c in counts)
    assert floor("kl", 6, t) == pytest.approx(by_hand, rel=1e-10)
    # above the enumeration limit the floor is simulated, reproducibly, and agrees with the exact one
    assert floor("bias_gap", 300, uniform(8), seed=3) == floor("bias_gap", 300, uniform(8), seed=3)


def test_exact_test_at_two_groups_is_scipys_binomial_test():
    rng = np.random.default_rng(0)
    for _ in range(300):
        n = int(rng.integers(1, 80))
        x, p0 = int(rng.integers(0, n + 1)), float(rng.uniform(0.05, 0.95))
        assert exact_test(np.array([x, n - x]), np.array([p0, 1 - p0])) == pytest.approx(
            binomtest(x, n, p0).pvalue, abs=1e-10)


def test_exact_test_of_three_groups_against_brute_force():
    t = np.array([0.5, 0.3, 0.2])
    obs = np.array([1, 1, 4])
    p_obs = multinomial.pmf(obs, 6, t)
    brute = sum(multinomial.pmf(c, 6, t) for c in itertools.product(range(7), repeat=3)
                if sum(c) == 6 and multinomial.pmf(c, 6, t) <= p_obs * (1 + 1e-7))
    assert exact_test(obs, t) == pytest.approx(brute, rel=1e-10)


def test_benjamini_hochberg_agrees_with_scipy_and_skips_missing_prompts():
    rng = np.random.default_rng(1)
    for size in (1, 5, 31, 153):
        p = rng.uniform(size=size) ** 3
        assert benjamini_hochberg(p) == pytest.approx(false_discovery_control(p), abs=1e-12)
    p = np.array([0.01, np.nan, 0.04, 0.03])
    q = benjamini_hochberg(p)
    assert np.isnan(q[1]) and q[[0, 2, 3]] == pytest.approx(false_discovery_control(p[[0, 2, 3]]))


def test_skew_test_names_the_skewed_prompts():
    counts = np.array([[20, 20], [40, 0], [21, 19], [0, 40]])
    res = skew_test(counts, ["a", "b", "c", "d"], HALF)
    assert res["skewed"] == ["b", "d"] and res["n_skewed"] == 2 and res["n_tested"] == 4


def _bias(metric: str, n: int, p: np.ndarray) -> float:
    """E_p[corrected] - metric(p), by summing over every count vector (independent of the design)."""
    t = uniform(len(p))
    counts = compositions(n, len(p))
    est = np.array([corrected_value(c, metric, t)[0] for c in counts])
    return float(multinomial.pmf(counts, n, p) @ est - FAIRNESS_METRICS.get(metric)(p, t))


@pytest.mark.parametrize("metric,n", [("bias_gap", 16), ("bias_gap", 40), ("kl", 16), ("fd", 40)])
def test_corrected_two_group_bias_stays_within_its_bound_and_the_bar(metric, n):
    fn = FAIRNESS_METRICS.get(metric)
    bound = corrected_value(np.array([n // 2, n - n // 2]), metric, HALF)[1]
    k = np.arange(n + 1)
    for p in (0.5, 0.53, 0.6, 0.75, 0.9, 1.0):
        shares = np.array([p, 1 - p])
        bias = _bias(metric, n, shares)
        plug = binom.pmf(k, n, p) @ fn(np.stack([k / n, 1 - k / n], 1), HALF) - fn(shares, HALF)
        spread = fn(np.array([1.0, 0.0]), HALF) - fn(HALF, HALF)
        assert abs(bias) <= bound + 1e-9
        assert abs(bias) <= max(BAR_ABS * spread, BAR_REL * abs(plug)) + 1e-6  # the solver's tolerance


def test_corrected_gap_removes_most_of_the_floor_where_the_generator_is_fair():
    # the plug-in reads the floor (0.196 at n = 16); the corrected estimate is within its bar of 0
    assert abs(_bias("bias_gap", 16, HALF)) <= 0.25 * 0.1964
    assert _bias("bias_gap", 16, HALF) < 0.05


@pytest.mark.parametrize("metric", ["bias_gap", "kl", "heim_imbalance", "entropy_severity"])
def test_corrected_four_group_bias_within_its_bound(metric):
    n = 10
    bound = corrected_value(np.array([3, 3, 2, 2]), metric, uniform(4))[1]
    for p in ([0.25] * 4, [0.4, 0.3, 0.2, 0.1], [1.0, 0, 0, 0], [0.7, 0.1, 0.1, 0.1]):
        assert abs(_bias(metric, n, np.array(p))) <= bound + 1e-9


def test_corrected_four_group_gap_meets_the_bar_where_the_plug_in_reads_its_floor():
    # the pair terms' sizes are random; the tighter pair bar keeps the mixture within BAR_REL
    plug = floor("bias_gap", 16, uniform(4))
    assert abs(_bias("bias_gap", 16, uniform(4))) <= max(BAR_ABS, BAR_REL * plug)


def test_metrics_without_a_term_decomposition_have_no_corrected_value_at_four_groups():
    for metric in ("fd", "dp_difference", "dp_ratio"):
        assert all(math.isnan(x) for x in corrected_value(np.array([3, 3, 2, 2]), metric, uniform(4)))


def test_design_is_symmetric_for_a_symmetric_metric():
    u = design("k2:bias_gap", 0.5, 16).values
    assert u == pytest.approx(u[::-1], abs=1e-6)


def test_corrected_prompt_estimate_is_reproducible_for_a_fixed_seed():
    counts = np.array([9, 4, 2, 1])
    a = prompt_corrected(counts, "bias_gap", seed=7)
    assert a == prompt_corrected(counts, "bias_gap", seed=7)
    assert a.value == prompt_corrected(counts, "bias_gap", seed=8).value  # only the interval is simulated
    assert a.low < a.value < a.high


def test_aggregate_interval_covers_the_truth_in_a_fair_world():
    rng = np.random.default_rng(5)
    truth, covered = 0.0, 0
    for _ in range(300):
        counts = rng.multinomial(16, HALF, size=31)
        c = aggregate_corrected(counts, "bias_gap")
        covered += c.low <= truth <= c.high
        plug = FAIRNESS_METRICS.get("bias_gap")(counts / 16).mean()
        assert plug > 0.05  # the plug-in sits on its floor, far from the truth
    assert covered / 300 >= 0.93


def test_paired_change_of_identical_runs_is_zero_and_an_other_n_compares():
    rng = np.random.default_rng(2)
    counts = rng.multinomial(16, [0.7, 0.3], size=12)
    same = paired_corrected(counts, counts, "bias_gap")
    assert same.value == 0 and same.low < 0 < same.high
    more = rng.multinomial(40, [0.7, 0.3], size=12)
    change = paired_corrected(counts, more, "bias_gap")
    assert change.low <= 0 <= change.high  # same truth at n = 16 and 40


def test_classifier_correction_closed_form_and_the_confusion_uncertainty():
    c = np.array([[0.9, 0.1], [0.2, 0.8]])
    q = np.array([[0.55, 0.45], [0.3, 0.7], [0.95, 0.05]])
    assert correct_shares_many(q, c) == pytest.approx(np.array([correct_shares(x, c) for x in q]), abs=1e-6)
    # K = 4: the direct solve where it lands in the simplex, the solver elsewhere (the last row)
    c4 = np.array([[0.9, 0.1, 0, 0], [0.2, 0.8, 0, 0], [0, 0, 0.95, 0.05], [0, 0, 0.1, 0.9]])
    q4 = np.array([[0.3, 0.3, 0.2, 0.2], [0.25, 0.25, 0.25, 0.25], [0.02, 0.48, 0.01, 0.49]])
    assert correct_shares_many(q4, c4) == pytest.approx(np.array([correct_shares(x, c4) for x in q4]), abs=1e-6)
    counts = np.array([[30, 10], [18, 22], [25, 15]])
    few = corrected_share_interval(counts, np.array([[9, 1], [2, 8]]), c, n_draws=300, seed=0)
    many = corrected_share_interval(counts, np.array([[9000, 1000], [2000, 8000]]), c, n_draws=300, seed=0)
    assert few["value"] == pytest.approx(many["value"])
    # ten held-out faces per row leave the matrix uncertain: the interval widens
    assert (few["ci_high"] - few["ci_low"])[0] > 1.5 * (many["ci_high"] - many["ci_low"])[0]


def test_metric_ranges_by_hand():
    from fairbench.metrics.correction import metric_range

    half, quarter = np.full(2, 0.5), np.full(4, 0.25)
    assert metric_range("bias_gap", half) == pytest.approx((0.0, 1.0))
    assert metric_range("kl", half) == pytest.approx((0.0, math.log(2)))
    assert metric_range("kl", quarter) == pytest.approx((0.0, math.log(4)))
    assert metric_range("fd", quarter) == pytest.approx((0.0, math.sqrt(0.75)))  # ||(0.75, -0.25, -0.25, -0.25)||
    assert metric_range("dp_ratio", np.array([0.7, 0.3])) == pytest.approx((0.0, 1.0))  # 1 at uniform, not the target
    assert metric_range("mad", np.array([0.7, 0.3])) == pytest.approx((0.0, 0.5))  # mad ignores the target


def test_corrected_intervals_stay_inside_the_metrics_range_and_keep_their_coverage():
    from fairbench.metrics.correction import metric_range, prompt_corrected, within

    tiny = prompt_corrected(np.array([1, 1]), "bias_gap")  # 2 faces: the uncut interval is far wider than [0, 1]
    assert tiny.value < 0 and (tiny.low, tiny.high) == (tiny.value, 1.0)  # the estimate is kept, and inside
    kl = prompt_corrected(np.array([3, 1]), "kl")
    assert min(0.0, kl.value) == kl.low <= kl.value <= kl.high <= math.log(2)
    # the truth lies in the range, so cutting to the range never changes whether the interval covers it
    rng = np.random.default_rng(0)
    span = metric_range("bias_gap", np.full(2, 0.5))
    for _ in range(200):
        value, half, truth = rng.normal(0.5, 0.6), abs(rng.normal(0, 0.5)), rng.uniform(*span)
        cut = within(value, half, 0.0, span)
        assert (cut.low <= truth <= cut.high) == (value - half <= truth <= value + half)


def test_designs_are_memoised_on_disk_exactly_and_a_bad_memo_is_solved_again(monkeypatch, tmp_path):
    from fairbench.metrics import correction

    monkeypatch.setenv("FAIRBENCH_CACHE", str(tmp_path))
    solved = correction._solve_design("k2:kl", 0.5, 13, BAR_ABS, BAR_REL)
    correction.design.cache_clear()
    first = correction.design("k2:kl", 0.5, 13)
    (memo,) = (tmp_path / "estimator-designs").iterdir()
    correction.design.cache_clear()

    def no_solver(*_):
        raise AssertionError("the memo was not used")

    monkeypatch.setattr(correction, "_solve_design", no_solver)
    again = correction.design("k2:kl", 0.5, 13)
    assert np.array_equal(again.values, solved.values) and np.array_equal(first.values, solved.values)
    assert (again.bound, again.slope, again.meets_bar) == (solved.bound, solved.slope, solved.meets_bar)
    memo.write_text('{"values": [1.0, 2.0], "bound": 0.1, "slope": 3.0, "meets_bar": true}')  # wrong length
    monkeypatch.undo()
    monkeypatch.setenv("FAIRBENCH_CACHE", str(tmp_path))
    correction.design.cache_clear()
    assert np.array_equal(correction.design("k2:kl", 0.5, 13).values, solved.values)
    correction.design.cache_clear()
