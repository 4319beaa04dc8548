"""Pairing two runs (or a run and a check reference) unit by unit, and refusing pairs that do not pair.

A side of a pairing is the same thing whether it comes from a run directory or from a reference
file: its settings, and one row per unit (key, prompt id, seed, image sha256, labels). `compare`
and `check` both build sides here, so there is one definition of which settings make units pair.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fairbench.config import tier_fields
from fairbench.errors import UserError
from fairbench.generation.manifest import finished_rows
from fairbench.labels import read_labels
from fairbench.metrics.paired import NO_LABEL, label_codes
from fairbench.outputs.rundir import LABELS, RunRecord, read_metrics, read_record

FACE = "face"
FAMILY = "family_match"
ADHERENCE = "adherence:"


@dataclass
class Side:
    """One side of a pairing: settings and one row per unit, indexed by unit key."""

    name: str
    settings: dict[str, Any]
    units: pd.DataFrame  # index key; columns prompt_id, seed, sha256, face, <attribute>..., family_match
    groups: dict[str, list[str]]  # attribute -> group names, in code order
    prompt_ids: list[str]
    metrics: dict[str, Any] = field(default_factory=dict)  # metrics.json of a run side


def settings_of(record: RunRecord, metrics: dict[str, Any]) -> dict[str, Any]:
    """The settings of a run that pairing compares."""
    spec = record.spec
    out = {k: spec[k] for k in tier_fields("units", "method", "sampling", "precision", "batching", "labelling")
           if k in spec}
    out.update(suite_sha256=record.suite.file_sha256, model_fingerprint=record.fingerprint,
               classifier=metrics.get("classifier"))  # the classifier that labelled the images
    return out


def adherence_column(attr: str) -> str:
    """Unit-table column: 1 where the face shows the group its prompt names, 0 where not, NO_LABEL elsewhere."""
    return f"{ADHERENCE}{attr}"


def unit_table(labels: pd.DataFrame, manifest: list[dict[str, Any]], groups: dict[str, list[str]],
               expected_family: dict[str, str], requested: dict[str, dict[str, str]] | None = None,
               where: str = "labels") -> pd.DataFrame:
    """One row per unit: prompt id, seed, sha256 and integer label codes (NO_LABEL where no face was found).
    A unit with no label row, or with another image's, is refused: it was never labelled, which is not
    the same as no face."""
    man = pd.DataFrame(manifest, columns=["key", "prompt_id", "seed", "sha256", "image"]).drop_duplicates("key")
    man = man.set_index("key")
    lab = labels.drop_duplicates("key").set_index("key").reindex(man.index)
    unlabelled = man.index[lab["image"].to_numpy() != man["image"].to_numpy()]
    if len(unlabelled):
        raise UserError(f"{where} has no label row for {len(unlabelled)} of the run's {len(man)} images (e.g. "
                        f"{unlabelled[0]!r}): label the run again with `fairbench classify`")
    man = man.drop(columns="image")
    out = man.copy()
    out[FACE] = np.where(lab["face"].fillna(False).astype(bool), 0, NO_LABEL)
    lab = lab.assign(face=lab["face"].fillna(False).astype(bool))
    for attr, names in groups.items():
        found = lab.loc[lab["face"], attr] if attr in lab.columns else pd.Series(dtype=object)
        strange = found[found.notna() & ~found.isin(names)]
        if len(strange):  # a code would silently read as "no label"
            raise UserError(f"{where}: {attr} label {strange.iloc[0]!r} of {strange.index[0]!r} is none of the "
                            f"classifier's groups ({', '.join(names)}): label the run again with `fairbench classify`")
        out[attr] = label_codes(lab, attr, names)
    if expected_family and "family" in lab.columns:
        want = lab["prompt_id"].map(expected_family)
        match = np.where(want.notna() & lab["face"], (lab["family"] == want).astype(int), NO_LABEL)
        out[FAMILY] = match.astype(np.int64)
    for attr in sorted({a for r in (requested or {}).values() for a in r} & set(groups)):
        want = lab["prompt_id"].map({pid: r[attr] for pid, r in requested.items() if attr in r})
        hit = np.where(want.notna() & lab["face"], (lab[attr] == want).astype(int), NO_LABEL)
        out[adherence_column(attr)] = hit.astype(np.int64)
    return out


def run_side(run_dir: str | Path) -> Side:
    """A finished run directory as one side of a pairing."""
    from fairbench.metrics.alignment import expected_families
    from fairbench.prompts import load_run_suite

    d = Path(run_dir)
    if not d.is_dir():
        raise UserError(f"run directory not found: {run_dir}")
    record, metrics = read_record(d), read_metrics(d)
    spec = record.spec
    prompts = load_run_suite(d, spec["suite"]).select(spec["split"], spec.get("limit"))
    labels = read_labels(d / LABELS)
    # attributes in the classifier's order (the order of their label columns)
    attrs = sorted((a for a in metrics["attributes"] if "*" not in a and a in labels.columns),
                   key=list(labels.columns).index)
    groups = {a: metrics["attributes"][a]["groups"] for a in attrs}
    units = unit_table(labels, finished_rows(d, record.n_units), groups, expected_families(prompts),
                       {p.id: p.requested for p in prompts if p.requested}, str(d / LABELS))
    return Side(str(d), settings_of(record, metrics), units, groups, [p.id for p in prompts], metrics)


def differences(a: Side, b: Side, keys: tuple[str, ...]) -> list[str]:
    """'key: A there, B here' for every setting in `keys` on which the sides differ (a setting only one side
    records, e.g. a reference written before the setting existed, cannot be compared)."""
    return [f"{k}: {b.settings.get(k)!r} in {b.name}, {a.settings.get(k)!r} in {a.name}"
            for k in keys if k in a.settings and k in b.settings and a.settings[k] != b.settings[k]]


def align(a: Side, b: Side) -> tuple[pd.DataFrame, pd.DataFrame, np.ndarray]:
    """Both unit tables in one order and the prompt index of each unit; refuses units that do not pair."""
    only_a, only_b = a.units.index.difference(b.units.index), b.units.index.difference(a.units.index)
    if len(only_a) or len(only_b):
        example = (list(only_a) or list(only_b))[0]
        raise UserError(f"{a.name} and {b.name} do not hold the same units ({len(only_a)} only in the first, "
                        f"{len(only_b)} only in the second, e.g. {example!r}): finish or repeat the runs")
    ua, ub = a.units, b.units.loc[a.units.index]
    bad = ua["seed"].to_numpy() != ub["seed"].to_numpy()
    if bad.any():
        key = ua.index[np.flatnonzero(bad)[0]]
        raise UserError(f"unit {key!r} has seed {ua.loc[key, 'seed']} in {a.name} and {ub.loc[key, 'seed']} in {b.name}")
    order = {p: i for i, p in enumerate(a.prompt_ids)}
    prompt = ua["prompt_id"].map(order)
    if prompt.isna().any():
        raise UserError(f"{a.name} holds prompts its suite does not list (e.g. {ua['prompt_id'][prompt.isna()].iloc[0]!r})")
    return ua, ub, prompt.to_numpy(dtype=np.int64)
