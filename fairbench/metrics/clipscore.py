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
from fairbench.generation.manifest import run_rows


class CLIPScorer:
    """A pinned vision-language dual encoder (hub id + revision, a local folder or a registered name)
    that scores image-text pairs."""

    def __init__(self, model: str = "openai/clip-vit-large-patch14", revision: str | None = None,
                 device: str = "cpu") -> None:
        from fairbench.models.dual_encoder import DualEncoder

        self.encoder = DualEncoder(model, revision, device)
        self.model_id, self.revision, self.device = model, revision, device
        self.max_tokens = self.encoder.max_tokens

    def score(self, images: list[Image.Image], texts: list[str]) -> tuple[np.ndarray, int]:
        """Per-pair CLIP scores and the number of texts truncated to the context length."""
        img = self.encoder.image_features(images, batch_size=len(images) or 1)
        cos = (img * self.encoder.text_features(texts)).sum(-1)
        return (100 * cos.clamp(min=0)).cpu().numpy(), self.encoder.truncated(texts)


def clip_score_run(run_dir: str | Path, scorer: CLIPScorer, batch_size: int = 32,
                   text_field: str = "prompt", level: float = 0.95) -> dict[str, Any]:
    """Mean CLIP score of a run's images against their neutral prompts (or `prompt_used`), with its normal
    interval at `level`."""
    from scipy.stats import norm

    rows = run_rows(Path(run_dir))
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
    half = float(norm.ppf((1 + level) / 2)) * se
    return {"clip_score": float(allv.mean()), "ci_low": float(allv.mean() - half),
            "ci_high": float(allv.mean() + half), "level": level, "n": len(allv), "model": scorer.model_id,
            "revision": scorer.revision, "text": text_field, "max_tokens": scorer.max_tokens, "truncated": truncated}
