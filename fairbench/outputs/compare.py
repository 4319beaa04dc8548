"""`fairbench compare RUN --baseline RUN`: what a method bought and cost, paired image by image.

Both runs hold the same units (prompt id, sample index, seed), so each image of the method's run
pairs with the baseline's image drawn from the same noise. Written into the method's run
directory: compare.json, tables/compare.csv and figures/compare.png; `fairbench report` shows them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fairbench.config import identity_fields
from fairbench.errors import UserError
from fairbench.io import atomic_write_json, atomic_write_text, check_writable_target
from fairbench.metrics.correction import aggregate_corrected, correctable, mean_floor, paired_corrected
from fairbench.metrics.fairness import FAIRNESS_METRICS, uniform
from fairbench.metrics.skew import skew_test
from fairbench.metrics.paired import (NO_LABEL, aggregate, counts, flows, majority_flows, paired_bootstrap_many,
                                      share_metric, sign_test, transitions)
from fairbench.outputs.pairing import (ADHERENCE, FACE, FAMILY, Side, align, differences,
                                       run_side)
from fairbench.outputs.rundir import COMPARE_JSON, FIGURES, TABLES, read_json, read_record
from fairbench.outputs.tables import kid_text, terminal_console

COMPARE_SCHEMA = 2
# runs that differ only in these hold different images of the same prompts: compared prompt by prompt
# on the corrected estimates (the image-paired tests need the same units)
PROMPT_PAIRED = ("n", "seed")
VERDICT_METRICS = ("bias_gap", "kl")
# two runs compared must agree on these; a batch shape may differ (pixels move by noise only), and is noted
MUST_MATCH = identity_fields("compare", "refuse", recorded=True)
NOTED = identity_fields("compare", "note")


def pairing_notes(run: Side, base: Side, allowed: tuple[str, ...] = ()) -> list[str]:
    """Refuse sides whose units do not pair (naming the setting); return the differences that are only noted."""
    diff = differences(run, base, tuple(k for k in MUST_MATCH if k not in allowed))
    if diff:
        more = f" (and {len(diff) - 1} more)" if len(diff) > 1 else ""
        raise UserError(f"{run.name} and {base.name} do not pair: {diff[0]}{more}")
    return differences(run, base, NOTED)


def _changes(ref: np.ndarray, run: np.ndarray, prompt: np.ndarray, n_prompts: int, k: int, metrics: dict[str, Any],
             n_boot: int, level: float, seed: int) -> dict[str, dict[str, Any]]:
    """Before, after and the paired change of each metric."""
    c_ref, c_run = counts(ref, prompt, n_prompts, k), counts(run, prompt, n_prompts, k)
    changes = paired_bootstrap_many(ref, run, prompt, n_prompts, k, metrics, n_boot, level, seed)
    return {name: {"before": float(aggregate(m, c_ref)), "after": float(aggregate(m, c_run)),
                   "change": {key: v for key, v in changes[name].to_dict().items() if key != "n"}}
            for name, m in metrics.items()}


def corrected_changes(c_ref: np.ndarray, c_run: np.ndarray, level: float, n_sim: int,
                      seed: int) -> dict[str, dict[str, Any]]:
    """Per correctable metric: each side's corrected aggregate and floor, and the change of the corrected
    estimate, paired prompt by prompt (valid at any n on either side)."""
    return {m: {"before": aggregate_corrected(c_ref, m, n_sim=n_sim, level=level, seed=seed).to_dict(),
                "after": aggregate_corrected(c_run, m, n_sim=n_sim, level=level, seed=seed).to_dict(),
                "floor_before": mean_floor(c_ref, m, seed=seed), "floor_after": mean_floor(c_run, m, seed=seed),
                "change": paired_corrected(c_ref, c_run, m, level=level).to_dict()}
            for m in FAIRNESS_METRICS.names() if correctable(m, c_ref.shape[1])}


def skew_counts(c_ref: np.ndarray, c_run: np.ndarray, prompt_ids: list[str], seed: int) -> dict[str, Any]:
    """Prompts significantly skewed on each side (exact test, Benjamini-Hochberg at 0.05)."""
    sides = {side: skew_test(c, prompt_ids, uniform(c.shape[1]), seed=seed) for side, c in
             (("before", c_ref), ("after", c_run))}
    return {side: {"n_skewed": t["n_skewed"], "n_tested": t["n_tested"], "q": t["q"]} for side, t in sides.items()}


def compare_attribute(ref: np.ndarray, run: np.ndarray, prompt: np.ndarray, prompt_ids: list[str],
                      groups: list[str], n_boot: int, level: float, seed: int) -> dict[str, Any]:
    """Every fairness metric's paired change (plug-in and corrected), label flips by direction, per-prompt values."""
    p, k = len(prompt_ids), len(groups)
    metrics = _changes(ref, run, prompt, p, k, {m: FAIRNESS_METRICS.get(m) for m in FAIRNESS_METRICS.names()},
                       n_boot, level, seed)
    both = (ref >= 0) & (run >= 0)
    majority = majority_flows(ref, run, prompt, p, k)
    per_prompt = []
    for i, pid in enumerate(prompt_ids):
        row: dict[str, Any] = {"prompt_id": pid}
        for m in VERDICT_METRICS:
            fn = FAIRNESS_METRICS.get(m)
            row[m] = {side: float(aggregate(fn, counts(codes, prompt, p, k)[i : i + 1]))
                      for side, codes in (("before", ref), ("after", run))}
        per_prompt.append(row)
    return {
        "groups": groups, "metrics": metrics,
        "corrected": corrected_changes(counts(ref, prompt, p, k), counts(run, prompt, p, k), level, n_boot, seed),
        "skewed_prompts": skew_counts(counts(ref, prompt, p, k), counts(run, prompt, p, k), prompt_ids, seed),
        "flips": {"n_labelled_both": int(both.sum()), "n_flipped": int((both & (ref != run)).sum()),
                  "groups": [f.to_dict() for f in flows(ref, run, groups)],
                  "toward_majority": majority.into, "away_from_majority": majority.out,
                  "majority_p_value": majority.p_value,
                  "transitions": transitions(ref, run, groups).to_dict(orient="index")},
        "per_prompt": per_prompt,
    }


