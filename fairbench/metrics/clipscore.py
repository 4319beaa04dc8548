"""CLIP score (Hessel et al. 2021), computed directly: 100 * max(cos(E_img, E_text), 0).

torchmetrics' CLIPScore breaks with transformers 5, so the formula is applied here to the
same model outputs. The prompt is truncated to the text encoder's context (77 tokens for CLIP);
how many prompts were cut is reported.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from fairbench.errors import UserError
from fairbench.hub import from_pretrained
from fairbench.io import read_jsonl


class CLIPScorer:
    """A pinned CLIP model (hub id + revision, or a local folder) that scores image-text pairs."""

    def __init__(self, model: str = "openai/clip-vit-large-patch14", revision: str | None = None,
                 device: str = "cpu") -> None:
        from transformers import CLIPModel, CLIPProcessor

        self.model = from_pretrained(CLIPModel, model, revision, "CLIP model").eval().to(device)
        self.processor = from_pretrained(CLIPProcessor, model, revision, "CLIP processor")
        self.model_id, self.revision, self.device = model, revision, device
        self.max_tokens = int(self.model.config.text_config.max_position_embeddings)

    @torch.no_grad()
    def score(self, images: list[Image.Image], texts: list[str]) -> tuple[np.ndarray, int]:
        """Per-pair CLIP scores and the number of texts truncated to the context length."""
        tok = self.processor.tokenizer(texts, padding=True, truncation=True, max_length=self.max_tokens,
                                       return_tensors="pt").to(self.device)
        full = self.processor.tokenizer(texts, truncation=False)["input_ids"]
        truncated = sum(len(ids) > self.max_tokens for ids in full)
        px = self.processor.image_processor([im.convert("RGB") for im in images], return_tensors="pt")["pixel_values"]
        img = self.model.get_image_features(pixel_values=px.to(self.device))
        txt = self.model.get_text_features(**tok)
        img = torch.nn.functional.normalize(getattr(img, "pooler_output", img).float(), dim=-1)
        txt = torch.nn.functional.normalize(getattr(txt, "pooler_output", txt).float(), dim=-1)
        cos = (img * txt).sum(-1)
        return (100 * cos.clamp(min=0)).cpu().numpy(), truncated


def clip_score_run(run_dir: str | Path, scorer: CLIPScorer, batch_size: int = 32,
                   text_field: str = "prompt") -> dict[str, Any]:
    """Mean CLIP score of a run's images against their neutral prompts (or `prompt_used`)."""
    rows = read_jsonl(Path(run_dir) / "manifest.jsonl")
    if not rows:
        raise UserError(f"{run_dir} has no images")
    scores, truncated = [], 0
    for i in range(0, len(rows), batch_size):
        chunk = rows[i : i + batch_size]
        s, t = scorer.score([Image.open(Path(run_dir) / r["image"]) for r in chunk], [r[text_field] for r in chunk])
        scores.append(s)
        truncated += t
    allv = np.concatenate(scores)
    se = float(allv.std(ddof=1) / np.sqrt(len(allv))) if len(allv) > 1 else float("nan")
    return {"clip_score": float(allv.mean()), "ci_low": float(allv.mean() - 1.96 * se),
            "ci_high": float(allv.mean() + 1.96 * se), "n": len(allv), "model": scorer.model_id,
            "revision": scorer.revision, "text": text_field, "max_tokens": scorer.max_tokens, "truncated": truncated}
