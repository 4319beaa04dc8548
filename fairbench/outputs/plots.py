"""Figures of a run for report.md: per-prompt shares, method-vs-baseline, image grids."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from fairbench.io import atomic_write_bytes, png_bytes
from fairbench.metrics.evaluate import proportion

COLORS = ("#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860", "#da8bc3", "#8c8c8c", "#ccb974", "#64b5cd")


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: Path) -> None:
    """Write a matplotlib figure as PNG atomically (a reader never sees half a figure), then close it."""
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    _plt().close(fig)
    atomic_write_bytes(path, buf.getvalue())


def plot_shares(attr: str, res: dict[str, Any], path: Path, max_prompts: int = 60) -> Path | None:
    """Per-prompt group shares as bars (K = 2: the second group's share with a 95 % Wilson interval),
    sorted by skew; at most `max_prompts` prompts, the most skewed ones."""
    rows = [p for p in res["per_prompt"] if p["n_faces"] > 0]
    if not rows:
        return None
    groups = res["groups"]
    rows.sort(key=lambda p: -p["metrics"]["fd"]["value"])
    rows = rows[:max_prompts]
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 1.2 + 0.22 * len(rows)))
    y = np.arange(len(rows))
    labels = [p["prompt_id"].replace("_", " ") for p in rows]
    if len(groups) == 2:
        g = groups[1]
        rows.sort(key=lambda p: p["shares"][g])
        labels = [p["prompt_id"].replace("_", " ") for p in rows]
        share = np.array([p["shares"][g] for p in rows])
        ci = [proportion(p["counts"][g], p["n_faces"]) for p in rows]
        err = np.array([[s - c["ci_low"] for s, c in zip(share, ci)], [c["ci_high"] - s for s, c in zip(share, ci)]])
        ax.barh(y, share, xerr=err, color=COLORS[1], ecolor="#333333", capsize=2, label=f"share {g}")
        ax.axvline(0.5, color="black", linestyle="--", linewidth=1, label="parity (0.5)")
        ax.set_xlabel(f"share of faces classified {g} (95 % Wilson interval)")
    else:
        left = np.zeros(len(rows))
        for k, g in enumerate(groups):
            vals = np.array([p["shares"][g] for p in rows])
            ax.barh(y, vals, left=left, color=COLORS[k % len(COLORS)], label=g)
            left += vals
        ax.axvline(1 / len(groups), color="black", linestyle=":", linewidth=1)
        ax.set_xlabel("share of faces per group (sorted by fairness discrepancy)")
    ax.set_yticks(y, labels, fontsize=7)
    ax.set_xlim(0, 1)
    ax.set_title(f"{attr}: per-prompt shares ({len(rows)} prompts, n = faces per prompt)")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7, frameon=False)
    fig.tight_layout()
    save_figure(fig, path)
    return path


def plot_comparison(run: dict[str, Any], base: dict[str, Any], run_name: str, base_name: str, path: Path,
                    metrics: tuple[str, ...] = ("fd", "kl", "bias_gap")) -> Path | None:
    """Aggregate metrics of a method and its baseline side by side, with bootstrap intervals."""
    attrs = [a for a in run["attributes"] if a in base["attributes"] and "*" not in a]
    if not attrs:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, len(metrics), figsize=(4 * len(metrics), 3.2), squeeze=False)
    x = np.arange(len(attrs))
    for ax, m in zip(axes[0], metrics):
        for j, (name, res) in enumerate(((base_name, base), (run_name, run))):
            est = [res["attributes"][a]["aggregate"][m] for a in attrs]
            vals = np.array([e["value"] for e in est])
            err = np.array([[e["value"] - e["ci_low"] for e in est], [e["ci_high"] - e["value"] for e in est]])
            ax.bar(x + (j - 0.5) * 0.38, vals, 0.38, yerr=err, capsize=3, color=COLORS[j], label=name)
        ax.set_xticks(x, attrs)
        ax.set_ylabel(f"{m} (lower is fairer)")
        ax.set_title(m)
    axes[0][0].legend(fontsize=8)
    fig.suptitle("method vs baseline: mean over prompts, 95 % bootstrap intervals")
    fig.tight_layout()
    save_figure(fig, path)
    return path


def image_grid(run_dir: Path, rows: list[dict[str, Any]], prompt_ids: list[str], path: Path, per_row: int = 8,
               cell: int = 96) -> Path | None:
    """One row of images per prompt (the first `per_row` samples), prompt id written on the left."""
    by_prompt: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by_prompt.setdefault(r["prompt_id"], []).append(r)
    prompt_ids = [p for p in prompt_ids if p in by_prompt]
    if not prompt_ids:
        return None
    label_w = 170
    grid = Image.new("RGB", (label_w + per_row * (cell + 2), len(prompt_ids) * (cell + 2)), "white")
    draw = ImageDraw.Draw(grid)
    for i, pid in enumerate(prompt_ids):
        y = i * (cell + 2)
        draw.text((4, y + cell // 2 - 6), pid.replace("_", " ")[:26], fill="black")
        for j, r in enumerate(by_prompt[pid][:per_row]):
            im = Image.open(run_dir / r["image"]).convert("RGB")
            grid.paste(im.resize((cell, cell), Image.NEAREST if im.width < cell else Image.BICUBIC),
                       (label_w + j * (cell + 2), y))
    atomic_write_bytes(path, png_bytes(grid))
    return path


def plot_paired_changes(result: dict[str, Any], path: Path, metrics: tuple[str, ...] = ("bias_gap", "kl")) -> Path | None:
    """compare.json as a figure: each metric's paired change with its interval, and per-prompt before/after."""
    attrs = list(result["attributes"])
    if not attrs:
        return None
    plt = _plt()
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(10, 1.6 + 0.45 * len(attrs) * len(metrics)),
                                  gridspec_kw={"width_ratios": [3, 2]})
    rows = [(a, m, result["attributes"][a]["metrics"][m]["change"]) for a in attrs for m in metrics]
    y = np.arange(len(rows))[::-1]
    vals = np.array([c["value"] for _, _, c in rows])
    err = np.array([[c["value"] - c["ci_low"] for _, _, c in rows], [c["ci_high"] - c["value"] for _, _, c in rows]])
    ax.errorbar(vals, y, xerr=np.nan_to_num(err), fmt="o", color=COLORS[0], ecolor="#333333", capsize=3)
    ax.axvline(0, color="black", linewidth=1)
    ax.set_yticks(y, [f"{a} {m}" for a, m, _ in rows], fontsize=8)
    level = result["settings"]["level"]
    ax.set_xlabel(f"change, {result['method']} - {result['baseline_method']} ({level:.0%} paired bootstrap; < 0 is fairer)")
    attr, m = attrs[0], metrics[0]
    pp = result["attributes"][attr]["per_prompt"]
    before = np.array([p[m]["before"] for p in pp])
    after = np.array([p[m]["after"] for p in pp])
    ax2.scatter(before, after, s=14, color=COLORS[1])
    hi = float(np.nanmax(np.concatenate([before, after, [1e-6]])))
    ax2.plot([0, hi], [0, hi], color="black", linewidth=1, linestyle="--")
    ax2.set_xlabel(f"{attr} {m}, {result['baseline_method']}")
    ax2.set_ylabel(f"{attr} {m}, {result['method']}")
    ax2.set_title("per prompt (below the line: fairer)", fontsize=9)
    fig.suptitle(f"{result['method']} vs {result['baseline_method']}: {result['n_units']} paired images")
    fig.tight_layout()
    save_figure(fig, path)
    return path
