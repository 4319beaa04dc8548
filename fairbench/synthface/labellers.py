"""The synthface world's labellers, all one small CNN trained on renders with exact labels
(fairbench/synthface/classifier.py): the `synthface` attribute classifier (gender, skin tone, age,
occupation family, expression; its held-out confusion matrices ship with the weights and drive the
confusion-corrected shares), the `synthface` face detector (the face-present head: 32 px images are
below MTCNN's minimum face size) and the `synthface` feature extractor (its penultimate features).
"""

from __future__ import annotations

import functools
import hashlib
import weakref
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from fairbench.classifiers.base import AttributeClassifier
from fairbench.errors import UserError
from fairbench.faces.base import Detection, FaceDetector
from fairbench.io import sha256_file
from fairbench.metrics.features import FeatureExtractor


def synthface_assets() -> str:
    """Folder of the shipped synthface weights."""
    from fairbench.synthface.pipeline import ASSETS

    return str(ASSETS)


def load_net(folder: str | None = None):
    """(network, metadata) of the synthface classifier, with a clear error when it is missing.

    One network per weights file, so that the detector and the classifier share it (and its memo)."""
    folder = folder or synthface_assets()
    weights = Path(folder) / "classifier.safetensors"
    try:
        stamp = weights.stat().st_mtime_ns
    except OSError:
        stamp = None
    return _load_net(str(Path(folder).resolve()), stamp)


@functools.lru_cache(maxsize=4)
def _load_net(folder: str, stamp: int | None):
    from fairbench.synthface.classifier import load_classifier

    try:
        return load_classifier(folder)
    except FileNotFoundError:
        raise UserError(f"synthface classifier weights not found in {folder} "
                        "(rebuild them with `make synthface` from a fairbench checkout)") from None


# Per network: image digest -> every head's probabilities, for the last batch only. The detector and the
# classifier are one network on synthface, so the classifier reuses the detector's pass over the same image.
# Weak keys: a memo dies with its network, so a later network can never be served another's outputs.
_LAST_BATCH: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def predict_heads(net: Any, images: list[Image.Image]) -> dict[str, np.ndarray]:
    """Every head's probabilities for each image, running the network once per image across calls."""
    from fairbench.synthface.classifier import predict_all

    arr = images_to_array(images)
    digests = [hashlib.blake2b(a.tobytes(), digest_size=16).digest() for a in arr]
    last = _LAST_BATCH.get(net, {})
    todo = [i for i, d in enumerate(digests) if d not in last]
    fresh = predict_all(net, arr[todo]) if todo else {}
    memo = {d: last[d] for d in digests if d in last}
    memo.update({digests[i]: {k: v[j] for k, v in fresh.items()} for j, i in enumerate(todo)})
    _LAST_BATCH[net] = memo
    return {k: np.stack([memo[d][k] for d in digests]) for k in memo[digests[0]]}


def images_to_array(images: list[Image.Image], size: int = 32) -> np.ndarray:
    """PIL images -> uint8 NHWC at the classifier's resolution."""
    return np.stack([np.asarray(im.convert("RGB").resize((size, size), Image.BOX)) for im in images])


class SynthFaceClassifier(AttributeClassifier):
    """Gender, skin tone (4 groups), age (young/old) and occupation family of synthface images."""

    name = "synthface"
    source = "fairbench synthface CNN, trained on renders with exact labels"
    attributes = ("gender", "skin_tone", "age2")
    crop_margin = 0.0  # the synthface detector's box is the whole image
    auxiliary = ("family", "expression")  # the heads of these that the weights have

    def __init__(self, weights: str | None = None, device: str = "cpu") -> None:
        super().__init__()
        self.net, self.meta = load_net(weights)
        self.weights = weights or synthface_assets()

    def predict(self, crops: list[Image.Image]) -> dict[str, np.ndarray]:
        """Probabilities of the fairness attributes and of the occupation family."""
        if not crops:
            return {k: np.zeros((0, len(v))) for k, v in self.meta["groups"].items() if k != "face"}
        probs = predict_heads(self.net, crops)
        return {k: v.astype(np.float64) for k, v in probs.items() if k != "face"}

    def auxiliary_groups(self) -> dict[str, list[str]]:
        """Groups of the auxiliary (non-fairness) heads."""
        return {k: self.meta["groups"][k] for k in self.auxiliary if k in self.meta["groups"]}

    def confusion(self, attr: str) -> np.ndarray | None:
        """Held-out confusion matrix shipped with the weights."""
        block = self.meta["heldout"].get(attr)
        return np.asarray(block["confusion"]) if block else None

    def confusion_counts(self, attr: str) -> np.ndarray | None:
        """Held-out counts behind the confusion matrix, where the weights ship them."""
        block = self.meta["heldout"].get(attr)
        return np.asarray(block["counts"], dtype=np.int64) if block and "counts" in block else None

    def describe(self) -> dict[str, Any]:
        """Identity for run.json, with the held-out accuracies."""
        acc = {k: v["accuracy"] for k, v in self.meta["heldout"].items() if isinstance(v, dict)}
        return {**super().describe(), "weights": self.weights, "heldout_accuracy": acc}


class SynthFaceDetector(FaceDetector):
    """Face present / absent on synthface images."""

    name = "synthface"

    def __init__(self, threshold: float = 0.5, weights: str | None = None, device: str = "cpu") -> None:
        self.threshold = threshold
        self.net, _ = load_net(weights)

    def detect(self, images: list[Image.Image]) -> list[Detection | None]:
        """Whole-image box where the face head says present."""
        if not images:
            return []
        p = predict_heads(self.net, images)["face"][:, 1]
        return [Detection((0.0, 0.0, float(im.width), float(im.height)), float(q)) if q >= self.threshold else None
                for im, q in zip(images, p)]

    def describe(self) -> dict[str, Any]:
        """Settings for run.json."""
        return {"name": self.name, "threshold": self.threshold}


class SynthFaceExtractor(FeatureExtractor):
    """The synthface classifier's 128-d penultimate features (offline)."""

    input_size = 32
    num_features = 128

    def __init__(self, weights: str | None = None) -> None:
        super().__init__()
        self.net, _ = load_net(weights)
        weights_file = Path(weights or synthface_assets()) / "classifier.safetensors"
        self.identity = f"synthface-classifier:{sha256_file(weights_file)[:16]}"

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net.features(images.float() / 127.5 - 1.0)
