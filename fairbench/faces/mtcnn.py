"""MTCNN face detector (facenet-pytorch; weights ship with the package)."""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image

from fairbench.faces.base import Detection, FaceDetector


class MTCNNDetector(FaceDetector):
    """MTCNN with facenet-pytorch's defaults; keeps the largest face above `min_confidence`."""

    name = "mtcnn"

    def __init__(self, min_confidence: float = 0.9, min_face_size: int = 20, device: str = "cpu") -> None:
        from facenet_pytorch import MTCNN

        self.min_confidence = min_confidence
        self.min_face_size = min_face_size
        self._mtcnn = MTCNN(keep_all=True, min_face_size=min_face_size, device=device)

    def detect(self, images: list[Image.Image]) -> list[Detection | None]:
        """Largest confident face per image (images of different sizes are run one by one)."""
        out: list[Detection | None] = []
        for img in images:
            boxes, probs = self._mtcnn.detect(img.convert("RGB"))
            if boxes is None:
                out.append(None)
                continue
            # numpy 2 makes facenet-pytorch return object arrays: cast before arithmetic
            boxes = np.asarray(boxes, dtype=float).reshape(-1, 4)
            probs = np.asarray(probs, dtype=float).reshape(-1)
            keep = probs >= self.min_confidence
            if not keep.any():
                out.append(None)
                continue
            boxes, probs = boxes[keep], probs[keep]
            areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
            i = int(np.argmax(areas))
            out.append(Detection(tuple(float(v) for v in boxes[i]), float(probs[i]), int(keep.sum())))
        return out

    def describe(self) -> dict[str, Any]:
        """Settings for run.json."""
        return {"name": self.name, "min_confidence": self.min_confidence, "min_face_size": self.min_face_size}
