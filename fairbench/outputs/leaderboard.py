"""`fairbench leaderboard`: many run directories -> one CSV (schema in docs/leaderboard.md)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from fairbench.config import tier_fields
from fairbench.errors import UserError, did_you_mean
from fairbench.metrics.fairness import FAIRNESS_METRICS
from fairbench.outputs.rundir import RunRecord, read_run

LEADERBOARD_SCHEMA = 3
ID_COLUMNS = ["schema_version", "run", "method", "method_level", "model", "suite", "split", "n_per_prompt",
              "seed", "classifier", "attribute", "n_prompts", "n_images", "n_faces", "no_face_rate", "n_skewed", "n_tested"]


def leaderboard_rows(run_dir: Path) -> list[dict]:
    """One row per attribute of a finished run."""
    run, metrics = read_run(run_dir)
    spec = run.spec
    rows = []
    for attr, res in metrics["attributes"].items():
        row = {
            "schema_version": LEADERBOARD_SCHEMA, "run": Path(run_dir).name, "method": spec["method"],
            "method_level": run.method.level, "model": spec["model"], "suite": run.suite.name,
            "split": spec["split"], "n_per_prompt": spec["n"], "seed": spec["seed"],
            "classifier": metrics.get("classifier"), "attribute": attr,
            "n_prompts": res["n_prompts_with_faces"], "n_images": res["n_images"], "n_faces": res["n_faces"],
            "no_face_rate": res["no_face_rate"], "n_skewed": res["skew_test"]["n_skewed"],
            "n_tested": res["skew_test"]["n_tested"],
        }
        for m in FAIRNESS_METRICS.names():
            est = res["aggregate"].get(m)
            if est:
                c = est["corrected"]
                row.update({m: est["value"], f"{m}_ci_low": est["ci_low"], f"{m}_ci_high": est["ci_high"],
                            f"{m}_floor": est["floor"], f"{m}_corrected": c["value"],
                            f"{m}_corrected_ci_low": c["ci_low"], f"{m}_corrected_ci_high": c["ci_high"],
                            f"{m}_bias_bound": c["bias_bound"]})
        probe = (run.embedding_probe or {}).get(attr)
        if probe:
            row.update({"embedding_gap": probe["value"], "embedding_gap_ci_low": probe["ci_low"],
                        "embedding_gap_ci_high": probe["ci_high"]})
        row.update(run_level_columns(metrics))
        rows.append(row)
    return rows


def run_level_columns(metrics: dict) -> dict:
    """Quality, alignment and adherence numbers of a run (the same on each of its attribute rows)."""
    cols: dict = {}
    for name, q in metrics.get("quality", {}).items():
        cols.update({f"quality:{name}": q["fd"], f"quality:{name}:kid": q["kid"],
                     f"quality:{name}:reference": shown_path(q["reference"])})
    for name, a in metrics.get("alignment", {}).items():
        value = a.get("value", a.get("clip_score"))
        cols.update({f"alignment:{name}": value, f"alignment:{name}_ci_low": a["ci_low"],
                     f"alignment:{name}_ci_high": a["ci_high"]})
    for attr, a in metrics.get("adherence", {}).items():
        cols.update({f"adherence:{attr}": a["value"], f"adherence:{attr}_ci_low": a["ci_low"],
                     f"adherence:{attr}_ci_high": a["ci_high"]})
    return cols


def shown_path(path: str | None) -> str | None:
    """A recorded path as a table shows it: relative to the working directory when inside it (a table built
    in a checkout then names runs as the checkout does, with no machine's absolute prefix), else as recorded."""
    if path is None or not Path(path).is_absolute():
        return path
    try:
        return str(Path(path).relative_to(Path.cwd()))
    except ValueError:
        return path


def method_identity(run: RunRecord) -> str:
    """(method, its arguments, model) of a run: pairs a run with its explicit-prompt run."""
    spec = run.spec
    return json.dumps({k: spec.get(k) for k in (*tier_fields("method"), "model")}, sort_keys=True)


def explicit_columns(explicit_dirs: list[Path]) -> dict[str, dict]:
    """Adherence columns of explicit-prompt runs, keyed by method identity. One method may have several
    such runs (the explicit suite's groups, the emotions suite's expressions) when each measures other
    attributes; `adherence_run` names them all, joined by '+'."""
    out: dict[str, dict] = {}
    measured: dict[str, set[str]] = {}  # method identity -> attributes whose adherence is already joined
    for d in explicit_dirs:
        run, metrics = read_run(d)
        if not metrics.get("adherence"):
            raise UserError(f"{d} has no adherence numbers: not a run of an explicit-prompt suite")
        key = method_identity(run)
        have, attrs = out.setdefault(key, {}), measured.setdefault(key, set())
        if twice := sorted(attrs & set(metrics["adherence"])):
            raise UserError(f"two explicit-prompt runs measure {twice[0]!r} for the same method, arguments and "
                            f"model: {have['adherence_run']} and {d}")
        attrs.update(metrics["adherence"])
        have.update({k: v for k, v in run_level_columns(metrics).items() if k.startswith("adherence:")})
        have["adherence_run"] = "+".join(filter(None, (have.get("adherence_run"), Path(d).name)))
    return out


def build_leaderboard(run_dirs: list[Path], explicit_dirs: list[Path] | None = None,
                      attributes: list[str] | None = None) -> pd.DataFrame:
    """Rows of every run, sorted by attribute then corrected bias_gap (fairest first).

    `explicit_dirs`: explicit-prompt runs whose adherence columns join the rows of the run with
    the same method, method arguments and model. `attributes`: keep only these attributes.
    """
    seen: dict[Path, Path] = {}
    for d in [*run_dirs, *(explicit_dirs or [])]:
        if Path(d).resolve() in seen:
            raise UserError(f"{d} is listed twice")
        seen[Path(d).resolve()] = d
    adherence = explicit_columns(explicit_dirs or [])
    if attributes:
        known = {a for d in run_dirs for a in read_run(d)[1]["attributes"]}
        for a in attributes:
            if a not in known:
                raise UserError(f"no run has attribute {a!r}.{did_you_mean(a, known)} "
                                f"Attributes: {', '.join(sorted(known))}")
    rows = []
    for d in run_dirs:
        extra = adherence.get(method_identity(read_run(d)[0]), {})
        rows += [{**r, **extra} for r in leaderboard_rows(d) if not attributes or r["attribute"] in attributes]
    df = pd.DataFrame(rows)
    return df.sort_values(["attribute", "bias_gap_corrected", "method"]).reset_index(drop=True) if not df.empty else df


def _interval(df: pd.DataFrame, col: str) -> pd.Series:
    """'v [lo, hi]' strings of a metric column (blank where absent)."""
    if col not in df:
        return pd.Series([""] * len(df), index=df.index)
    lo, hi = df.get(f"{col}_ci_low"), df.get(f"{col}_ci_high")
    return pd.Series([("" if pd.isna(v) else f"{v:.3f}" + ("" if lo is None or pd.isna(lo.iloc[i]) else
                       f" [{lo.iloc[i]:.3f}, {hi.iloc[i]:.3f}]")) for i, v in enumerate(df[col])], index=df.index)


def markdown_table(df: pd.DataFrame, metrics: tuple[str, ...] = ("bias_gap", "kl")) -> str:
    """A compact markdown view of a leaderboard: fairness with intervals, faces, alignment, FD, adherence."""
    view = pd.DataFrame({"attribute": df["attribute"], "method": df["method"], "level": df["method_level"]})
    if df["model"].nunique() > 1:  # a leaderboard over several worlds or models
        view.insert(0, "model", df["model"])
    if df.duplicated(["model", "attribute", "method"]).any():  # variants of one method (an ablation): name each run
        view.insert(list(view.columns).index("method") + 1, "run", df["run"])
    for m in metrics:  # a CSV of schema 2 has no floors or corrected estimates: only the plug-in shows
        if f"{m}_corrected" in df:
            view[f"{m} corrected"] = _interval(df, f"{m}_corrected")
        floors = df[f"{m}_floor"] if f"{m}_floor" in df else pd.Series([float("nan")] * len(df), index=df.index)
        view[f"{m} plug-in (floor)" if f"{m}_floor" in df else m] = [
            f"{v} ({f:.3f})" if v and not pd.isna(f) else v for v, f in zip(_interval(df, m), floors)]
    if "n_skewed" in df:
        view["skewed prompts"] = [f"{int(k)} of {int(t)}" for k, t in zip(df["n_skewed"], df["n_tested"])]
    view["faces / images"] = [f"{int(f)} / {int(n)}" for f, n in zip(df["n_faces"], df["n_images"])]
    if "embedding_gap" in df:  # embedding-level methods and vanilla only (docs/metrics.md)
        view["embedding gap"] = _interval(df, "embedding_gap")
    if "alignment:family_accuracy" in df:
        view["family acc."] = _interval(df, "alignment:family_accuracy")
    fd_cols = [c for c in df.columns if c.startswith("quality:") and c.count(":") == 1]
    for c in fd_cols:
        view[c.split(":", 1)[1] + " to ref."] = [("" if pd.isna(v) else f"{v:.3f}") for v in df[c]]
    for c in [c for c in df.columns if c.startswith("adherence:") and not c.endswith(("_ci_low", "_ci_high"))]:
        view["explicit " + c.split(":", 1)[1]] = _interval(df, c)
    return view.to_markdown(index=False)
