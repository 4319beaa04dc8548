"""Attribute classifier contract: face crops -> per-attribute probability vectors."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
from PIL import Image

from fairbench.prompts import AttributeSpec, attribute


class AttributeClassifier:
    """Base class. `predict` returns {attribute: (N, K) probabilities}, columns in the group
    order of prompts/attributes.yaml; rows sum to 1."""

    name: ClassVar[str] = "base"
    source: ClassVar[str] = ""
    attributes: tuple[str, ...] = ()
    # margin around the detector's box (fraction of its size) that the classifier was trained on
    crop_margin: ClassVar[float] = 0.2

    def __init__(self) -> None:
        """No arguments: subclasses declare theirs in their own signature (the registry binds them)."""

    def specs(self) -> dict[str, AttributeSpec]:
        """Attribute definitions of the attributes this classifier predicts."""
        return {a: attribute(a) for a in self.attributes}

    def predict(self, crops: list[Image.Image]) -> dict[str, np.ndarray]:
        """Per-attribute probabilities for each face crop."""
        raise NotImplementedError

    def auxiliary_groups(self) -> dict[str, list[str]]:
        """Non-fairness heads the classifier also predicts (e.g. occupation family), with their groups."""
        return {}

    def confusion(self, attr: str) -> np.ndarray | None:
        """Known confusion matrix C[i, j] = P(predict j | true i), if the classifier ships one."""
        return None

    def confusion_counts(self, attr: str) -> np.ndarray | None:
        """The held-out counts behind `confusion` (rows: true, columns: predicted), if shipped."""
        return None

    def describe(self) -> dict[str, Any]:
        """Identity and settings for run.json."""
        return {"name": self.name, "source": self.source, "attributes": list(self.attributes)}


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64."""
    z = logits.astype(np.float64) - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def bin_ages(ages: np.ndarray, spec: AttributeSpec) -> np.ndarray:
    """One-hot rows placing each age (years) into the spec's [lo, hi] bins."""
    out = np.zeros((len(ages), spec.k))
    for j, g in enumerate(spec.groups):
        lo, hi = g.range
        out[(ages >= lo) & (ages <= hi), j] = 1.0
    return out
