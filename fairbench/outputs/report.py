"""`fairbench report RUN_DIR [--baseline RUN_DIR]`: report.md with tables and PNG figures."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fairbench.errors import UserError
from fairbench.generation.manifest import finished_rows
from fairbench.io import atomic_write_text, check_writable_target
from fairbench.metrics.evaluate import per_prompt_table, summary_table
from fairbench.outputs.plots import image_grid, plot_comparison, plot_shares
from fairbench.outputs.rundir import FIGURES, REPORT, RunRecord, read_run
from fairbench.outputs.tables import kid_text

RECONSTRUCTION_NOTE = ("> Fair Mapping's unpublished details (layers, loss form, lambda, word lists) are a documented "
                       "reconstruction in fairbench, not the authors' code.")


def _run_header(run: RunRecord, metrics: dict[str, Any]) -> list[str]:
    spec, method, model = run.spec, run.method, run.model
    if run.source == "external":  # scored images: no sampling settings or seeds of ours
        made = [f"- images: made elsewhere by `{spec['model']}` / `{spec['method']}`, imported from "
                f"`{(run.images_from or {}).get('prompts_file')}` (`fairbench score`)",
                f"- suite: `{run.suite.name}`, the {spec['n']} or fewer images per prompt the file lists"]
    else:
        made = [f"- method: `{spec['method']}` (level: {method.level}; {method.source or 'n/a'})",
                f"- model: `{model.source}` ({model.pipeline}, {model.scheduler}, "
                f"{model.dtype}), {spec['steps']} steps, guidance {spec['guidance_scale']}",
                f"- suite: `{run.suite.name}` v{run.suite.version}, split {spec['split']}"
                + (f", first {spec['limit']} prompts" if spec.get("limit") else "")
                + f", {spec['n']} images per prompt, seed {spec['seed']}"]
    lines = [
        f"# fairbench report: {spec['method']} on {spec['model']}",
        "",
        *made,
        f"- classifier: `{metrics.get('classifier')}`; face detector: `{spec['detector']}`",
        f"- images: {metrics['n_images']}, faces: {metrics['n_faces']}, no-face rate: {metrics['no_face_rate']:.1%}, "
        f"NSFW-flagged: {metrics['nsfw_flagged']}",
        f"- fairbench {run.fairbench_version} (git {run.git_sha or 'n/a'}), "
        f"torch {run.versions.get('torch')}, diffusers {run.versions.get('diffusers')}",
        "",
    ]
    if spec["method"] == "fairmap":
        lines += [RECONSTRUCTION_NOTE, ""]
    return lines


def _quality_lines(metrics: dict[str, Any]) -> list[str]:
    lines = []
    for name, q in metrics.get("quality", {}).items():
        lines.append(f"- {name}: {q['fd']:.4f}, {kid_text(q)} "
                     f"({q['n_generated']} vs {q['n_reference']} images; reference `{q['reference']}`; "
                     f"features {q['extractor']}, {q['resize']} to {q['input_size']} px)")
    for name, a in metrics.get("alignment", {}).items():
        value = a.get("value", a.get("clip_score"))
        lines.append(f"- {name}: {value:.3f} [{a['ci_low']:.3f}, {a['ci_high']:.3f}] (n = {a['n']})")
    for attr, a in metrics.get("adherence", {}).items():
        lines.append(f"- explicit-prompt adherence ({attr}): {a['value']:.3f} [{a['ci_low']:.3f}, {a['ci_high']:.3f}] "
                     f"over {a['n']} faces")
    return (["## Quality and alignment", ""] + lines + [""]) if lines else []


def _skew_lines(metrics: dict[str, Any]) -> list[str]:
    """Which prompts are significantly skewed, per attribute."""
    lines = []
    for attr, res in metrics["attributes"].items():
        t = res["skew_test"]
        if "*" in attr:
            continue
        named = ", ".join(f"`{p}`" for p in t["skewed"][:12]) + (" ..." if len(t["skewed"]) > 12 else "")
        lines.append(f"- {attr}: {t['n_skewed']} of {t['n_tested']} prompts significantly skewed"
                     + (f": {named}" if named else ""))
    return (["## Skewed prompts", "", f"{metrics['attributes'][next(iter(metrics['attributes']))]['skew_test']['test']}"
             f", q = {metrics['settings'].get('skew_q', 0.05)}.", "", *lines, ""]) if lines else []


def _compare_lines(run_dir: Path) -> list[str]:
    """The paired comparison (compare.json), when the run has one."""
    from fairbench.outputs.compare import COMPARE_JSON, summary_frame, verdict_lines
    from fairbench.outputs.rundir import read_json

    if not (run_dir / COMPARE_JSON).exists():
        return []
    result = read_json(run_dir / COMPARE_JSON)
    try:  # compare.json is read back from disk: a file that lacks what `compare` writes is the user's to redo
        head, *rest = verdict_lines(result)
        title = "Paired comparison" if result.get("mode") != "prompt-paired" else "Comparison"
        lines = [f"## {title} with `{result['baseline']}`", "", head + ".", ""]
        lines += ["", summary_frame(result).to_markdown(index=False, floatfmt=".3f"), ""]
    except (KeyError, TypeError, AttributeError, IndexError, ValueError) as exc:
        raise UserError(f"{run_dir / COMPARE_JSON} is not a complete comparison ({type(exc).__name__}: {exc}): "
                        f"run `fairbench compare` again") from None
    lines[4:4] = [f"- {line.strip()}" for line in rest if " flips " in line or " corrected " in line
                  or " skewed " in line
                  or line.lstrip().startswith(("face rate", "family acc.", "adherence", "quality", "note"))]
    if (run_dir / FIGURES / "compare.png").is_file():
        lines += ["![paired comparison](figures/compare.png)", ""]
    return lines


def render_report(run_dir: Path, baseline: Path | None = None) -> str:
    """Write the figures and return the markdown of the report."""
    run, metrics = read_run(run_dir)
    rows = finished_rows(run_dir, run.n_units)  # the grids show only images the metrics were computed on
    compared = _compare_lines(run_dir)  # read (and refused) before any figure is written
    fig_dir = run_dir / FIGURES  # made by the first figure written, not before
    lines = _run_header(run, metrics)
    s = metrics["settings"]
    lines += ["## Aggregate fairness (mean over prompts)", "",
              f"`value` is the plug-in estimate the anchors report, with its {s['level']:.0%} bootstrap interval "
              f"over prompts and images ({s['n_boot']} replicates); `floor` is what a perfectly fair generator "
              "reads at these face counts; `corrected` is the bias-corrected estimate with its bias-aware "
              f"interval (docs/metrics.md); `n_skewed` counts prompts whose exact test rejects the target "
              f"(Benjamini-Hochberg, q = {s.get('skew_q', 0.05)}). Lower is fairer for every metric but dp_ratio.",
              "", summary_table(metrics).to_markdown(index=False, floatfmt=".3f"), ""]
    lines += _skew_lines(metrics)
    lines += _quality_lines(metrics)
    if baseline is not None:
        base_run, base_metrics = read_run(baseline)
        path = plot_comparison(metrics, base_metrics, f"{run.spec['method']} ({run_dir.name})",
                               f"{base_run.spec['method']} ({Path(baseline).name})", fig_dir / "comparison.png")
        if path:
            lines += [f"## {run.spec['method']} vs {base_run.spec['method']} (`{baseline}`)", "",
                      f"![comparison](figures/{path.name})", ""]
    lines += compared
    for attr, res in metrics["attributes"].items():
        table = per_prompt_table(res)
        if table.empty or "*" in attr:
            continue
        safe = attr.replace("*", "_x_")
        lines += [f"## {attr}", ""]
        fig = plot_shares(attr, res, fig_dir / f"shares_{safe}.png")
        if fig:
            lines += [f"![{attr} shares](figures/{fig.name})", ""]
        shown = table.sort_values(["skew_q", "fd"], ascending=[True, False])  # most significant first
        skewed = shown["prompt_id"].head(6).tolist()
        grid = image_grid(run_dir, rows, skewed, fig_dir / f"grid_{safe}.png")
        if grid:
            lines += [f"Most skewed prompts ({attr}), first images of each:", "", f"![grid](figures/{grid.name})", ""]
        cols = ["prompt_id", "n_images", "n_faces"] + [c for c in table.columns if c.startswith("share:")] + [
            "bias_gap", "bias_gap_floor", "bias_gap_corrected", "skew_p", "skew_q"]
        lines += [shown[cols].head(20).to_markdown(index=False, floatfmt=".3f"), ""]
    return "\n".join(lines)


def write_report(run_dir: str | Path, baseline: str | Path | None = None) -> Path:
    """Write report.md (and figures/) into the run directory and return its path."""
    d = Path(run_dir)
    if d.is_dir():
        check_writable_target(d)  # before any figure is drawn
    text = render_report(d, Path(baseline) if baseline else None)
    atomic_write_text(d / REPORT, text)
    return d / REPORT