def compare_binary(ref: np.ndarray, run: np.ndarray, prompt: np.ndarray, n_prompts: int, name: str,
                   n_boot: int, level: float, seed: int) -> dict[str, Any]:
    """A yes/no quantity per unit (face found, family matched): paired change of its rate, and its flips."""
    out = _changes(ref, run, prompt, n_prompts, 2, {name: share_metric(1, name)}, n_boot, level, seed)[name]
    gained, lost = int(((ref == 0) & (run == 1)).sum()), int(((ref == 1) & (run == 0)).sum())
    return {**out, "gained": gained, "lost": lost, "p_value": sign_test(gained, lost), "n": int(len(ref))}


def prompt_counts(side: Side, attr: str) -> np.ndarray:
    """(P, K) counts of one side, prompts in its suite order."""
    order = {p: i for i, p in enumerate(side.prompt_ids)}
    prompt = side.units["prompt_id"].map(order).to_numpy(dtype=np.int64)
    return counts(side.units[attr].to_numpy(), prompt, len(side.prompt_ids), len(side.groups[attr]))


def compare_prompts(run: Side, base: Side, n_boot: int, level: float, seed: int, notes: list[str]) -> dict[str, Any]:
    """Runs of the same prompts with different images (another n or seed): corrected estimates only."""
    if run.prompt_ids != base.prompt_ids:
        raise UserError(f"{run.name} and {base.name} do not hold the same prompts")
    diff = differences(run, base, PROMPT_PAIRED)
    return {
        "schema_version": COMPARE_SCHEMA, "run": run.name, "baseline": base.name, "mode": "prompt-paired",
        "method": run.settings.get("method"), "method_args": run.settings.get("method_args"),
        "baseline_method": base.settings.get("method"), "n_prompts": len(run.prompt_ids),
        "n_units": len(run.units), "n_units_baseline": len(base.units),
        "notes": [f"the runs hold different images ({'; '.join(diff)}): the image-paired tests do not apply; "
                  "compared on the corrected estimates, prompt by prompt, which do not depend on n", *notes],
        "settings": {"level": level, "n_boot": n_boot, "seed": seed,
                     "interval": "prompt-paired: t * se of per-prompt differences + both bias bounds"},
        "attributes": {a: {"groups": g, "corrected": corrected_changes(
            prompt_counts(base, a), prompt_counts(run, a), level, n_boot, seed),
            "skewed_prompts": skew_counts(prompt_counts(base, a), prompt_counts(run, a), run.prompt_ids, seed)}
            for a, g in run.groups.items() if a in base.groups and base.groups[a] == g},
    }


