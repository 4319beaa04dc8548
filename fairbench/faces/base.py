"""Face detection contract: one Detection (largest face) or None per image, plus cropping."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from PIL import Image


@dataclass(frozen=True)
class Detection:
    """The largest face of an image: box in pixels (x0, y0, x1, y1) and detector confidence."""

    box: tuple[float, float, float, float]
    confidence: float
    n_faces: int = 1

    @property
    def area(self) -> float:
        """Box area in square pixels."""
        x0, y0, x1, y1 = self.box
        return max(0.0, x1 - x0) * max(0.0, y1 - y0)


def crop_face(image: Image.Image, det: Detection, margin: float = 0.2) -> Image.Image:
    """Crop the detected face with `margin` (a fraction of the box size) on every side."""
    x0, y0, x1, y1 = det.box
    mx, my = (x1 - x0) * margin, (y1 - y0) * margin
    box = (max(0, int(x0 - mx)), max(0, int(y0 - my)), min(image.width, int(x1 + mx + 0.5)),
           min(image.height, int(y1 + my + 0.5)))
    return image.crop(box)


class FaceDetector:
    """Base class: `detect` returns the largest face per image, or None when there is none."""

    name = "base"

    def detect(self, images: list[Image.Image]) -> list[Detection | None]:
        """Largest face per image."""
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        """Settings for run.json."""
        return {"name": self.name}
