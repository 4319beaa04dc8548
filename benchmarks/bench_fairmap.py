"""Fair Mapping training time: synthface's MiniLM encoder vs an SD-1.5-sized text encoder.

The SD-1.5-sized encoder is a CLIPTextModel with SD 1.5's text configuration (12 layers,
hidden 768, 77 tokens) and random weights (the real weights cannot be downloaded here): the
cost of encoding the training prompts and fitting M does not depend on the weights' values.
The paper reports about 50 minutes for 150 occupations (its hardware unstated).

    python benchmarks/bench_fairmap.py [--attributes gender,skin_tone] [--steps 400]
"""

from __future__ import annotations

import argparse
import time

import torch

from fairbench.methods.fairmap import FairMapConfig, fit_mapping
from fairbench.models.backend import Conditioning
from fairbench.prompts import load_suite


class _SDSizedEncoder:
    """The two things fit_mapping needs from a backend: encode() and the text encoder."""

    def __init__(self) -> None:
        from transformers import CLIPTextConfig, CLIPTextModel

        from fairbench.models.tiny import tiny_tokenizer

        torch.manual_seed(0)
        self.text_encoder = CLIPTextModel(CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                                         num_attention_heads=12, max_position_embeddings=77,
                                                         vocab_size=49408)).eval()
        self.tokenizer = tiny_tokenizer()
        self.source = "random CLIPTextModel with SD 1.5's text config"

    @torch.no_grad()
    def encode(self, texts, negative_prompt="", guidance_scale=0.0) -> Conditioning:
        ids = self.tokenizer(texts, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
        return Conditioning(self.text_encoder(ids)[0], None)


def main() -> None:
    """Time both encoders."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--attributes", default="gender,skin_tone")
    ap.add_argument("--steps", type=int, default=400)
    args = ap.parse_args()
    from fairbench.models import load_backend

    suite = load_suite("occupations")
    cfg = FairMapConfig(attributes=args.attributes.split(","), steps=args.steps)
    for name, backend in (("synthface (MiniLM, 24 x 384)", load_backend("synthface")),
                          ("SD-1.5-sized CLIP text encoder (77 x 768, random weights)", _SDSizedEncoder())):
        t0 = time.perf_counter()
        _, stats = fit_mapping(backend, suite, cfg)
        total = time.perf_counter() - t0
        print(f"{name}: {stats['n_prompts']} training occupations, attributes {args.attributes}, {args.steps} steps: "
              f"encode {stats['encode_seconds']:.1f} s + fit {stats['train_seconds']:.1f} s = {total:.1f} s "
              f"(paper: about 50 min for 150 occupations)")
    print(f"torch threads: {torch.get_num_threads()}")


if __name__ == "__main__":
    main()