def compare_sides(run: Side, base: Side, n_boot: int = 1000, level: float = 0.95, seed: int = 0) -> dict[str, Any]:
    """Paired comparison of a run with its baseline (pure: reads only the two sides)."""
    if differences(run, base, PROMPT_PAIRED) and not differences(
            run, base, tuple(k for k in MUST_MATCH if k not in PROMPT_PAIRED)):
        return compare_prompts(run, base, n_boot, level, seed, pairing_notes(run, base, PROMPT_PAIRED))
    notes = pairing_notes(run, base)
    ua, ub, prompt = align(run, base)
    p = len(run.prompt_ids)
    face_run = np.where(ua[FACE].to_numpy() >= 0, 1, 0)
    face_ref = np.where(ub[FACE].to_numpy() >= 0, 1, 0)
    result: dict[str, Any] = {
        "schema_version": COMPARE_SCHEMA, "run": run.name, "baseline": base.name,
        "method": run.settings.get("method"), "method_args": run.settings.get("method_args"),
        "baseline_method": base.settings.get("method"), "n_units": len(ua), "n_prompts": p,
        "identical_images": int((ua["sha256"].to_numpy() == ub["sha256"].to_numpy()).sum()),
        "notes": notes, "settings": {"n_boot": n_boot, "level": level, "seed": seed,
                                     "bootstrap": "paired: prompts, then sample indices within a prompt, "
                                                  "the same units on both sides",
                                     "flip_test": "exact two-sided sign test (exact McNemar)"},
        "mode": "image-paired",
        "attributes": {a: compare_attribute(ub[a].to_numpy(), ua[a].to_numpy(), prompt, run.prompt_ids, g,
                                            n_boot, level, seed) for a, g in run.groups.items() if a in base.groups},
        "faces": compare_binary(face_ref, face_run, prompt, p, "face_rate", n_boot, level, seed),
    }
    if FAMILY in ua and FAMILY in ub:
        keep = (ua[FAMILY].to_numpy() >= 0) & (ub[FAMILY].to_numpy() >= 0)
        if keep.any():
            result["family_accuracy"] = compare_binary(
                np.where(keep, ub[FAMILY].to_numpy(), NO_LABEL), np.where(keep, ua[FAMILY].to_numpy(), NO_LABEL),
                prompt, p, "family_accuracy", n_boot, level, seed)
    for col in (c for c in ua.columns if c.startswith(ADHERENCE) and c in ub.columns):
        result.setdefault("adherence", {})[col[len(ADHERENCE):]] = compare_binary(
            ub[col].to_numpy(), ua[col].to_numpy(), prompt, p, col, n_boot, level, seed)
    return result


def quality_cost(run_dir: Path, baseline_dir: Path, extractor: str = "auto") -> dict[str, Any]:
    """FD and KID of the run's images against the baseline's images; a note instead when no extractor loads."""
    from fairbench.metrics.features import build_extractor, resolve_extractor
    from fairbench.metrics.quality import quality

    extractor = resolve_extractor(extractor, read_record(run_dir).spec.get("classifier"))
    try:
        q = quality(run_dir, baseline_dir, build_extractor(extractor, None))
    except UserError as exc:
        return {"skipped": str(exc), "extractor": extractor}
    return {q["name"]: q}


