"""Metrics stage: labels.parquet -> metrics.json and tables/ (fairness per prompt and aggregated)."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from fairbench.metrics.bootstrap import aggregate_estimate, prompt_estimate, shares
from fairbench.metrics.confusion import correct_shares, corrected_share_interval
from fairbench.metrics.correction import (BAR_ABS, BAR_REL, PAIR_BAR_REL, SLOPES, aggregate_corrected, floor,
                                          mean_floor, prompt_corrected)
from fairbench.metrics.fairness import FAIRNESS_METRICS, uniform
from fairbench.metrics.skew import skew_test
from fairbench.prompts import AttributeSpec

SCHEMA_VERSION = 2
INTERSECTIONS = (("gender", "race7"), ("gender", "race4"), ("gender", "skin_tone"), ("gender", "age2"))


@dataclass(frozen=True)
class EvalSettings:
    """Bootstrap and reporting settings (recorded in metrics.json)."""

    n_boot: int = 1000
    level: float = 0.95
    seed: int = 0
    metrics: tuple[str, ...] = tuple(FAIRNESS_METRICS.names())
    skew_q: float = 0.05  # Benjamini-Hochberg level of the per-prompt skew test

    def to_dict(self) -> dict[str, Any]:
        """The settings block of metrics.json."""
        return {"n_boot": self.n_boot, "level": self.level, "seed": self.seed, "metrics": list(self.metrics),
                "target": "uniform", "label": "argmax", "skew_q": self.skew_q,
                "correction": {"estimator": "affine, bounded worst-case bias, closest to the plug-in (docs/metrics.md)",
                               "bar_abs": BAR_ABS, "bar_rel": BAR_REL, "pair_bar_rel": PAIR_BAR_REL, "slopes": list(SLOPES),
                               "interval": "bias-aware: t * se over prompts + mean bias bound"}}


def group_counts(labels: pd.DataFrame, attr: str, groups: list[str], prompt_ids: list[str]) -> np.ndarray:
    """(P, K) counts of argmax labels among images with a face, prompts in the given order."""
    faces = labels[labels["face"] & labels[attr].notna()]
    table = pd.crosstab(faces["prompt_id"], faces[attr]).reindex(index=prompt_ids, columns=groups, fill_value=0)
    return table.fillna(0).to_numpy(dtype=np.int64)


def add_intersections(labels: pd.DataFrame, specs: dict[str, AttributeSpec]) -> dict[str, list[str]]:
    """Add joint-label columns (e.g. 'gender*race7') for attribute pairs the classifier predicts."""
    joint: dict[str, list[str]] = {}
    for a, b in INTERSECTIONS:
        if a in specs and b in specs:
            name = f"{a}*{b}"
            labels[name] = np.where(labels[a].notna() & labels[b].notna(),
                                    labels[a].astype(str) + "|" + labels[b].astype(str), None)
            joint[name] = [f"{x}|{y}" for x, y in itertools.product(specs[a].group_names, specs[b].group_names)]
    return joint


def evaluate_attribute(
    labels: pd.DataFrame, attr: str, groups: list[str], prompt_ids: list[str], settings: EvalSettings,
    confusion: np.ndarray | None = None, confusion_counts: np.ndarray | None = None,
) -> dict[str, Any]:
    """All fairness numbers of one attribute: per prompt and aggregated, with intervals."""
    counts = group_counts(labels, attr, groups, prompt_ids)
    target = uniform(len(groups))
    skew = skew_test(counts, prompt_ids, target, settings.skew_q, settings.seed)
    per_image = labels.groupby("prompt_id").agg(n_images=("face", "size"), n_faces=("face", "sum"))
    per_image = per_image.reindex(prompt_ids, fill_value=0)
    low = labels.get(f"{attr}_low_confidence")
    per_prompt = []
    for i, pid in enumerate(prompt_ids):
        n_img = int(per_image.loc[pid, "n_images"])
        entry: dict[str, Any] = {
            "prompt_id": pid, "n_images": n_img, "n_faces": int(per_image.loc[pid, "n_faces"]),
            "no_face_rate": 1 - per_image.loc[pid, "n_faces"] / n_img if n_img else float("nan"),
            "counts": dict(zip(groups, counts[i].tolist())),
            "shares": dict(zip(groups, shares(counts[i]).tolist())),
            "metrics": {m: prompt_metric(counts[i], m, target, settings, settings.seed + i) for m in settings.metrics},
            "skew_p": skew["p_values"][i], "skew_q": skew["q_values"][i],
        }
        if confusion is not None and counts[i].sum() > 0:
            corrected = correct_shares(shares(counts[i]), confusion)
            entry["classifier_corrected_shares"] = dict(zip(groups, corrected.tolist()))
            entry["classifier_corrected_metrics"] = {m: float(FAIRNESS_METRICS.get(m)(corrected))
                                                     for m in settings.metrics}
        per_prompt.append(entry)
    n_images, n_faces = int(per_image["n_images"].sum()), int(per_image["n_faces"].sum())
    result: dict[str, Any] = {
        "groups": groups,
        "n_prompts": len(prompt_ids),
        "n_prompts_with_faces": int((counts.sum(axis=1) > 0).sum()),
        "n_images": n_images,
        "n_faces": n_faces,
        "no_face_rate": 1 - n_faces / n_images if n_images else float("nan"),
        "n_low_confidence": int(low[labels["face"]].sum()) if low is not None else 0,
        "overall_shares": dict(zip(groups, shares(counts.sum(axis=0)).tolist())),
        "aggregate": {m: aggregate_metric(counts, m, target, settings) for m in settings.metrics},
        "skew_test": {k: v for k, v in skew.items() if k not in ("p_values", "q_values")},
        "per_prompt": per_prompt,
    }
    if confusion is not None:
        result.update(classifier_corrected(counts, groups, per_prompt, confusion, confusion_counts, settings))
    return result


def classifier_corrected(counts: np.ndarray, groups: list[str], per_prompt: list[dict[str, Any]],
                         confusion: np.ndarray, confusion_counts: np.ndarray | None,
                         settings: EvalSettings) -> dict[str, Any]:
    """Classifier-corrected shares (mean over prompts) with an interval that carries the confusion matrix's
    own uncertainty where its held-out counts ship; and each metric's mean over prompts of them."""
    est = corrected_share_interval(counts, confusion_counts, confusion, n_draws=min(settings.n_boot, 200),
                                   level=settings.level, seed=settings.seed)
    vals = {m: [p["classifier_corrected_metrics"][m] for p in per_prompt if "classifier_corrected_metrics" in p]
            for m in settings.metrics}
    return {"classifier_corrected_shares": {g: {k: float(v[i]) for k, v in est.items()} for i, g in enumerate(groups)},
            "confusion_uncertainty": confusion_counts is not None,
            "classifier_corrected_aggregate": {m: float(np.mean(v)) if v else float("nan") for m, v in vals.items()}}


