"""The harness's CLIP paths on trained weights: synthclip against the synthface classifier, on one run's images.

On a labelled run of occupation prompts (e.g. `fairbench run --method vanilla --model synthface-vl
--split all --n 16`):
- the `clip` classifier with synthclip (its recorded class texts) gives each image's gender; per
  occupation, its female share is compared with the synthface classifier's (labels.parquet), over
  the images where the synthface detector found a face: mean absolute difference;
- the CLIP score (fairbench.metrics.clipscore, synthclip) of each image with its own prompt and
  with the prompt of an occupation from another family (the next occupation in suite order whose
  family differs): the share of images whose own prompt scores higher.

Usage: python scripts/clip_paths.py RUN_DIR --out FILE.json [--model synthclip] [--max-samples 16]
         [--templates prompts/clip_templates/synthclip.yaml]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from fairbench.classifiers import build_classifier
from fairbench.outputs.rundir import LABELS
from fairbench.metrics.clipscore import CLIPScorer
from fairbench.prompts import attribute, load_suite
from fairbench.synthface.families import family_of


def other_family_prompt(suite) -> dict[str, str]:
    """Prompt id -> text of the next occupation (in suite order, wrapping) whose family differs."""
    prompts, fam = suite.prompts, family_of()
    out = {}
    for i, p in enumerate(prompts):
        for step in range(1, len(prompts)):
            q = prompts[(i + step) % len(prompts)]
            if fam[q.vars["occupation"]] != fam[p.vars["occupation"]]:
                out[p.id] = suite.text(q)
                break
    return out


def measure(run_dir: Path, model: str, templates: str | None, max_samples: int | None = None) -> dict:
    """Both comparisons on the run's images (the first `max_samples` of each prompt)."""
    labels = pd.read_parquet(run_dir / LABELS)
    keep = labels["face"] & (labels["sample_idx"] < (max_samples if max_samples is not None else np.inf))
    labels = labels[keep].reset_index(drop=True)
    images = [Image.open(run_dir / p).convert("RGB") for p in labels["image"]]
    clf = build_classifier("clip", {"model": model, "attributes": "gender", "templates": templates})
    groups = np.array(attribute("gender").group_names)
    labels["clip_gender"] = groups[clf.predict(images)["gender"].argmax(1)]
    per = labels.groupby("prompt_id").agg(synthface=("gender", lambda s: (s == "female").mean()),
                                          clip=("clip_gender", lambda s: (s == "female").mean()), n=("gender", "size"))
    suite = load_suite("occupations")
    text = {p.id: suite.text(p) for p in suite.prompts}
    other = other_family_prompt(suite)
    scorer = CLIPScorer(model)
    own, _ = scorer.score(images, [text[p] for p in labels["prompt_id"]])
    alt, _ = scorer.score(images, [other[p] for p in labels["prompt_id"]])
    return {"run": str(run_dir), "model": model, "texts": clf.texts, "images": len(labels),
            "occupations": int(len(per)), "agreement": float((labels["clip_gender"] == labels["gender"]).mean()),
            "female_share_mean_abs_diff": float((per["synthface"] - per["clip"]).abs().mean()),
            "female_share_r": float(np.corrcoef(per["synthface"], per["clip"])[0, 1]),
            "clipscore_own_higher": float((own > alt).mean()),
            "clipscore_own_mean": float(own.mean()), "clipscore_other_mean": float(alt.mean())}


def main() -> None:
    """Print and write the measurements."""
    ap = argparse.ArgumentParser()
    ap.add_argument("run_dir")
    ap.add_argument("--out", required=True, help="JSON file to write")
    ap.add_argument("--model", default="synthclip")
    ap.add_argument("--templates", default="prompts/clip_templates/synthclip.yaml")
    ap.add_argument("--max-samples", type=int, default=None, help="use each prompt's first N images only")
    args = ap.parse_args()
    res = measure(Path(args.run_dir), args.model, args.templates, args.max_samples)
    Path(args.out).write_text(json.dumps(res, indent=1))
    print(f"{res['images']} faces of {res['occupations']} occupations: per-occupation female share, clip ({args.model}) "
          f"vs synthface classifier: mean |difference| {res['female_share_mean_abs_diff']:.4f} "
          f"(r = {res['female_share_r']:.3f}); per-image gender agreement {res['agreement']:.4f}")
    print(f"CLIP score: own prompt above another family's on {res['clipscore_own_higher']:.4f} of images "
          f"(mean {res['clipscore_own_mean']:.2f} vs {res['clipscore_other_mean']:.2f})")


if __name__ == "__main__":
    main()