def summary_frame(result: dict[str, Any]) -> pd.DataFrame:
    """One row per (attribute, metric): before, after, change and its paired interval."""
    rows = []
    for attr, res in result["attributes"].items():
        for m, c in res.get("metrics", {}).items():
            rows.append({"attribute": attr, "metric": m, "estimate": "plug-in", "before": c["before"],
                         "after": c["after"], "change": c["change"]["value"], "ci_low": c["change"]["ci_low"],
                         "ci_high": c["change"]["ci_high"], "n_flipped": res["flips"]["n_flipped"],
                         "n_labelled_both": res["flips"]["n_labelled_both"]})
        for m, c in res["corrected"].items():
            rows.append({"attribute": attr, "metric": m, "estimate": "corrected", "before": c["before"]["value"],
                         "after": c["after"]["value"], "change": c["change"]["value"], "ci_low": c["change"]["ci_low"],
                         "ci_high": c["change"]["ci_high"], "floor_before": c["floor_before"],
                         "floor_after": c["floor_after"]})
    blocks = [("face_rate" if n == "faces" else n, result[n]) for n in ("faces", "family_accuracy") if n in result]
    blocks += [(f"adherence:{attr}", c) for attr, c in result.get("adherence", {}).items()]
    for name, c in blocks:
        rows.append({"attribute": "-", "metric": name, "estimate": "plug-in", "before": c["before"],
                     "after": c["after"], "change": c["change"]["value"], "ci_low": c["change"]["ci_low"],
                     "ci_high": c["change"]["ci_high"], "n_flipped": c["gained"] + c["lost"],
                     "n_labelled_both": c["n"]})
    return pd.DataFrame(rows)


def compare_runs(run_dir: str | Path, baseline_dir: str | Path, extractor: str = "auto",
                 n_boot: int | None = None, level: float | None = None) -> dict[str, Any]:
    """Compare a run with its baseline and write compare.json, tables/compare.csv and figures/compare.png."""
    from fairbench.metrics.features import resolve_extractor
    from fairbench.outputs.plots import plot_paired_changes

    d, b = Path(run_dir), Path(baseline_dir)
    run, base = run_side(d), run_side(b)
    resolve_extractor(extractor, None)  # a misspelt extractor or a read-only run is refused before the work
    check_writable_target(d)
    s = run.metrics.get("settings", {})
    result = compare_sides(run, base, n_boot or s.get("n_boot", 1000), level or s.get("level", 0.95),
                           s.get("seed", 0))
    result["method_source"] = read_record(d).method.source
    if result["mode"] == "image-paired":
        result["quality"] = quality_cost(d, b, extractor)
    atomic_write_json(d / COMPARE_JSON, result)
    atomic_write_text(d / TABLES / "compare.csv", summary_frame(result).to_csv(index=False))
    if result["mode"] == "image-paired":
        plot_paired_changes(result, d / FIGURES / "compare.png")
    return result


def _fmt(v: float) -> str:
    return "n/a" if v != v else f"{v:.3f}"


def _interval_text(c: dict[str, Any], signed: bool = False) -> str:
    f = "+.3f" if signed else ".3f"
    if c["value"] != c["value"]:
        return "n/a"
    return f"{c['value']:{f}} [{c['ci_low']:{f}}, {c['ci_high']:{f}}]"


def corrected_line(attr: str, m: str, c: dict[str, Any]) -> str:
    """One metric's corrected before -> after, the change with its interval, and both floors."""
    return (f"  {attr:10s} {m:9s} corrected {_interval_text(c['before'])} -> {_interval_text(c['after'])}  "
            f"change {_interval_text(c['change'], signed=True)}  (plug-in floors {_fmt(c['floor_before'])}, "
            f"{_fmt(c['floor_after'])})")


def skew_line(attr: str, res: dict[str, Any]) -> str:
    """Skewed prompts on each side."""
    b, a = res["skewed_prompts"]["before"], res["skewed_prompts"]["after"]
    return (f"  {attr:10s} skewed    {b['n_skewed']} of {b['n_tested']} prompts -> {a['n_skewed']} of {a['n_tested']} "
            f"significantly skewed (exact test, Benjamini-Hochberg q = {a['q']})")


