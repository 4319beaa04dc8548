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
from fairbench.prompts import attribute, load_attributes

DEFAULT_CLIP = "openai/clip-vit-base-patch32"  # ITI-GEN's classifier (ViT-B/32)


def load_class_texts(attrs: tuple[str, ...], templates: str | None) -> dict[str, list[str]]:
    """Texts per attribute, in group order: from attributes.yaml, overridden by a user YAML."""
    texts = {a: [g.clip for g in attribute(a).groups] for a in attrs}
    if templates:
        try:
            override = yaml.safe_load(Path(templates).read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise UserError(f"cannot read CLIP templates {templates}: {exc}") from None
        known = load_attributes()
        for a, mapping in (override or {}).items():
            if a not in known:
                raise UserError(f"CLIP templates name attribute {a!r}, not one of {list(known)}")
            if a not in texts:  # a templates file may cover more attributes than one run asks for
                continue
            names = attribute(a).group_names
            unknown = set(mapping) - set(names)
            if unknown:
                raise UserError(f"CLIP templates for {a!r} name unknown groups {sorted(unknown)}; groups: {names}")
            texts[a] = [mapping.get(n, t) for n, t in zip(names, texts[a])]
    return texts


class CLIPClassifier(AttributeClassifier):
    """Zero-shot classification by any vision-language dual encoder (`model=`: a hub id, a local folder or a
    registered name, fairbench.models.dual_encoder), over `attributes=gender,race7`."""

    name = "clip"
    source = "Radford et al. 2021, CLIP zero-shot over class texts"

    def __init__(self, model: str = DEFAULT_CLIP, attributes: str = "gender,race7,age2", templates: str | None = None,
                 revision: str | None = None, device: str = "cpu", batch_size: int = 64) -> None:
        super().__init__()
        from fairbench.models.dual_encoder import DualEncoder

        self.model_id, self.revision, self.device, self.batch_size = model, revision, device, int(batch_size)
        self.attributes = tuple(a.strip() for a in attributes.split(",") if a.strip())
        self.texts = load_class_texts(self.attributes, templates)
        self.encoder = DualEncoder(model, revision, device)
        self._text_features = {a: self.encoder.text_features(t) for a, t in self.texts.items()}

    def image_features(self, images: list[Image.Image]) -> torch.Tensor:
        """L2-normalised image embeddings."""
        return self.encoder.image_features(images, self.batch_size)

    def predict(self, crops: list[Image.Image]) -> dict[str, np.ndarray]:
        """Softmax of logit_scale * cosine over each attribute's class texts."""
        img = self.image_features(crops)
        scale = self.encoder.logit_scale
        return {a: softmax((scale * img @ t.T).cpu().numpy()) for a, t in self._text_features.items()}

    def describe(self) -> dict[str, Any]:
        """Model identity and the exact class texts."""
        return {**super().describe(), "model": self.model_id, "revision": self.revision, "texts": self.texts}