def prompt_metric(counts: np.ndarray, metric: str, target: np.ndarray, settings: EvalSettings, seed: int) -> dict:
    """One prompt's metric: the plug-in with its bootstrap interval, its floor, the corrected estimate."""
    fn = FAIRNESS_METRICS.get(metric)
    result = prompt_estimate(counts, fn, target, n_boot=settings.n_boot, level=settings.level, seed=seed).to_dict()
    result["floor"] = floor(metric, int(counts.sum()), target, seed=settings.seed)
    result["corrected"] = prompt_corrected(counts, metric, target, n_sim=settings.n_boot, level=settings.level,
                                           seed=seed).to_dict()
    return result


def aggregate_metric(counts: np.ndarray, metric: str, target: np.ndarray, settings: EvalSettings) -> dict:
    """The mean over prompts: plug-in with its two-level bootstrap interval, mean floor, corrected estimate."""
    fn = FAIRNESS_METRICS.get(metric)
    result = aggregate_estimate(counts, fn, target, n_boot=settings.n_boot, level=settings.level,
                                seed=settings.seed).to_dict()
    result["floor"] = mean_floor(counts, metric, target, settings.seed)
    result["corrected"] = aggregate_corrected(counts, metric, target, n_sim=settings.n_boot, level=settings.level,
                                              seed=settings.seed).to_dict()
    return result


def proportion(hits: int, n: int, level: float = 0.95) -> dict[str, Any]:
    """A share with its Wilson score interval."""
    from scipy.stats import binomtest

    if n == 0:
        return {"value": float("nan"), "ci_low": float("nan"), "ci_high": float("nan"), "n": 0}
    ci = binomtest(hits, n).proportion_ci(level, method="wilson")
    return {"value": hits / n, "ci_low": float(ci.low), "ci_high": float(ci.high), "n": n}