def verdict_lines(result: dict[str, Any], metrics: tuple[str, ...] = VERDICT_METRICS) -> list[str]:
    """The verdict as plain lines (the terminal table is built from the same numbers)."""
    level = result["settings"]["level"]
    if result.get("mode") == "prompt-paired":
        lines = [f"{result['method']} vs {result['baseline_method']}, prompt by prompt over {result['n_prompts']} "
                 f"prompts ({result['n_units']} and {result['n_units_baseline']} images); corrected estimates, "
                 f"{level:.0%} bias-aware intervals"]
        for attr, res in result["attributes"].items():
            lines += [corrected_line(attr, m, res["corrected"][m]) for m in metrics if m in res["corrected"]]
            lines.append(skew_line(attr, res))
        return lines + [f"  note: {n}" for n in result.get("notes", [])]
    lines = [f"{result['method']} vs {result['baseline_method']}, paired over {result['n_units']} images "
             f"({result['n_prompts']} prompts); change = {result['method']} - {result['baseline_method']}, "
             f"{level:.0%} paired bootstrap interval (plug-in), bias-aware interval (corrected)"]
    for attr, res in result["attributes"].items():
        for m in metrics:
            c = res["metrics"][m]
            ch = c["change"]
            lines.append(f"  {attr:10s} {m:9s} plug-in   {_fmt(c['before'])} -> {_fmt(c['after'])}  "
                         f"change {ch['value']:+.3f} [{ch['ci_low']:+.3f}, {ch['ci_high']:+.3f}]")
            if m in res.get("corrected", {}):
                lines.append(corrected_line(attr, m, res["corrected"][m]))
        lines.append(skew_line(attr, res))
        f = res["flips"]
        lines.append(f"  {attr:10s} flips     {f['n_flipped']} of {f['n_labelled_both']} faces changed label: "
                     f"{f['toward_majority']} toward the baseline's per-prompt majority, {f['away_from_majority']} away "
                     f"(sign test p = {f['majority_p_value']:.3g})")
    blocks = [(label, result[name]) for name, label in (("faces", "face rate"), ("family_accuracy", "family acc."))
              if name in result]
    blocks += [(f"adherence {attr}", c) for attr, c in result.get("adherence", {}).items()]
    for label, c in blocks:
        lines.append(f"  {label:20s} {_fmt(c['before'])} -> {_fmt(c['after'])}  change {c['change']['value']:+.3f} "
                     f"[{c['change']['ci_low']:+.3f}, {c['change']['ci_high']:+.3f}]; {c['lost']} lost, "
                     f"{c['gained']} gained (p = {c['p_value']:.3g})")
    for name, q in result.get("quality", {}).items():
        if name in ("skipped", "extractor"):
            continue
        lines.append(f"  quality cost: {name} {max(q['fd'], 0.0):.3f}, {kid_text(q, 4)} "
                     f"({result['method']}'s {q['n_generated']} images against {result['baseline_method']}'s "
                     f"{q['n_reference']})")
    if "skipped" in result.get("quality", {}):
        lines.append(f"  quality cost: not computed ({result['quality']['skipped']})")
    if result.get("method_source"):
        lines.append(f"  note: {result['method']} is {result['method_source']}")
    lines += [f"  note: {n}" for n in result.get("notes", [])]
    return lines


def print_verdict(result: dict[str, Any], baseline_dir: Path | None = None) -> None:
    """The paired verdict on the terminal: before, after, change with its paired interval; flips; quality cost."""
    from rich.table import Table

    console = terminal_console()
    head, *rest = verdict_lines(result)
    paired = result.get("mode") != "prompt-paired"
    console.print(f"{'paired verdict' if paired else 'verdict'}: {head}", highlight=False)
    table = Table()
    for col in ("attribute", "metric", "estimate", f"{result['baseline_method']} (floor)",
                f"{result['method']} (floor)", "change [CI]", *(("faces flipped",) if paired else ())):
        table.add_column(col)
    for attr, res in result["attributes"].items():
        flipped = (f"{res['flips']['n_flipped']} / {res['flips']['n_labelled_both']}",) if paired else ()
        for m in VERDICT_METRICS:
            if paired:
                c = res["metrics"][m]
                ch = c["change"]
                table.add_row(attr, m, "plug-in", _fmt(c["before"]), _fmt(c["after"]),
                              f"{ch['value']:+.3f} [{ch['ci_low']:+.3f}, {ch['ci_high']:+.3f}]", *flipped)
            if m in res["corrected"]:
                c = res["corrected"][m]
                table.add_row(attr, m, "corrected", f"{_interval_text(c['before'])} ({_fmt(c['floor_before'])})",
                              f"{_interval_text(c['after'])} ({_fmt(c['floor_after'])})",
                              _interval_text(c["change"], signed=True), *flipped)
    console.print(table)
    for line in rest:
        if " flips " in line or " skewed " in line or line.lstrip().startswith(
                ("face rate", "family acc.", "adherence", "quality", "note")):
            console.print(line.strip(), highlight=False)
    where = f" (baseline: {baseline_dir})" if baseline_dir else ""
    console.print(f"written: {Path(result['run']) / COMPARE_JSON}{where}", highlight=False)
