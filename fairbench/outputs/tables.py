"""Tables of a run: tables/*.csv, and the terminal summary."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from fairbench.io import atomic_write_text
from fairbench.outputs.rundir import TABLES
from fairbench.metrics.evaluate import per_prompt_table, summary_table

HEADLINE = ("bias_gap", "kl")
LOG_WIDTH = 160


def terminal_console() -> Console:
    """A rich console; logs and CI (no terminal) get a wide one, since rich would wrap them at 80 columns."""
    console = Console()
    if not console.is_terminal:
        console.width = max(console.width, LOG_WIDTH)
    return console


def write_tables(run_dir: Path, metrics: dict[str, Any]) -> list[Path]:
    """summary.csv plus one per-prompt CSV per attribute (file names are attribute names)."""
    out = run_dir / TABLES
    paths = [out / "summary.csv"]
    atomic_write_text(paths[0], summary_table(metrics).to_csv(index=False))
    for attr, res in metrics["attributes"].items():
        path = out / f"per_prompt_{attr.replace('*', '_x_')}.csv"
        atomic_write_text(path, per_prompt_table(res).to_csv(index=False))
        paths.append(path)
    return paths


def _fmt(est: dict[str, Any]) -> str:
    if est["value"] != est["value"]:  # NaN
        return "n/a"
    return f"{est['value']:.3f} [{est['ci_low']:.3f}, {est['ci_high']:.3f}]"


def kid_text(q: dict[str, Any], digits: int = 5) -> str:
    """'KID m +- s', or 'KID m, no spread: ...' where the subsets cannot vary."""
    if q.get("kid_std") is None:
        return f"KID {q['kid']:.{digits}f}, no spread: one subset holds all images"
    return f"KID {q['kid']:.{digits}f} +- {q['kid_std']:.{digits}f}"


def _num(v: float) -> str:
    return "n/a" if v != v else f"{v:.3f}"


def corrected_text(est: dict[str, Any]) -> str:
    """'corrected [bias-aware interval]' of one metric estimate, 'n/a' where it has none."""
    return _fmt(est["corrected"])


def skew_text(res: dict[str, Any]) -> str:
    """'k of P' prompts significantly skewed (BH)."""
    return f"{res['skew_test']['n_skewed']} of {res['skew_test']['n_tested']}"


def print_summary(metrics: dict[str, Any], title: str, console: Console | None = None) -> None:
    """Headline metrics per attribute: plug-in with its floor, corrected estimate, skewed prompts, sizes."""
    console = console or terminal_console()
    table = Table(title=title, title_justify="left")
    table.add_column("attribute")
    for m in HEADLINE:
        table.add_column(f"{m} plug-in", justify="right")
        table.add_column("floor", justify="right")
        table.add_column(f"{m} corrected", no_wrap=True)
    q = metrics["settings"].get("skew_q", 0.05)
    for col in (f"skewed (q={q})", "prompts", "faces / images"):
        table.add_column(col, justify="right")
    for attr, res in metrics["attributes"].items():
        cells = [cell for m in HEADLINE if m in res["aggregate"] for cell in (
            _num(res["aggregate"][m]["value"]), _num(res["aggregate"][m]["floor"]), corrected_text(res["aggregate"][m]))]
        table.add_row(attr, *cells, skew_text(res), str(res["n_prompts_with_faces"]),
                      f"{res['n_faces']} / {res['n_images']}")
    console.print(table)
    console.print("values: mean over prompts. plug-in: the anchors' estimate (its bootstrap interval is in "
                  "tables/summary.csv); floor: what a perfectly fair generator's plug-in reads at these face counts; "
                  f"corrected: bias-corrected \\[{metrics['settings']['level']:.0%} bias-aware interval]; skewed: "
                  "prompts whose exact test rejects the target at Benjamini-Hochberg q (docs/metrics.md)",
                  highlight=False)