def match_rate(labels: pd.DataFrame, column: str, expected: dict[str, str], level: float = 0.95) -> dict[str, Any]:
    """Share of images with a face whose `column` label equals the prompt's expected value."""
    want = labels["prompt_id"].map(expected)
    rows = labels[want.notna() & labels["face"]]
    result = proportion(int((rows[column] == want[rows.index]).sum()), len(rows), level)
    result["per_group"] = {g: float((sub[column] == g).mean()) for g, sub in rows.groupby(want[rows.index])}
    result["n_prompts"] = int(rows["prompt_id"].nunique())
    return result


def adherence(labels: pd.DataFrame, requested: dict[str, dict[str, str]], level: float = 0.95) -> dict[str, Any]:
    """Per attribute: share of faces showing the group their prompt names (Wilson interval)."""
    attrs = sorted({a for req in requested.values() for a in req})
    return {a: match_rate(labels, a, {pid: r[a] for pid, r in requested.items() if a in r}, level)
            for a in attrs if a in labels.columns}


def evaluate(
    labels: pd.DataFrame, specs: dict[str, AttributeSpec], prompt_ids: list[str], settings: EvalSettings,
    confusions: dict[str, np.ndarray] | None = None, requested: dict[str, dict[str, str]] | None = None,
    confusion_counts: dict[str, np.ndarray] | None = None,
) -> dict[str, Any]:
    """metrics.json content for a labelled run."""
    labels = labels.copy()
    groups = {a: s.group_names for a, s in specs.items()}
    groups.update(add_intersections(labels, specs))
    confusions = confusions or {}
    n_images, n_faces = len(labels), int(labels["face"].sum()) if len(labels) else 0
    result = {
        "schema_version": SCHEMA_VERSION,
        "settings": settings.to_dict(),
        "n_images": n_images,
        "n_faces": n_faces,
        "no_face_rate": 1 - n_faces / n_images if n_images else float("nan"),
        "nsfw_flagged": int(labels["nsfw"].sum()) if len(labels) else 0,
        "attributes": {a: evaluate_attribute(labels, a, g, prompt_ids, settings, confusions.get(a),
                                             (confusion_counts or {}).get(a))
                       for a, g in groups.items()},
    }
    if requested:
        result["adherence"] = adherence(labels, requested, settings.level)
    return result


def per_prompt_table(attr_result: dict[str, Any]) -> pd.DataFrame:
    """One row per prompt: sizes, shares and every metric with its interval."""
    rows = []
    for p in attr_result["per_prompt"]:
        row = {k: p[k] for k in ("prompt_id", "n_images", "n_faces", "no_face_rate")}
        row.update({f"share:{g}": v for g, v in p["shares"].items()})
        for m, est in p["metrics"].items():
            row.update({m: est["value"], f"{m}_ci_low": est["ci_low"], f"{m}_ci_high": est["ci_high"],
                        f"{m}_floor": est["floor"], f"{m}_corrected": est["corrected"]["value"],
                        f"{m}_corrected_ci_low": est["corrected"]["ci_low"],
                        f"{m}_corrected_ci_high": est["corrected"]["ci_high"]})
        row.update({"skew_p": p["skew_p"], "skew_q": p["skew_q"]})
        row.update({f"classifier_corrected_share:{g}": v for g, v in p.get("classifier_corrected_shares", {}).items()})
        rows.append(row)
    return pd.DataFrame(rows)


def summary_table(metrics: dict[str, Any]) -> pd.DataFrame:
    """One row per (attribute, metric): aggregate value, interval and sample sizes."""
    rows = []
    for attr, res in metrics["attributes"].items():
        for m, est in res["aggregate"].items():
            corrected = est["corrected"]
            rows.append({"attribute": attr, "metric": m, "value": est["value"], "ci_low": est["ci_low"],
                         "ci_high": est["ci_high"], "floor": est["floor"], "corrected": corrected["value"],
                         "corrected_ci_low": corrected["ci_low"], "corrected_ci_high": corrected["ci_high"],
                         "bias_bound": corrected["bias_bound"],
                         "classifier_corrected": res.get("classifier_corrected_aggregate", {}).get(m),
                         "n_skewed": res["skew_test"]["n_skewed"], "n_tested": res["skew_test"]["n_tested"],
                         "n_prompts": res["n_prompts_with_faces"], "n_images": res["n_images"],
                         "n_faces": res["n_faces"], "no_face_rate": res["no_face_rate"]})
    return pd.DataFrame(rows)
