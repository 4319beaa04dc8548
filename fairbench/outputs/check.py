"""`fairbench check RUN_DIR --against REF`: a paired, two-sided regression check.

A reference (written by `fairbench reference`, or another run directory) keeps what pairing
needs: the run's settings, and per unit its key, seed, image sha256 and labels. The check:

1. refuses a run whose units do not pair with the reference's (suite, split, limit, n, seed, model
   and its weights fingerprint, method, classifier), naming the setting; it flags, and then
   tests, settings that change pixels but not which units there are (dtype, batch size, sampling);
2. exact mode: every image byte-identical and every label identical means identical results,
   so the check passes with no statistics;
3. otherwise, for each watched quantity (each attribute's labels, face presence, occupation-family
   match), an exact paired permutation test (`metrics.paired.swap_test`): under "same pipeline up
   to numerical noise" the two labels of a unit are exchangeable, so the observed changes (each
   group's count, each headline fairness metric) are compared with those of every swap pattern of
   the units that differ. A quantity regresses when p < alpha, in either direction: against a
   vanilla reference, a fairer result is a changed pipeline too.

With D units that differ, the smallest p a quantity can reach is 2 / 2^D, so a handful of
borderline labels flipped by numerical noise can never fail it (D <= 5 at alpha 0.05).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from fairbench.config import identity_fields
from fairbench.errors import UserError, validation_message
from fairbench.io import atomic_write_text
from fairbench.metrics.fairness import FAIRNESS_METRICS
from fairbench.metrics.paired import NO_LABEL, SwapTest, metric_change, net_group_changes, share_change, swap_test
from fairbench.outputs.pairing import FACE, FAMILY, Side, align, differences, run_side
from fairbench.outputs.rundir import read_json, read_record
from fairbench.registry import MAX_COUNT

REFERENCE_SCHEMA = 2
FAIRNESS_KEYS = ("fd", "kl", "bias_gap")
REFUSED = identity_fields("check", "refuse", recorded=True)
FLAGGED = identity_fields("check", "flag")
UNIT_COLUMNS = ("prompt_id", "seed", "sha256")
SHA256 = re.compile(r"[0-9a-f]{64}")


def headline(metrics: dict[str, Any]) -> dict[str, float]:
    """The aggregate numbers a check prints beside its tests (attribute.metric, face rate, family accuracy)."""
    out: dict[str, float] = {}
    for attr, res in metrics.get("attributes", {}).items():
        if "*" not in attr:
            out.update({f"{attr}.{m}": res["aggregate"][m]["value"] for m in FAIRNESS_KEYS if m in res["aggregate"]})
    if metrics.get("n_images"):
        out["face_rate"] = metrics["n_faces"] / metrics["n_images"]
    for name, block in metrics.get("alignment", {}).items():
        out[f"alignment.{name}"] = block.get("value", block.get("clip_score"))
    return out


def reference_of(side: Side) -> dict[str, Any]:
    """A reference document from a run side: settings, per-unit keys, seeds, sha256 and label codes."""
    u = side.units
    return {
        "schema_version": REFERENCE_SCHEMA, "settings": side.settings, "prompt_ids": side.prompt_ids,
        "groups": side.groups, "headline": headline(side.metrics),
        "units": {"key": u.index.tolist(), **{c: u[c].tolist() for c in u.columns}},
    }


def write_reference(run_dir: Path, out: Path) -> dict[str, Any]:
    """Write a run's reference file for `check` (a few kB at CI size)."""
    record = read_record(run_dir)
    if record.status != "complete":
        raise UserError(f"{run_dir} is not a complete run (status {record.status!r}): finish it first")
    ref = reference_of(run_side(run_dir))
    ref.update(fairbench_version=record.fairbench_version, hardware=record.hardware)
    # compact, and in insertion order (attributes keep the classifier's order)
    atomic_write_text(out, json.dumps(ref, separators=(",", ":")) + "\n")
    return ref


