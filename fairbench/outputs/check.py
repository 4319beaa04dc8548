"""`fairbench check RUN_DIR --against REF`: fail when a headline number moves the wrong way.

A reference is a JSON file of headline numbers (written by `fairbench reference`) or another
run directory. A metric regresses when it moves in its worse direction by more than its band:
z * sqrt(se_ref^2 + se_run^2) (standard errors from the 95 % bootstrap / Wilson intervals) or,
for numbers without an interval (FD, KID), an explicit tolerance; the larger band applies.
Runs on the same hardware with the same seed reproduce their numbers exactly, so any failure
there is a real change; across hardware the band absorbs numerical noise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fairbench.errors import UserError
from fairbench.io import atomic_write_json
from fairbench.outputs.rundir import METRICS_JSON, RUN_JSON, read_json

REFERENCE_SCHEMA = 1
FAIRNESS_KEYS = ("fd", "kl", "bias_gap")
Z95 = 1.959963984540054


def headline(metrics: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The numbers a regression check watches, each with its interval and direction."""
    out: dict[str, dict[str, Any]] = {}
    for attr, res in metrics.get("attributes", {}).items():
        if "*" in attr:
            continue
        for m in FAIRNESS_KEYS:
            est = res["aggregate"].get(m)
            if est and est["value"] == est["value"]:
                out[f"{attr}.{m}"] = {"value": est["value"], "ci_low": est["ci_low"], "ci_high": est["ci_high"],
                                      "higher_is_better": False}
    n_img = metrics.get("n_images", 0)
    if n_img:
        from fairbench.metrics.evaluate import proportion

        faces = proportion(int(metrics["n_faces"]), int(n_img))
        out["face_rate"] = {"value": faces["value"], "ci_low": faces["ci_low"], "ci_high": faces["ci_high"],
                            "higher_is_better": True}
    for name, block in metrics.get("alignment", {}).items():
        value = block.get("value", block.get("clip_score"))
        out[f"alignment.{name}"] = {"value": value, "ci_low": block["ci_low"], "ci_high": block["ci_high"],
                                    "higher_is_better": True}
    for name, q in metrics.get("quality", {}).items():
        out[f"quality.{name}"] = {"value": q["fd"], "ci_low": None, "ci_high": None, "higher_is_better": False,
                                  "tolerance": 0.1 * abs(q["fd"]) + 1e-3}
    return out


def write_reference(run_dir: Path, out: Path) -> dict[str, Any]:
    """Write the headline numbers of a run as a reference file."""
    run, metrics = read_json(run_dir / RUN_JSON), read_json(run_dir / METRICS_JSON)
    ref = {"schema_version": REFERENCE_SCHEMA, "spec": run["spec"], "metrics": headline(metrics),
           "fairbench_version": run["fairbench_version"], "hardware": run.get("hardware")}
    atomic_write_json(out, ref)
    return ref


def load_reference(path: Path) -> dict[str, dict[str, Any]]:
    """Headline numbers from a reference file or a run directory."""
    if path.is_dir():
        return headline(read_json(path / METRICS_JSON))
    ref = read_json(path)
    if ref.get("schema_version") != REFERENCE_SCHEMA or "metrics" not in ref:
        raise UserError(f"{path} is not a fairbench reference file (schema {REFERENCE_SCHEMA})")
    return ref["metrics"]


def _se(entry: dict[str, Any]) -> float:
    if entry.get("ci_low") is None or entry.get("ci_high") is None:
        return 0.0
    return (entry["ci_high"] - entry["ci_low"]) / (2 * Z95)


@dataclass
class Finding:
    """One metric's comparison."""

    name: str
    reference: float
    value: float
    band: float
    regressed: bool

    def line(self) -> str:
        """One readable line."""
        delta = self.value - self.reference
        verdict = "REGRESSION" if self.regressed else "ok"
        return f"{verdict:10s} {self.name:32s} {self.reference:10.4f} -> {self.value:10.4f} ({delta:+.4f}, band {self.band:.4f})"


def compare(run: dict[str, dict[str, Any]], ref: dict[str, dict[str, Any]], z: float = 3.0,
            tolerance: float = 0.0) -> list[Finding]:
    """Compare every reference metric the run also has."""
    findings = []
    for name, r in ref.items():
        if name not in run:
            continue
        v = run[name]
        band = max(z * math.sqrt(_se(r) ** 2 + _se(v) ** 2), r.get("tolerance", 0.0), tolerance)
        worse = (r["value"] - v["value"]) if r["higher_is_better"] else (v["value"] - r["value"])
        findings.append(Finding(name, r["value"], v["value"], band, worse > band))
    missing = sorted(set(ref) - set(run))
    if missing:
        raise UserError(f"the run lacks reference metrics {missing[:4]}: was it made with the same suite and classifier?")
    return findings
