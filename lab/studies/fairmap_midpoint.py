"""Does an embedding halfway between "a male X" and "a female X" give a balanced X? (docs/fairmap.md)

Fair Mapping's premise is that a neutral embedding placed equidistant from its group-specialised
variants generates each group about equally often. This checks the premise on a model directly,
without the mapping network: for held-out occupations, it generates images from the neutral
embedding, from Fair Mapping's mapped neutral embedding, and from points on the straight line
between the "male" and "female" variants (the same token count, so the line is well defined),
then classifies gender. If even the exact midpoint between the variants stays skewed, no map
that only makes distances equal can balance the images.

Usage: python -m lab.studies.fairmap_midpoint [--n 16] [--limit 12] [--model synthface]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from tqdm.auto import tqdm

from fairbench.classifiers import build_classifier
from fairbench.faces import DETECTORS
from fairbench.labels import label_batch
from fairbench.methods.fairmap import FairMapConfig, fit_mapping
from fairbench.models import default_dtype, load_backend, model_defaults
from fairbench.models.backend import Conditioning, SamplingParams
from fairbench.prompts import attribute, load_suite
from fairbench.units import unit_seed

ALPHAS = (0.0, 0.25, 0.5, 0.75, 1.0)  # 0: the "male" variant, 1: the "female" variant


def female_share(backend, detector, classifier, embeds: torch.Tensor, seeds: list[int], params: SamplingParams) -> float:
    """Share of generated faces the classifier calls female, one image per seed."""
    neg = backend.encode([""], guidance_scale=params.guidance_scale).prompt_embeds
    cond = Conditioning(embeds.expand(len(seeds), -1, -1).to(neg.dtype), neg.expand(len(seeds), -1, -1))
    images, _ = backend.generate(cond, [torch.Generator().manual_seed(s) for s in seeds], params)
    faces = [r for r in label_batch(images, detector, classifier, classifier.crop_margin) if r["face"]]
    return float(np.mean([r["gender"] == "female" for r in faces])) if faces else float("nan")


def main() -> None:
    """Print the female share along the male-female line, at the neutral point and after the map."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="synthface")
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--limit", type=int, default=12, help="the first N test occupations")
    args = ap.parse_args()
    backend = load_backend(args.model, dtype=default_dtype(args.model, "cpu"))
    classifier = build_classifier("synthface")
    detector = DETECTORS.get("synthface")(device="cpu")
    params = SamplingParams(**{k: v for k, v in model_defaults(args.model).items() if k in ("steps", "guidance_scale")})
    suite = load_suite("occupations")
    prompts = suite.select("test")[: args.limit]
    net, _ = fit_mapping(backend, suite, FairMapConfig(attributes=["gender", "skin_tone"]))
    names = [g.adjective for g in attribute("gender").groups]
    rows = {f"line {a:.2f}": [] for a in ALPHAS} | {"neutral": [], "fairmap(neutral)": []}
    for p in tqdm(prompts, desc="occupations"):
        seeds = [unit_seed(0, p.id, i) for i in range(args.n)]
        e = {g: backend.encode([suite.group_text(p, g)], guidance_scale=0.0).prompt_embeds.float() for g in names}
        neutral = backend.encode([suite.text(p)], guidance_scale=0.0).prompt_embeds.float()
        for a in ALPHAS:
            rows[f"line {a:.2f}"].append(female_share(backend, detector, classifier, (1 - a) * e["male"] + a * e["female"],
                                                      seeds, params))
        rows["neutral"].append(female_share(backend, detector, classifier, neutral, seeds, params))
        with torch.no_grad():
            rows["fairmap(neutral)"].append(female_share(backend, detector, classifier, net(neutral), seeds, params))
    print(f"{len(prompts)} test occupations x {args.n} images; gender gap = mean |f_m - f_f| = mean |1 - 2 f_female|")
    print("| embedding | mean female share | gender gap |\n|---|---|---|")
    for name, shares in rows.items():
        f = np.array(shares)
        print(f"| {name} | {f.mean():.3f} | {np.abs(1 - 2 * f).mean():.3f} |")


if __name__ == "__main__":
    main()
