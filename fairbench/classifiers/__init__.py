"""Attribute-classifier registry."""

from __future__ import annotations

from typing import Any

from fairbench.classifiers.agegender import AgeGenderClassifier
from fairbench.classifiers.base import AttributeClassifier
from fairbench.classifiers.clip import CLIPClassifier
from fairbench.classifiers.fairface import FairFaceClassifier
from fairbench.registry import WORLDS, Registry

# a classifier's entry may name `extractor`: the features `--extractor auto` uses on runs it labels
CLASSIFIERS: Registry[type[AttributeClassifier]] = Registry("classifier", entry_point_group=WORLDS)
for _cls in (AgeGenderClassifier, FairFaceClassifier, CLIPClassifier):
    CLASSIFIERS.add(_cls.name, _cls, source=_cls.source)


def build_classifier(name: str, args: dict[str, Any] | None = None, device: str = "cpu") -> AttributeClassifier:
    """Instantiate a registered classifier with its --classifier-arg values."""
    args = dict(args or {})
    if "device" in CLASSIFIERS.get(name).__init__.__code__.co_varnames:
        args.setdefault("device", device)
    return CLASSIFIERS.build(name, args)


__all__ = ["CLASSIFIERS", "AttributeClassifier", "build_classifier"]