class ReferenceFile(BaseModel):
    """A reference file (`fairbench reference`), as `check` reads it: every column one value per unit, every
    label code one of its attribute's groups or NO_LABEL."""

    model_config = ConfigDict(extra="forbid")

    schema_version: Literal[REFERENCE_SCHEMA]  # type: ignore[valid-type]
    settings: dict[str, Any]
    prompt_ids: list[str]
    groups: dict[str, list[str]]
    headline: dict[str, float | None] = Field(default_factory=dict)
    units: dict[str, list[Any]]
    fairbench_version: str | None = None
    hardware: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _units(self) -> "ReferenceFile":
        u = self.units
        missing = [c for c in ("key", *UNIT_COLUMNS, FACE, *self.groups) if c not in u]
        if missing:
            raise ValueError(f"units lack the column {missing[0]!r}")
        n = len(u["key"])
        if (bad := next((c for c, v in u.items() if len(v) != n), None)) is not None:
            raise ValueError(f"units column {bad!r} has {len(u[bad])} values for {n} units")
        if not all(isinstance(k, str) for k in u["key"]) or len(set(u["key"])) != n:
            raise ValueError("units.key must be distinct unit keys")
        if not all(isinstance(h, str) and SHA256.fullmatch(h) for h in u["sha256"]):
            raise ValueError("units.sha256 must be 64 lowercase hex digits per unit")
        if not all(isinstance(p, str) for p in u["prompt_id"]):
            raise ValueError("units.prompt_id must be prompt ids")
        if not all(s is None or type(s) is int for s in u["seed"]):
            raise ValueError("units.seed must be whole numbers")
        for col, values in u.items():
            if col in ("key", *UNIT_COLUMNS):
                continue
            top = len(self.groups[col]) if col in self.groups else 1 if col == FACE else 2
            if not all(type(v) is int and (v == NO_LABEL or 0 <= v < top) for v in values):
                raise ValueError(f"units.{col} holds a label code outside {NO_LABEL} and 0..{top - 1}")
        return self


def reference_side(path: Path) -> Side:
    """A reference file, or a run directory, as one side of a pairing."""
    if path.is_dir():
        return run_side(path)
    doc = read_json(path)
    version = doc.get("schema_version")
    if version != REFERENCE_SCHEMA:
        raise UserError(f"{path} is a schema-{version} reference; the paired check needs schema {REFERENCE_SCHEMA} "
                        f"(per-image labels): regenerate it with `fairbench reference RUN --out {path}`"
                        if type(version) is int else f"{path} is not a fairbench reference file")
    try:
        ref = ReferenceFile.model_validate(doc)
    except ValidationError as exc:
        raise UserError(f"{path}: malformed reference file ({validation_message(exc, ReferenceFile)})") from None
    units = pd.DataFrame(ref.units).set_index("key")
    side = Side(str(path), ref.settings, units, ref.groups, ref.prompt_ids)
    side.metrics = {"headline": ref.headline}
    return side


@dataclass
class QuantityResult:
    """The paired test of one watched quantity."""

    name: str
    test: SwapTest
    regressed: bool

    def line(self) -> str:
        """One readable line."""
        verdict = "REGRESSION" if self.regressed else "ok"
        moved = ", ".join(f"{k} {v:+.0f}" if k == "group counts" else f"{k} {v:+.3f}"
                          for k, v in self.test.observed.items())
        return (f"{verdict:10s} {self.name:14s} {self.test.n_discordant:4d} of {self.test.n_units} units differ; "
                f"{moved}; p = {self.test.p_value:.4g}" + ("" if self.test.exact else " (Monte Carlo)"))


@dataclass
class CheckResult:
    """Outcome of a check: settings flagged, exact or statistical mode, per-quantity tests."""

    flagged: list[str]
    identical_images: int
    n_units: int
    exact: bool
    relabelled: int = 0  # labels that differ on byte-identical images: the labeller changed
    quantities: list[QuantityResult] = field(default_factory=list)
    headline: list[str] = field(default_factory=list)

    @property
    def regressions(self) -> list[QuantityResult]:
        """The quantities that failed."""
        return [q for q in self.quantities if q.regressed]


