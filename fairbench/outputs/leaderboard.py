"""`fairbench leaderboard`: many run directories -> one CSV (schema in docs/leaderboard.md)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from fairbench.metrics.fairness import FAIRNESS_METRICS
from fairbench.outputs.rundir import read_run

LEADERBOARD_SCHEMA = 2
ID_COLUMNS = ["schema_version", "run", "method", "method_level", "model", "suite", "split", "n_per_prompt",
              "seed", "classifier", "attribute", "n_prompts", "n_images", "n_faces", "no_face_rate"]


def leaderboard_rows(run_dir: Path) -> list[dict]:
    """One row per attribute of a finished run."""
    run, metrics = read_run(run_dir)
    spec = run["spec"]
    rows = []
    for attr, res in metrics["attributes"].items():
        row = {
            "schema_version": LEADERBOARD_SCHEMA, "run": Path(run_dir).name, "method": spec["method"],
            "method_level": run.get("method", {}).get("level"), "model": spec["model"], "suite": run["suite"]["name"],
            "split": spec["split"], "n_per_prompt": spec["n"], "seed": spec["seed"],
            "classifier": metrics.get("classifier"), "attribute": attr,
            "n_prompts": res["n_prompts_with_faces"], "n_images": res["n_images"], "n_faces": res["n_faces"],
            "no_face_rate": res["no_face_rate"],
        }
        for m in FAIRNESS_METRICS.names():
            est = res["aggregate"].get(m)
            if est:
                row.update({m: est["value"], f"{m}_ci_low": est["ci_low"], f"{m}_ci_high": est["ci_high"]})
        row.update(run_level_columns(metrics))
        rows.append(row)
    return rows


def run_level_columns(metrics: dict) -> dict:
    """Quality, alignment and adherence numbers of a run (the same on each of its attribute rows)."""
    cols: dict = {}
    for name, q in metrics.get("quality", {}).items():
        cols.update({f"quality:{name}": q["fd"], f"quality:{name}:kid": q["kid"],
                     f"quality:{name}:reference": q["reference"]})
    for name, a in metrics.get("alignment", {}).items():
        value = a.get("value", a.get("clip_score"))
        cols.update({f"alignment:{name}": value, f"alignment:{name}_ci_low": a["ci_low"],
                     f"alignment:{name}_ci_high": a["ci_high"]})
    for attr, a in metrics.get("adherence", {}).items():
        cols.update({f"adherence:{attr}": a["value"], f"adherence:{attr}_ci_low": a["ci_low"],
                     f"adherence:{attr}_ci_high": a["ci_high"]})
    return cols


def build_leaderboard(run_dirs: list[Path]) -> pd.DataFrame:
    """Rows of every run, sorted by attribute then gender-neutral metric fd (fairest first)."""
    rows = [r for d in run_dirs for r in leaderboard_rows(d)]
    df = pd.DataFrame(rows)
    return df.sort_values(["attribute", "fd", "method"]).reset_index(drop=True) if not df.empty else df
