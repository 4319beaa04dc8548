"""Attribute-classifier registry."""

from __future__ import annotations

from typing import Any

from fairbench.classifiers.agegender import AgeGenderClassifier
from fairbench.classifiers.base import AttributeClassifier
from fairbench.classifiers.clip import CLIPClassifier
from fairbench.classifiers.fairface import FairFaceClassifier
from fairbench.classifiers.synthface import SynthFaceClassifier
from fairbench.registry import Registry

CLASSIFIERS: Registry[type[AttributeClassifier]] = Registry("classifier")
for _cls in (AgeGenderClassifier, FairFaceClassifier, CLIPClassifier, SynthFaceClassifier):
    CLASSIFIERS.add(_cls.name, _cls, source=_cls.source)


def build_classifier(name: str, args: dict[str, Any] | None = None, device: str = "cpu") -> AttributeClassifier:
    """Instantiate a registered classifier with its --classifier-arg values."""
    args = dict(args or {})
    if "device" in CLASSIFIERS.get(name).__init__.__code__.co_varnames:
        args.setdefault("device", device)
    return CLASSIFIERS.build(name, args)


__all__ = ["CLASSIFIERS", "AttributeClassifier", "build_classifier"]
