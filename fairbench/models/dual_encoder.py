"""Vision-language dual encoders: one loader for the `clip` classifier, the CLIP score and the `clip`
feature extractor.

Any model transformers' AutoModel loads that has `get_text_features` and `get_image_features`
(CLIPModel, VisionTextDualEncoderModel, SigLIP, ...) with its AutoProcessor (tokenizer + image
processor) works the same way: a hub id, a local folder, or a registered name (DUAL_ENCODERS).
"""

from __future__ import annotations

from typing import Any

import torch
from PIL import Image

from fairbench.errors import UserError
from fairbench.hub import from_pretrained
from fairbench.registry import WORLDS, Registry

# name -> hub id or folder; the classifier, the CLIP score and the extractor accept these names
DUAL_ENCODERS: Registry[str] = Registry("vision-language model", entry_point_group=WORLDS)
DUAL_ENCODERS.add("clip-b32", "openai/clip-vit-base-patch32", notes="CLIP ViT-B/32 (ITI-GEN's classifier)")
DUAL_ENCODERS.add("clip-l14", "openai/clip-vit-large-patch14", notes="CLIP ViT-L/14 (HEIM's CLIP score)")

# a world plugin's entry may carry `folder`, a function that assembles its folder on demand


def resolve_dual_encoder(name: str) -> str:
    """A registered name's hub id or folder; anything else is taken as a hub id or folder."""
    if name not in DUAL_ENCODERS:
        return name
    entry = DUAL_ENCODERS.entry(name)
    return entry.meta["folder"]() if "folder" in entry.meta else entry.obj


def check_dual_encoder(model: str, revision: str | None = None) -> None:
    """Refuse, before any work, a vision-language model that cannot be found (its config alone is read)."""
    from transformers import AutoConfig

    from_pretrained(AutoConfig, resolve_dual_encoder(model), revision, "vision-language model")


def _features(out: Any) -> torch.Tensor:
    # transformers 5 returns a ModelOutput from some get_*_features; its pooled field is the embedding
    return getattr(out, "pooler_output", out).float()


class DualEncoder:
    """Text and image embeddings in one space, their temperature, and the text context length."""

    def __init__(self, model: str, revision: str | None = None, device: str = "cpu") -> None:
        from transformers import AutoModel, AutoProcessor

        source = resolve_dual_encoder(model)
        self.model_id, self.revision, self.device = model, revision, device
        self.model = from_pretrained(AutoModel, source, revision, "vision-language model").eval().to(device)
        for method in ("get_text_features", "get_image_features"):
            if not callable(getattr(self.model, method, None)):
                raise UserError(f"{model!r} is a {type(self.model).__name__}, not a dual encoder with text and image "
                                f"features (it has no {method})")
        self.processor = from_pretrained(AutoProcessor, source, revision, "vision-language processor")
        text_config = getattr(self.model.config, "text_config", None)
        self.max_tokens = int(getattr(text_config, "max_position_embeddings", None)
                              or self.processor.tokenizer.model_max_length)

    @property
    def logit_scale(self) -> float:
        """exp of the learned temperature (CLIP's 100 at the end of training)."""
        return float(self.model.logit_scale.detach().exp())

    @property
    def dim(self) -> int:
        """Width of the joint embedding."""
        return int(self.model.config.projection_dim)

    @property
    def image_size(self) -> int:
        """Side of the image tower's input."""
        return int(self.model.config.vision_config.image_size)

    def tokens(self, texts: list[str]) -> dict[str, torch.Tensor]:
        """Tokenised texts, cut at the text tower's context."""
        return self.processor.tokenizer(texts, padding=True, truncation=True, max_length=self.max_tokens,
                                        return_tensors="pt").to(self.device)

    def truncated(self, texts: list[str]) -> int:
        """How many texts are longer than the context."""
        return sum(len(ids) > self.max_tokens for ids in self.processor.tokenizer(texts, truncation=False)["input_ids"])

    @torch.no_grad()
    def text_features(self, texts: list[str]) -> torch.Tensor:
        """L2-normalised text embeddings."""
        return torch.nn.functional.normalize(_features(self.model.get_text_features(**self.tokens(texts))), dim=-1)

    @torch.no_grad()
    def pixel_features(self, pixel_values: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """Image embeddings of preprocessed pixel values."""
        feats = _features(self.model.get_image_features(pixel_values=pixel_values.to(self.device)))
        return torch.nn.functional.normalize(feats, dim=-1) if normalize else feats

    def image_features(self, images: list[Image.Image], batch_size: int = 64) -> torch.Tensor:
        """L2-normalised image embeddings, preprocessed by the model's own image processor."""
        out = []
        for i in range(0, len(images), batch_size):
            px = self.processor.image_processor([im.convert("RGB") for im in images[i : i + batch_size]],
                                                return_tensors="pt")["pixel_values"]
            out.append(self.pixel_features(px))
        return torch.cat(out) if out else torch.zeros(0, self.dim)
