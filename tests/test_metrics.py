"""Golden values for every fairness metric, bootstrap behaviour and confusion correction."""

import math

import numpy as np
import pytest

from fairbench.metrics.bootstrap import aggregate_estimate, prompt_estimate
from fairbench.metrics.confusion import confusion_from_counts, correct_shares
from fairbench.metrics.fairness import FAIRNESS_METRICS

M = FAIRNESS_METRICS.get

# K = 2, shares (0.8, 0.2): hand-computed
K2 = np.array([0.8, 0.2])
GOLD_K2 = {
    "fd": math.sqrt(0.3**2 + 0.3**2),                       # 0.424264
    "kl": 0.8 * math.log(1.6) + 0.2 * math.log(0.4),         # 0.192745
    "mad": 0.3,
    "heim_imbalance": 0.3,                                   # = |f_female - 0.5|
    "entropy_severity": 1 - (-(0.8 * math.log(0.8) + 0.2 * math.log(0.2))) / math.log(2),  # 0.278072
    "bias_gap": 0.6,                                         # |f_m - f_f|
    "dp_difference": 0.6,
    "dp_ratio": 0.25,
}

# K = 7 with a zero share: (0.4, 0.2, 0.1, 0.1, 0.1, 0.1, 0.0)
K7 = np.array([0.4, 0.2, 0.1, 0.1, 0.1, 0.1, 0.0])
u = 1 / 7
GOLD_K7 = {
    "fd": math.sqrt((0.4 - u) ** 2 + (0.2 - u) ** 2 + 4 * (0.1 - u) ** 2 + u**2),
    "kl": 0.4 * math.log(0.4 * 7) + 0.2 * math.log(0.2 * 7) + 4 * 0.1 * math.log(0.1 * 7),  # 0 log 0 = 0
    "mad": ((0.4 - u) + (0.2 - u) + 4 * (u - 0.1) + u) / 7,
    "heim_imbalance": ((0.4 - u) + (0.2 - u) + 4 * (u - 0.1) + u) / 7,
    "entropy_severity": 1 - (-(0.4 * math.log(0.4) + 0.2 * math.log(0.2) + 4 * 0.1 * math.log(0.1))) / math.log(7),
    # sum over ordered pairs i != j of |p_i - p_j| / (K (K - 1))
    "bias_gap": sum(abs(a - b) for a in K7 for b in K7) / 42,
    "dp_difference": 0.4,
    "dp_ratio": 0.0,
}


@pytest.mark.parametrize("name", sorted(GOLD_K2))
def test_golden_k2(name):
    assert M(name)(K2) == pytest.approx(GOLD_K2[name], abs=1e-9)


@pytest.mark.parametrize("name", sorted(GOLD_K7))
def test_golden_k7_with_zero_share(name):
    assert M(name)(K7) == pytest.approx(GOLD_K7[name], abs=1e-9)


def test_bias_gap_k7_hand_value():
    # pairs: |.4-.2|=.2, |.4-.1|*4=1.2, |.4-0|=.4, |.2-.1|*4=.4, |.2-0|=.2, |.1-0|*4=.4 -> 2.8 per direction
    assert M("bias_gap")(K7) == pytest.approx(2 * 2.8 / 42)


@pytest.mark.parametrize("k", [2, 7])
def test_single_group_prompt_is_maximally_unfair(k):
    p = np.zeros(k)
    p[0] = 1.0
    assert M("kl")(p) == pytest.approx(math.log(k))
    assert M("entropy_severity")(p) == pytest.approx(1.0)
    assert M("dp_difference")(p) == pytest.approx(1.0)
    assert M("dp_ratio")(p) == pytest.approx(0.0)
    assert M("fd")(p) == pytest.approx(math.sqrt((1 - 1 / k) ** 2 + (k - 1) / k**2))


@pytest.mark.parametrize("k", [2, 7])
def test_uniform_is_perfectly_fair(k):
    p = np.full(k, 1 / k)
    for name in ("fd", "kl", "mad", "heim_imbalance", "entropy_severity", "bias_gap", "dp_difference"):
        assert M(name)(p) == pytest.approx(0.0, abs=1e-12)
    assert M("dp_ratio")(p) == pytest.approx(1.0)


def test_metrics_vectorise_over_leading_axes():
    batch = np.stack([K2, K2[::-1], np.array([0.5, 0.5])])
    for name in GOLD_K2:
        out = M(name)(batch)
        assert out.shape == (3,)
        assert out[0] == pytest.approx(M(name)(K2))


def test_target_distribution_changes_fd_and_kl():
    target = np.array([0.8, 0.2])
    assert M("fd")(K2, target) == pytest.approx(0.0)
    assert M("kl")(K2, target) == pytest.approx(0.0)