def quantity_tests(ref: Side, run: Side, alpha: float, n_perm: int = 9999, seed: int = 0) -> list[QuantityResult]:
    """The paired test of every watched quantity."""
    ub, ua, prompt = align(ref, run)
    p = len(ref.prompt_ids)
    tests: list[tuple[str, np.ndarray, np.ndarray, int, dict]] = []
    for attr, groups in ref.groups.items():
        if attr not in run.groups or run.groups[attr] != groups:
            raise UserError(f"the run's {attr!r} groups differ from the reference's: was it labelled by another classifier?")
        stats = {"group counts": net_group_changes,
                 **{m: metric_change(FAIRNESS_METRICS.get(m)) for m in FAIRNESS_KEYS}}
        tests.append((attr, ub[attr].to_numpy(), ua[attr].to_numpy(), len(groups), stats))
    face = [np.where(x[FACE].to_numpy() >= 0, 1, 0) for x in (ub, ua)]
    tests.append(("face", face[0], face[1], 2, {"face rate": share_change(1)}))
    if FAMILY in ub and FAMILY in ua:
        tests.append(("family match", ub[FAMILY].to_numpy(), ua[FAMILY].to_numpy(), 2,
                      {"family accuracy": share_change(1)}))
    out = []
    for name, r, a, k, stats in tests:
        t = swap_test(r, a, prompt, p, k, stats, n_perm=n_perm, seed=seed)
        out.append(QuantityResult(name, t, t.p_value < alpha))
    return out


def check_run(run_dir: Path, against: Path, alpha: float = 0.05, n_perm: int = 9999) -> CheckResult:
    """Check a finished run against a reference (file or run directory)."""
    if not 0 < alpha < 1:
        raise UserError(f"--alpha must be between 0 and 1, got {alpha}")
    if not 99 <= n_perm <= MAX_COUNT:  # Monte Carlo swap patterns: one per permutation, in memory
        raise UserError(f"--permutations must be between 99 and {MAX_COUNT:,}, got {n_perm}")
    ref, run = reference_side(against), run_side(run_dir)
    refused = differences(run, ref, REFUSED)
    if refused:
        more = f" (and {len(refused) - 1} more)" if len(refused) > 1 else ""
        raise UserError(f"the run does not pair with the reference: {refused[0]}{more}; make a reference from a run "
                        "with the same settings")
    flagged = differences(run, ref, FLAGGED)
    ub, ua, _ = align(ref, run)
    same_sha = int((ua["sha256"].to_numpy() == ub["sha256"].to_numpy()).sum())
    label_cols = [c for c in ub.columns if c not in UNIT_COLUMNS]
    same_labels = all(c in ua and np.array_equal(ua[c].to_numpy(), ub[c].to_numpy()) for c in label_cols)
    relabelled = int(sum(((ua["sha256"] == ub["sha256"]) & (ua[c] != ub[c])).sum() for c in label_cols if c in ua))
    result = CheckResult(flagged, same_sha, len(ua), exact=same_sha == len(ua) and same_labels,
                         relabelled=relabelled)
    ref_head = ref.metrics.get("headline") or headline(ref.metrics)
    run_head = headline(run.metrics)
    result.headline = [f"{k:28s} {ref_head[k]:.4f} -> {run_head[k]:.4f} ({run_head[k] - ref_head[k]:+.4f})"
                       for k in ref_head if k in run_head and ref_head[k] == ref_head[k]]
    if not result.exact:
        result.quantities = quantity_tests(ref, run, alpha, n_perm)
    return result


def check_lines(result: CheckResult, alpha: float) -> list[str]:
    """What `fairbench check` prints."""
    lines = [f"flagged: {f} (pixels may move; the paired tests below measure the effect)" for f in result.flagged]
    if result.exact:
        return lines + [f"exact: all {result.n_units} images byte-identical to the reference's and every label "
                        "identical, so every result is identical"]
    lines.append(f"{result.identical_images} of {result.n_units} images byte-identical; paired permutation tests "
                 f"(two-sided, alpha {alpha} per quantity):")
    if result.relabelled:
        lines.insert(-1, f"note: {result.relabelled} labels differ on byte-identical images: the detector or "
                         "classifier gives other answers for the same pixels")
    lines += [q.line() for q in result.quantities]
    lines += ["headline numbers (reference -> run):"] + [f"  {h}" for h in result.headline]
    return lines
