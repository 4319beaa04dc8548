"""`synthface` face detector: the synthface classifier's face-present head (32 px images are
below MTCNN's minimum face size). The box is the whole image; confidence is P(face present)."""

from __future__ import annotations

from typing import Any

from PIL import Image

from fairbench.faces.base import Detection, FaceDetector


class SynthFaceDetector(FaceDetector):
    """Face present / absent on synthface images."""

    name = "synthface"

    def __init__(self, threshold: float = 0.5, weights: str | None = None, device: str = "cpu") -> None:
        from fairbench.classifiers.synthface import load_net

        self.threshold = threshold
        self.net, _ = load_net(weights)

    def detect(self, images: list[Image.Image]) -> list[Detection | None]:
        """Whole-image box where the face head says present."""
        from fairbench.classifiers.synthface import predict_heads

        if not images:
            return []
        p = predict_heads(self.net, images)["face"][:, 1]
        return [Detection((0.0, 0.0, float(im.width), float(im.height)), float(q)) if q >= self.threshold else None
                for im, q in zip(images, p)]

    def describe(self) -> dict[str, Any]:
        """Settings for run.json."""
        return {"name": self.name, "threshold": self.threshold}
