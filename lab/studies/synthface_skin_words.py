"""Why synthface follows "light" / "dark" but not "medium-light" / "medium-dark" (model card evidence).

Usage: python -m lab.studies.synthface_skin_words [UNET_FOLDER ...]   (default: the shipped UNet)

1. Text side: cosine similarity of MiniLM's token states for the shared tokens of
   "...a dark-skinned nurse" and "...a medium-dark-skinned nurse" (aligned: dark, -, skinned, nurse,
   [SEP]). Near 1 means the word "medium" changes only its own token's state.
2. Model side: the UNet's x0 prediction from pure noise (t = 999), which estimates E[image | caption],
   averaged over the centre 8 x 8 pixels and 8 occupations, per skin-tone word; next to the same
   centre mean over renders of each group (what a model that reads the word would approach).
"""

from __future__ import annotations

import sys

import numpy as np
import torch
from diffusers import UNet2DConditionModel

from fairbench.synthface.population import render_set
from lab.synthface.captions import adjectives
from fairbench.synthface.pipeline import ASSETS, make_scheduler
from fairbench.synthface.text import encode_texts, load_text_encoder

OCCUPATIONS = ("nurse", "doctor", "author", "janitor", "pilot", "chef", "teacher", "engineer")
CENTRE = (slice(12, 20), slice(12, 20))


def aligned_similarity(model, tokenizer, short: str, long: str) -> list[float]:
    """Cosine similarity of the last tokens that `short` and `long` share (aligned at the end)."""
    states = encode_texts([short, long], model, tokenizer)
    n_short = len(tokenizer.tokenize(short))
    n_long = len(tokenizer.tokenize(long))
    shared = slice(1 + n_short - 4, 2 + n_short)  # dark - skinned nurse [SEP] ([CLS] comes first)
    shifted = slice(shared.start + n_long - n_short, shared.stop + n_long - n_short)
    return torch.nn.functional.cosine_similarity(states[0, shared], states[1, shifted], dim=-1).tolist()


def predicted_centre(unet_folder: str, states: torch.Tensor) -> np.ndarray:
    """Mean centre grey level of the x0 predicted from pure noise, per caption."""
    unet = UNet2DConditionModel.from_pretrained(unet_folder).eval()
    alphas = make_scheduler()[0].alphas_cumprod
    torch.manual_seed(0)
    xt = torch.randn(len(states), 3, 32, 32)
    with torch.no_grad():
        v = unet(xt, torch.full((len(states),), 999), encoder_hidden_states=states).sample
    x0 = alphas[999].sqrt() * xt - (1 - alphas[999]).sqrt() * v
    return (x0[:, :, CENTRE[0], CENTRE[1]].mean(dim=(1, 2, 3)) * 127.5 + 127.5).numpy()


def main(folders: list[str]) -> None:
    """Print both checks."""
    model, tokenizer = load_text_encoder()
    for a, b in (("dark-skinned", "medium-dark-skinned"), ("light-skinned", "medium-light-skinned")):
        sims = aligned_similarity(model, tokenizer, f"a photo of the face of a {a} nurse",
                                  f"a photo of the face of a {b} nurse")
        print(f"{a} vs {b}, shared tokens: " + " ".join(f"{s:.3f}" for s in sims))
    words = adjectives()["skin"]
    rs = render_set(2000, 7, balanced=True)
    centre = rs.images[:, CENTRE[0], CENTRE[1]].astype(float).mean(axis=(1, 2, 3))
    print("renders, centre mean per group:  " + "  ".join(
        f"{w} {centre[rs.skin == k].mean():.0f}" for k, w in enumerate(words)))
    states = encode_texts([f"a photo of the face of a {w} {o}" for w in words for o in OCCUPATIONS], model, tokenizer)
    for folder in folders:
        pred = predicted_centre(folder, states).reshape(len(words), len(OCCUPATIONS)).mean(axis=1)
        print(f"{folder}, t=999 prediction:  " + "  ".join(f"{w} {p:.0f}" for w, p in zip(words, pred)))


if __name__ == "__main__":
    main(sys.argv[1:] or [str(ASSETS / "unet")])
