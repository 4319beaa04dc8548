"""Face detector registry."""

from fairbench.faces.base import Detection, FaceDetector, crop_face
from fairbench.faces.mtcnn import MTCNNDetector
from fairbench.faces.synthface import SynthFaceDetector
from fairbench.registry import Registry

DETECTORS: Registry[type[FaceDetector]] = Registry("face detector")
DETECTORS.add("mtcnn", MTCNNDetector, source="Zhang et al. 2016, facenet-pytorch weights")
DETECTORS.add("synthface", SynthFaceDetector, source="synthface classifier's face-present head")

__all__ = ["DETECTORS", "Detection", "FaceDetector", "MTCNNDetector", "crop_face"]
