"""`fairbench report RUN_DIR`: a human-readable report.md of a finished run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fairbench.io import atomic_write_text
from fairbench.metrics.evaluate import per_prompt_table, summary_table
from fairbench.outputs.rundir import read_run

REPORT = "report.md"


def _run_header(run: dict[str, Any], metrics: dict[str, Any]) -> list[str]:
    spec = run["spec"]
    method = run.get("method", {})
    lines = [
        f"# fairbench report: {spec['method']} on {spec['model']}",
        "",
        f"- method: `{spec['method']}` (level: {method.get('level')}; {method.get('source') or 'n/a'})",
        f"- model: `{run['model']['source']}` ({run['model']['pipeline']}, {run['model']['scheduler']}, "
        f"{run['model']['dtype']}), {spec['steps']} steps, guidance {spec['guidance_scale']}",
        f"- suite: `{run['suite']['name']}` v{run['suite']['version']}, split {spec['split']}"
        + (f", first {spec['limit']} prompts" if spec.get("limit") else "") + f", {spec['n']} images per prompt, seed {spec['seed']}",
        f"- classifier: `{metrics.get('classifier')}`; face detector: `{spec['detector']}`",
        f"- images: {metrics['n_images']}, faces: {metrics['n_faces']}, no-face rate: {metrics['no_face_rate']:.1%}, "
        f"NSFW-flagged: {metrics['nsfw_flagged']}",
        f"- fairbench {run['fairbench_version']} (git {run.get('git_sha') or 'n/a'}), "
        f"torch {run['versions'].get('torch')}, diffusers {run['versions'].get('diffusers')}",
        "",
    ]
    if spec["method"] == "fairmap":
        lines += ["> Fair Mapping's unpublished details (layers, loss form, lambda, word lists) are a documented "
                  "reconstruction in fairbench, not the authors' code.", ""]
    return lines


def render_report(run_dir: Path) -> str:
    """Markdown text of the report."""
    run, metrics = read_run(run_dir)
    lines = _run_header(run, metrics)
    s = metrics["settings"]
    lines += ["## Aggregate fairness (mean over prompts)", "",
              f"Intervals: {s['level']:.0%} bootstrap over prompts and images ({s['n_boot']} replicates). "
              "Lower is fairer for every metric but dp_ratio.", ""]
    summary = summary_table(metrics)
    lines += [summary.to_markdown(index=False, floatfmt=".3f"), ""]
    for attr, res in metrics["attributes"].items():
        table = per_prompt_table(res)
        if table.empty:
            continue
        shown = table.sort_values("fd", ascending=False)
        cols = ["prompt_id", "n_images", "n_faces"] + [c for c in table.columns if c.startswith("share:")] + ["fd", "fd_ci_low", "fd_ci_high"]
        lines += [f"## {attr}: per prompt, most skewed first", "", shown[cols].to_markdown(index=False, floatfmt=".3f"), ""]
    return "\n".join(lines)


def write_report(run_dir: str | Path) -> Path:
    """Write report.md into the run directory and return its path."""
    d = Path(run_dir)
    text = render_report(d)
    atomic_write_text(d / REPORT, text)
    return d / REPORT
