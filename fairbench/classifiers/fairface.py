"""`fairface`: the FairFace classifier (Karkkainen & Joo 2021; dchen236/FairFace).

torchvision ResNet-34 with 18 logits: race 7 [0:7], gender [7:9] (Male, Female), age 9 bins
[9:18]; the race-4 model's race logits are [0:4]. ImageNet normalisation at 224 x 224 on face
crops. The authors distribute the weights themselves (no package registry carries them), so
they load from a path the user gives, checked against a sha256 when one is given.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from fairbench.classifiers.base import AttributeClassifier, softmax
from fairbench.errors import UserError
from fairbench.io import load_torch_state_dict, verify_sha256

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SLICES = {
    7: {"race7": slice(0, 7), "gender": slice(7, 9), "age": slice(9, 18)},
    4: {"race4": slice(0, 4), "gender": slice(7, 9), "age": slice(9, 18)},
}


def build_fairface_net() -> torch.nn.Module:
    """The FairFace architecture: torchvision ResNet-34 whose fc has 18 outputs."""
    import torchvision

    return torchvision.models.resnet34(weights=None, num_classes=18)


def fairface_transform():
    """FairFace's preprocessing: 224 x 224 resize, ImageNet normalisation."""
    from torchvision import transforms

    return transforms.Compose(
        [transforms.Resize((224, 224)), transforms.ToTensor(), transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    )


class FairFaceClassifier(AttributeClassifier):
    """FairFace ResNet-34 from a local weights file (`weights=PATH`, optional `sha256=HEX`)."""

    name = "fairface"
    source = "Karkkainen & Joo, FairFace (WACV 2021), weights from dchen236/FairFace"
    attributes = ("race7", "gender", "age")
    crop_margin = 0.25  # FairFace's own predict.py: dlib face chips with padding 0.25

    def __init__(self, weights: str | None = None, sha256: str | None = None, races: int = 7,
                 device: str = "cpu", batch_size: int = 64) -> None:
        super().__init__()
        if weights is None:
            raise UserError("classifier 'fairface' needs its weights: --classifier-arg weights=PATH "
                            "(res34_fair_align_multi_7_20190809.pt from dchen236/FairFace)")
        path = Path(weights).expanduser()
        if not path.is_file():
            raise UserError(f"fairface weights not found: {weights}")
        races = int(races)
        if races not in SLICES:
            raise UserError(f"fairface races must be 7 or 4, got {races}")
        self.weights_sha256 = verify_sha256(path, sha256)
        self.races, self.device, self.batch_size = races, device, int(batch_size)
        self.attributes = tuple(SLICES[races])
        state = {k.removeprefix("module."): v for k, v in load_torch_state_dict(path, "FairFace").items()}
        self.net = build_fairface_net()
        try:
            self.net.load_state_dict(state)
        except RuntimeError as exc:
            raise UserError(f"{weights} is not a FairFace ResNet-34 state dict: {str(exc).splitlines()[0]}") from None
        self.net.eval().to(device)
        self.transform = fairface_transform()

    @torch.no_grad()
    def logits(self, crops: list[Image.Image]) -> np.ndarray:
        """Raw (N, 18) logits."""
        out = []
        for i in range(0, len(crops), self.batch_size):
            x = torch.stack([self.transform(c.convert("RGB")) for c in crops[i : i + self.batch_size]])
            out.append(self.net(x.to(self.device)).float().cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, 18))

    def predict(self, crops: list[Image.Image]) -> dict[str, np.ndarray]:
        """Softmax over each attribute's logit slice."""
        z = self.logits(crops)
        return {attr: softmax(z[:, sl]) for attr, sl in SLICES[self.races].items()}

    def describe(self) -> dict[str, Any]:
        """Identity for run.json, including the weights' sha256."""
        return {**super().describe(), "races": self.races, "weights_sha256": self.weights_sha256}
