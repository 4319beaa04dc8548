"""`clip`: CLIP zero-shot attribute classification (as in HEIM, ITI-GEN and UCE).

Probabilities are the softmax of CLIP's image-text logits over one text per group. The texts
come from prompts/attributes.yaml (field `clip`) or a user YAML ({attribute: {group: text}})
and are recorded in run.json, because results depend on them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from PIL import Image

from fairbench.classifiers.base import AttributeClassifier, softmax
from fairbench.errors import UserError
from fairbench.hub import from_pretrained
from fairbench.prompts import attribute

DEFAULT_CLIP = "openai/clip-vit-base-patch32"  # ITI-GEN's classifier (ViT-B/32)


def load_class_texts(attrs: tuple[str, ...], templates: str | None) -> dict[str, list[str]]:
    """Texts per attribute, in group order: from attributes.yaml, overridden by a user YAML."""
    texts = {a: [g.clip for g in attribute(a).groups] for a in attrs}
    if templates:
        try:
            override = yaml.safe_load(Path(templates).read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise UserError(f"cannot read CLIP templates {templates}: {exc}") from None
        for a, mapping in (override or {}).items():
            if a not in texts:
                raise UserError(f"CLIP templates name attribute {a!r}, not one of {list(texts)}")
            names = attribute(a).group_names
            unknown = set(mapping) - set(names)
            if unknown:
                raise UserError(f"CLIP templates for {a!r} name unknown groups {sorted(unknown)}; groups: {names}")
            texts[a] = [mapping.get(n, t) for n, t in zip(names, texts[a])]
    return texts


class CLIPClassifier(AttributeClassifier):
    """Zero-shot CLIP from a hub id or a local folder (`model=...`, `attributes=gender,race7`)."""

    name = "clip"
    source = "Radford et al. 2021, CLIP zero-shot over class texts"

    def __init__(self, model: str = DEFAULT_CLIP, attributes: str = "gender,race7,age2", templates: str | None = None,
                 revision: str | None = None, device: str = "cpu", batch_size: int = 64) -> None:
        super().__init__()
        from transformers import CLIPModel, CLIPProcessor

        self.model_id, self.revision, self.device, self.batch_size = model, revision, device, int(batch_size)
        self.attributes = tuple(a.strip() for a in attributes.split(",") if a.strip())
        self.texts = load_class_texts(self.attributes, templates)
        self.model = from_pretrained(CLIPModel, model, revision, "CLIP model").eval().to(device)
        self.processor = from_pretrained(CLIPProcessor, model, revision, "CLIP processor")
        self._text_features = {a: self._encode_texts(t) for a, t in self.texts.items()}

    @torch.no_grad()
    def _encode_texts(self, texts: list[str]) -> torch.Tensor:
        tok = self.processor.tokenizer(texts, padding=True, truncation=True, return_tensors="pt").to(self.device)
        feats = self.model.get_text_features(**tok)
        feats = getattr(feats, "pooler_output", feats)
        return torch.nn.functional.normalize(feats.float(), dim=-1)

    @torch.no_grad()
    def image_features(self, images: list[Image.Image]) -> torch.Tensor:
        """L2-normalised image embeddings."""
        out = []
        for i in range(0, len(images), self.batch_size):
            px = self.processor.image_processor([im.convert("RGB") for im in images[i : i + self.batch_size]],
                                                return_tensors="pt")["pixel_values"]
            feats = self.model.get_image_features(pixel_values=px.to(self.device))
            feats = getattr(feats, "pooler_output", feats)
            out.append(torch.nn.functional.normalize(feats.float(), dim=-1))
        return torch.cat(out) if out else torch.zeros(0, self.model.config.projection_dim)

    def predict(self, crops: list[Image.Image]) -> dict[str, np.ndarray]:
        """Softmax of logit_scale * cosine over each attribute's class texts."""
        img = self.image_features(crops)
        scale = float(self.model.logit_scale.detach().exp())
        return {a: softmax((scale * img @ t.T).cpu().numpy()) for a, t in self._text_features.items()}

    def describe(self) -> dict[str, Any]:
        """Model identity and the exact class texts."""
        return {**super().describe(), "model": self.model_id, "revision": self.revision, "texts": self.texts}
