"""Fair Mapping ablation on synthface (held-out test occupations): writes docs/fairmap_ablation.md.

Variants: full loss, text loss only, fairness loss only, three lambdas, one vs several layers,
the distance, mapped vs fixed group embeddings;
each against vanilla on the same prompts and seeds. Fair Mapping here is fairbench's
documented reconstruction (docs/fairmap.md).

Usage: python -m lab.studies.fairmap_ablation [--n 40] [--limit N] [--out runs/ablation]
       [--vanilla RUN --full RUN]   (reuse finished runs with the same prompts, n and seed,
                                     e.g. runs/leaderboard/vanilla-test and fairmap-test)
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from fairbench.config import build_config
from fairbench.runner import run

VARIANTS = {
    "full (lambda 100, 1 layer, group embeddings fixed)": {},
    "text loss only": {"use_fair_loss": False},
    "fairness loss only": {"use_text_loss": False},
    "lambda 1": {"lambda_fair": 1.0},
    "lambda 10": {"lambda_fair": 10.0},
    "lambda 1000": {"lambda_fair": 1000.0},
    "3 layers (residual MLP)": {"depth": 3},
    "distance between token-averaged states": {"distance": "pooled"},
    "group embeddings mapped too": {"map_groups": True},
    "group embeddings mapped too, lambda 1 (first default)": {"map_groups": True, "lambda_fair": 1.0},
}
ATTRS = "gender,skin_tone"


def _row(name: str, metrics: dict) -> str:
    g = metrics["attributes"]["gender"]["aggregate"]["bias_gap"]
    s = metrics["attributes"]["skin_tone"]["aggregate"]["kl"]
    fam = metrics["alignment"]["family_accuracy"]
    fd = next(iter(metrics.get("quality", {}).values()), {}).get("fd")
    return (f"| {name} | {g['value']:.3f} [{g['ci_low']:.3f}, {g['ci_high']:.3f}] | {s['value']:.3f} "
            f"[{s['ci_low']:.3f}, {s['ci_high']:.3f}] | {fam['value']:.3f} | {metrics['no_face_rate']:.3f} | {'-' if fd is None else f'{max(fd, 0.0):.3f}'} |")


def main() -> None:
    """Run every variant and write the table."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=40)
    ap.add_argument("--limit", type=int, help="only the first N test occupations")
    ap.add_argument("--out", default="runs/ablation")
    ap.add_argument("--dtype", choices=["float32", "bfloat16"], help="default: synthface's on this CPU")
    ap.add_argument("--vanilla", help="finished vanilla run to reuse (same prompts, n, seed)")
    ap.add_argument("--full", help="finished fairmap run (attributes gender,skin_tone, defaults) to reuse")
    args = ap.parse_args()
    out = Path(args.out)
    common = {"split": "test", "n": args.n, "limit": args.limit, "dtype": args.dtype, "progress": False}
    vanilla_dir = Path(args.vanilla) if args.vanilla else out / "vanilla"
    vanilla = run(build_config(method="vanilla", out=str(vanilla_dir), **common))
    rows = [_row("vanilla", vanilla.metrics)]
    for name, extra in VARIANTS.items():
        slug = name.split(" (")[0].replace(",", "").replace(" ", "-")
        run_dir = Path(args.full) if args.full and not extra else out / slug
        cfg = build_config(method="fairmap", method_args={"attributes": ATTRS, **extra}, out=str(run_dir),
                           reference=str(vanilla.run_dir), **common)
        result = run(cfg)
        rows.append(_row(name, result.metrics))
    n_prompts = vanilla.metrics["attributes"]["gender"]["n_prompts"]
    dtype = json.loads((Path(vanilla.run_dir) / "run.json").read_text())["model"]["dtype"]
    text = "\n".join([
        "# Fair Mapping ablation on synthface",
        "",
        "Fair Mapping here is fairbench's documented reconstruction (docs/fairmap.md), not the authors' code.",
        f"Held-out test occupations ({n_prompts} prompts), {args.n} images each, seed 0, attributes {ATTRS}, {dtype};",
        "intervals: 95 % bootstrap over prompts and images. FD: Frechet distance to vanilla's images for the",
        "same prompts and seeds (synthface classifier features). Regenerate with",
        f"`python -m lab.studies.fairmap_ablation --n {args.n}" + (f" --limit {args.limit}" if args.limit else "")
        + (f" --dtype {args.dtype}" if args.dtype else "") + "`.",
        "",
        "| variant | gender mean abs(f_m - f_f) | skin tone KL to uniform | family accuracy | no-face rate | FD to vanilla |",
        "|---|---|---|---|---|---|",
        *rows,
        "",
    ])
    Path("docs/fairmap_ablation.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
