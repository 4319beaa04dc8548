"""How far a model's text encoder already leans toward one gender, per occupation (docs/fairmap.md).

For every occupation prompt: d(neutral, "male" variant) - d(neutral, "female" variant) with
Fair Mapping's distances (per token, and between token-averaged states), correlated with
Stable Diffusion 1.5's measured female share (Friedrich et al., Fair Diffusion's counts, stored
with the occupations suite). Positive lean: the neutral prompt sits closer to its female variant.

With --dual-encoder (a vision-language model's registered name, folder or hub id), the same lean is
also measured in its joint text embedding: cos(neutral, female variant) - cos(neutral, male variant).

Usage: python -m lab.studies.fairmap_text_lean [--model synthface] [--dual-encoder synthclip]
"""

from __future__ import annotations

import argparse

import numpy as np
from scipy.stats import pearsonr

from fairbench.methods.fairmap import DISTANCES, encode_all, training_texts
from fairbench.models import load_backend
from fairbench.prompts import load_suite
from fairbench.synthface.population import occupations


def main() -> None:
    """Print the correlation of each distance's lean with SD 1.5's female shares."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="synthface")
    ap.add_argument("--dual-encoder", default=None, help="also measure the lean in this dual encoder's joint space")
    args = ap.parse_args()
    backend, suite = load_backend(args.model), load_suite("occupations")
    neutral, groups = training_texts(suite, ["gender"], "all")
    e = encode_all(backend, neutral)
    g = encode_all(backend, [t for row in groups["gender"] for t in row]).view(len(neutral), 2, *e.shape[1:])
    share = dict(occupations())
    female = np.array([share[p.vars["occupation"]] for p in suite.select("all")])
    for name, dist in DISTANCES.items():
        d = dist(e.unsqueeze(1), g).numpy()  # (P, 2): male, female (prompts/attributes.yaml order)
        lean = d[:, 0] - d[:, 1]
        r, p = pearsonr(lean, female)
        print(f"{name} distance: lean vs SD 1.5 female share over {len(lean)} occupations: Pearson r = {r:.3f} "
              f"(p = {p:.1e}); mean |lean| / mean distance = {np.abs(lean).mean() / d.mean():.3f}")
    if args.dual_encoder:
        from fairbench.models.dual_encoder import DualEncoder

        enc = DualEncoder(args.dual_encoder)
        t = enc.text_features(neutral)
        male, fem = (enc.text_features([row[i] for row in groups["gender"]]) for i in (0, 1))
        lean = ((t * fem).sum(-1) - (t * male).sum(-1)).numpy()
        r, p = pearsonr(lean, female)
        print(f"{args.dual_encoder} joint text embedding: lean (cosine) vs SD 1.5 female share over {len(lean)} "
              f"occupations: Pearson r = {r:.3f} (p = {p:.1e})")


if __name__ == "__main__":
    main()
