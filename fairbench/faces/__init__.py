"""Face detector registry."""

from fairbench.faces.base import Detection, FaceDetector, crop_face
from fairbench.faces.mtcnn import MTCNNDetector
from fairbench.registry import WORLDS, Registry

DETECTORS: Registry[type[FaceDetector]] = Registry("face detector", entry_point_group=WORLDS)
DETECTORS.add("mtcnn", MTCNNDetector, source="Zhang et al. 2016, facenet-pytorch weights")

__all__ = ["DETECTORS", "Detection", "FaceDetector", "MTCNNDetector", "crop_face"]