def test_bootstrap_interval_contains_estimate_and_narrows():
    widths = []
    for n in (20, 200, 2000):
        counts = np.array([int(0.7 * n), n - int(0.7 * n)])
        est = prompt_estimate(counts, M("bias_gap"), n_boot=2000, seed=1)
        assert est.low <= est.value <= est.high
        assert est.n == n
        widths.append(est.high - est.low)
    assert widths[0] > widths[1] > widths[2]
    # CLT: the width of a share difference shrinks like 1/sqrt(n); 100x the data, ~10x narrower
    assert 5 < widths[0] / widths[2] < 20


def test_bootstrap_interval_matches_binomial_width():
    n = 400
    est = prompt_estimate(np.array([280, 120]), M("bias_gap"), n_boot=4000, seed=0)
    # bias_gap = |2 f - 1|, so its std is 2 sqrt(f (1 - f) / n)
    expected = 2 * 1.96 * 2 * math.sqrt(0.7 * 0.3 / n)
    assert est.high - est.low == pytest.approx(expected, rel=0.15)


def test_aggregate_is_mean_of_prompts_and_interval_contains_it():
    counts = np.array([[30, 10], [20, 20], [5, 35], [0, 0]])  # last prompt: no faces, ignored
    est = aggregate_estimate(counts, M("bias_gap"), n_boot=1000, seed=0)
    assert est.value == pytest.approx(np.mean([0.5, 0.0, 0.75]))
    assert est.low <= est.value <= est.high
    assert est.n == 120


def test_prompt_without_faces_is_nan():
    est = prompt_estimate(np.array([0, 0]), M("fd"))
    assert math.isnan(est.value) and est.n == 0


def test_confusion_correction_recovers_known_distribution():
    rng = np.random.default_rng(0)
    true_p = np.array([0.6, 0.3, 0.1])
    confusion = np.array([[0.85, 0.10, 0.05], [0.10, 0.80, 0.10], [0.05, 0.15, 0.80]])
    n = 200_000
    truth = rng.choice(3, size=n, p=true_p)
    predicted = np.array([rng.choice(3, p=confusion[t]) for t in truth[:20000]])
    # estimate C from a labelled set, then correct the observed shares of a simulated run
    c_hat = confusion_from_counts(truth[:20000], predicted, 3)
    observed = true_p @ confusion  # q = C^T p
    corrected = correct_shares(observed, c_hat)
    assert np.abs(corrected - true_p).max() < 0.02
    assert np.abs(observed - true_p).max() > 0.05  # raw shares really were off
    assert corrected.sum() == pytest.approx(1.0) and (corrected >= 0).all()


def test_confusion_correction_stays_on_simplex():
    confusion = np.array([[0.9, 0.1], [0.2, 0.8]])
    # observed share below what any p >= 0 could produce: clipped to a vertex
    corrected = correct_shares(np.array([0.05, 0.95]), confusion)
    assert corrected == pytest.approx([0.0, 1.0], abs=1e-6)


def _labels(rows):
    import pandas as pd

    return pd.DataFrame(rows, columns=["prompt_id", "face", "gender", "family"])


def test_adherence_counts_faces_showing_the_requested_group():
    from fairbench.metrics.evaluate import adherence

    labels = _labels([
        ("nurse__female", True, "female", "healthcare"), ("nurse__female", True, "female", "healthcare"),
        ("nurse__female", True, "male", "healthcare"), ("nurse__female", False, None, None),  # no face: excluded
        ("nurse__male", True, "male", "healthcare"), ("nurse", True, "female", "healthcare"),  # neutral: ignored
    ])
    res = adherence(labels, {"nurse__female": {"gender": "female"}, "nurse__male": {"gender": "male"}})
    g = res["gender"]
    assert g["value"] == pytest.approx(3 / 4) and g["n"] == 4 and g["n_prompts"] == 2
    assert g["per_group"] == {"female": pytest.approx(2 / 3), "male": 1.0}
    # Wilson 95 % interval for 3 / 4 (hand formula)
    z, n, p = 1.959963984540054, 4, 0.75
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    assert (g["ci_low"], g["ci_high"]) == (pytest.approx(centre - half), pytest.approx(centre + half))


def test_family_accuracy_uses_the_prompts_occupation_family():
    from fairbench.metrics.alignment import family_accuracy
    from fairbench.prompts import load_suite

    suite = load_suite("occupations")
    by_id = {p.id: p for p in suite.prompts}
    labels = _labels([("nurse", True, "female", "healthcare"), ("nurse", True, "female", "office"),
                      ("plumber", True, "male", "trades"), ("plumber", False, None, None)])
    res = family_accuracy(labels, [by_id["nurse"], by_id["plumber"]])
    assert res["value"] == pytest.approx(2 / 3) and res["n"] == 3
    assert family_accuracy(labels.drop(columns="family"), [by_id["nurse"]]) is None
