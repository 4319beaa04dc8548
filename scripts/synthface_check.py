"""Print how closely a synthface vanilla run reproduces SD 1.5's measured gender skew.

Usage: python scripts/synthface_check.py RUN_DIR [EXPLICIT_RUN_DIR]
       python scripts/synthface_check.py --adherence-only RUN_DIR
RUN_DIR: `fairbench run --method vanilla --split all --n 40` (all 153 occupations);
EXPLICIT_RUN_DIR: `fairbench run --method vanilla --suite explicit --n 10`.
--adherence-only: print the adherence of a run whose prompts request groups (e.g. the emotions suite).
"""

import argparse
import json
from pathlib import Path

import numpy as np
from scipy.stats import pearsonr

from fairbench.prompts import load_suite


def main(run_dir: str, explicit_dir: str | None = None) -> None:
    """Print the comparison."""
    metrics = json.loads((Path(run_dir) / "metrics.json").read_text())
    suite = load_suite("occupations")
    ref = {p.id: p.reference["sd15_female"] / (p.reference["sd15_female"] + p.reference["sd15_male"])
           for p in suite.prompts}
    gender = metrics["attributes"]["gender"]
    rows = [(p["shares"]["female"], ref[p["prompt_id"]]) for p in gender["per_prompt"] if p["n_faces"] > 0]
    ours, sd = np.array(rows).T
    r, pval = pearsonr(ours, sd)
    gap = gender["aggregate"]["bias_gap"]
    sd_gap = float(np.mean(np.abs(2 * sd - 1)))
    print(f"prompts with faces: {len(rows)} / {gender['n_prompts']}, images {gender['n_images']}, "
          f"faces {gender['n_faces']} (face rate {1 - gender['no_face_rate']:.3f})")
    print(f"Pearson r (female share vs SD 1.5): {r:.3f} (p = {pval:.1e})")
    print(f"mean |f_m - f_f|: {gap['value']:.3f} [{gap['ci_low']:.3f}, {gap['ci_high']:.3f}]  (SD 1.5: {sd_gap:.3f})")
    print(f"mean female share: {ours.mean():.3f} (SD 1.5: {sd.mean():.3f})")
    fam = metrics.get("alignment", {}).get("family_accuracy")
    if fam:
        print(f"occupation-family accuracy: {fam['value']:.3f} [{fam['ci_low']:.3f}, {fam['ci_high']:.3f}] (n = {fam['n']})")
    skin = metrics["attributes"].get("skin_tone")
    if skin:
        print("overall skin-tone shares: " + ", ".join(f"{k} {v:.3f}" for k, v in skin["overall_shares"].items()))
    if explicit_dir:
        print_adherence(explicit_dir)


def print_adherence(run_dir: str) -> None:
    """Adherence per requested attribute of a run, and its face rate."""
    em = json.loads((Path(run_dir) / "metrics.json").read_text())
    for attr, a in em.get("adherence", {}).items():
        groups = ", ".join(f"{g} {v:.3f}" for g, v in a["per_group"].items())
        print(f"explicit {attr}: {a['value']:.3f} [{a['ci_low']:.3f}, {a['ci_high']:.3f}] over {a['n']} faces "
              f"of {a['n_prompts']} prompts ({groups})")
    print(f"face rate: {1 - em['no_face_rate']:.3f}")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run_dir", help="a finished vanilla run (metrics.json)")
    ap.add_argument("explicit_dir", nargs="?", help="a finished run of the explicit suite")
    ap.add_argument("--adherence-only", action="store_true", help="print only RUN_DIR's adherence")
    args = ap.parse_args()
    if args.adherence_only and args.explicit_dir:
        ap.error("--adherence-only reads one run directory")
    for d in filter(None, (args.run_dir, args.explicit_dir)):
        if not (Path(d) / "metrics.json").is_file():
            ap.error(f"{d}: no metrics.json (not a finished run)")
    if args.adherence_only:
        print_adherence(args.run_dir)
    else:
        main(args.run_dir, args.explicit_dir)
