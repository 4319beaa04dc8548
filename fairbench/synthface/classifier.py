"""The synthface attribute classifier: a small CNN that labels the worlds' faces.

Heads: face present, gender, skin tone group, age group, occupation family, and, for the
vision-language world, expression. It was trained on renders with exact labels and augmentations
(lab/synthface/classifier_train.py); its held-out confusion matrices ship with it and feed the
harness's confusion correction.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file
from torch import nn

from fairbench.synthface.families import family_names
from fairbench.synthface.render import AGE_GROUPS, EXPRESSIONS, GENDERS, SKIN_GROUPS

HEADS = {"face": ("absent", "present"), "gender": GENDERS, "skin_tone": SKIN_GROUPS, "age2": AGE_GROUPS}


def head_groups(expressions: bool = False) -> dict[str, tuple[str, ...]]:
    """Head name -> output classes (family classes come from prompts/families.yaml)."""
    return {**HEADS, "family": tuple(family_names()), **({"expression": EXPRESSIONS} if expressions else {})}


def _block(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


def _body(w: int) -> nn.Sequential:
    return nn.Sequential(_block(3, w, 1), _block(w, w, 1), _block(w, 2 * w, 2), _block(2 * w, 2 * w, 1),
                         _block(2 * w, 4 * w, 2), _block(4 * w, 4 * w, 2), nn.AdaptiveAvgPool2d(1), nn.Flatten())


class SynthFaceNet(nn.Module):
    """4 conv stages (32 -> 4 px) + global pooling -> 128-d features -> one linear head per attribute.

    The expression head has a body of its own (`expression_body`), trained afterwards on labelled-expression
    renders with the rest frozen, so adding it leaves every other head's output bit for bit as it was."""

    def __init__(self, heads: dict[str, int], width: int = 32) -> None:
        super().__init__()
        self.body = _body(width)
        self.heads = nn.ModuleDict({k: nn.Linear(4 * width, n) for k, n in heads.items() if k != "expression"})
        if "expression" in heads:
            self.add_expression_head(heads["expression"], width)

    def add_expression_head(self, n: int, width: int) -> None:
        """A separate body and head for expression."""
        self.expression_body = _body(width)
        self.expression_head = nn.Linear(4 * width, n)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate 128-d features (used for Frechet distances on synthface)."""
        return self.body(x)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        f = self.features(x)
        out = {k: h(f) for k, h in self.heads.items()}
        if hasattr(self, "expression_body"):
            out["expression"] = self.expression_head(self.expression_body(x))
        return out


def to_input(images: np.ndarray) -> torch.Tensor:
    """uint8 NHWC -> float NCHW in [-1, 1]."""
    return torch.from_numpy(images.astype(np.float32) / 127.5 - 1.0).permute(0, 3, 1, 2).contiguous()


@torch.no_grad()
def predict_all(net: SynthFaceNet, images: np.ndarray, batch_size: int = 512) -> dict[str, np.ndarray]:
    """Softmax probabilities of every head."""
    outs: dict[str, list[np.ndarray]] = {}
    for i in range(0, len(images), batch_size):
        for k, v in net(to_input(images[i : i + batch_size])).items():
            outs.setdefault(k, []).append(torch.softmax(v.float(), -1).numpy())
    return {k: np.concatenate(v) for k, v in outs.items()}


@lru_cache(maxsize=4)
def load_classifier(folder: str) -> tuple[SynthFaceNet, dict]:
    """(network in eval mode, metadata) from a folder holding classifier.safetensors + classifier.json."""
    meta = json.loads((Path(folder) / "classifier.json").read_text())
    net = SynthFaceNet({k: len(v) for k, v in meta["groups"].items()}, width=meta["width"])
    net.load_state_dict(load_file(Path(folder) / "classifier.safetensors"))
    return net.eval(), meta
