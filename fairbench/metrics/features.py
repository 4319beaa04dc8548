"""Image feature extractors for Frechet distances: Inception-v3 (FID), CLIP, DINOv2, and those plugins add.

Each extractor maps uint8 images (N, 3, S, S), already resized to its `input_size` with PIL
bicubic (clean-fid's "clean" resize), to float features (N, D). `identity` names everything that
changes the numbers and is part of every cache key.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fairbench.errors import UserError
from fairbench.hub import from_pretrained
from fairbench.io import load_torch_state_dict, sha256_file
from fairbench.registry import WORLDS, Registry

INCEPTION_URL = "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth"
INCEPTION_SHA256_PREFIX = "6726825d"  # torch.hub convention: the file name carries its sha256 prefix


class FeatureExtractor(nn.Module):
    """Base: `input_size`, `num_features` and `identity` are set by subclasses."""

    input_size: int = 224
    num_features: int = 0
    identity: str = ""

    def describe(self) -> dict[str, Any]:
        """Settings for metrics.json."""
        return {"extractor": self.identity, "input_size": self.input_size, "num_features": self.num_features,
                "resize": "PIL bicubic"}


def fetch_inception(dest: str | Path, url: str = INCEPTION_URL, hash_prefix: str = INCEPTION_SHA256_PREFIX) -> Path:
    """Download the FID Inception weights (torch-fidelity's file) to `dest`, checking the sha256 prefix."""
    dest = Path(dest)
    if dest.is_dir():
        raise UserError(f"{dest} is a directory: give the file to write the weights to")
    if dest.exists():  # fetched before: verify instead of downloading again
        if not sha256_file(dest).startswith(hash_prefix):
            raise UserError(f"{dest} exists and is not the Inception weights (sha256 mismatch): remove it first")
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        torch.hub.download_url_to_file(url, str(dest), hash_prefix=hash_prefix, progress=False)
    except (OSError, RuntimeError) as exc:
        raise UserError(f"could not fetch Inception weights from {url}: {exc}") from None
    return dest


class InceptionExtractor(FeatureExtractor):
    """FID's Inception-v3 (pool3, 2048-d) through torchmetrics, from a local weights file."""

    input_size = 299
    num_features = 2048

    def __init__(self, weights: str | None = None, sha256: str | None = None) -> None:
        super().__init__()
        if weights is None:
            raise UserError("the inception extractor needs its weights: --extractor-arg weights=PATH "
                            f"(fetch once with `fairbench fetch-inception PATH`; source {INCEPTION_URL})")
        path = Path(weights).expanduser()
        if not path.is_file():
            raise UserError(f"Inception weights not found: {weights}")
        actual = sha256_file(path)
        expected = sha256 or INCEPTION_SHA256_PREFIX
        if not actual.startswith(expected.lower()):
            raise UserError(f"sha256 mismatch for {path}: expected {expected}..., got {actual}")
        from torchmetrics.image.fid import NoTrainInceptionV3

        state = load_torch_state_dict(path, "Inception-v3")
        # torch-fidelity reads weights with weights_only=False; hand it a file we wrote from safely-loaded tensors
        with tempfile.TemporaryDirectory() as tmp:
            safe = Path(tmp) / "inception.pth"
            torch.save(state, safe)
            self.net = NoTrainInceptionV3(name="inception-v3-compat", features_list=["2048"],
                                          feature_extractor_weights_path=str(safe))
        self.identity = f"inception-v3-compat:{actual[:16]}"

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images).float()


class CLIPExtractor(FeatureExtractor):
    """Image embeddings of a vision-language dual encoder (hub id, local folder or registered name)."""

    def __init__(self, model: str = "openai/clip-vit-base-patch32", revision: str | None = None) -> None:
        super().__init__()
        from fairbench.models.dual_encoder import DualEncoder

        self.encoder = DualEncoder(model, revision)
        self.input_size = self.encoder.image_size
        self.num_features = self.encoder.dim
        self.identity = f"clip:{model}@{revision or 'default'}"

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        px = self.encoder.processor.image_processor(list(images), return_tensors="pt", do_resize=False,
                                                    do_center_crop=False)["pixel_values"]
        return self.encoder.pixel_features(px, normalize=False)


class DINOv2Extractor(FeatureExtractor):
    """DINOv2 CLS features (Stein et al. 2023's recommendation), hub id or local folder."""

    def __init__(self, model: str = "facebook/dinov2-base", revision: str | None = None) -> None:
        super().__init__()
        from transformers import AutoImageProcessor, Dinov2Model

        self.model = from_pretrained(Dinov2Model, model, revision, "DINOv2 model").eval()
        self.processor = from_pretrained(AutoImageProcessor, model, revision, "DINOv2 processor")
        self.input_size = int(self.model.config.image_size)
        self.num_features = int(self.model.config.hidden_size)
        self.identity = f"dinov2:{model}@{revision or 'default'}"

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        px = self.processor(list(images), return_tensors="pt", do_resize=False, do_center_crop=False)["pixel_values"]
        return self.model(pixel_values=px).pooler_output.float()


EXTRACTORS: Registry[type[FeatureExtractor]] = Registry("feature extractor", entry_point_group=WORLDS)


def resolve_extractor(name: str, classifier: str | None) -> str:
    """The extractor a run uses: `auto` is the features its classifier names (a world's own classifier names
    its own features), else Inception; an unknown name is a UserError (before any work)."""
    if name == "auto":
        from fairbench.classifiers import CLASSIFIERS

        own = CLASSIFIERS.entry(classifier).meta.get("extractor") if classifier in CLASSIFIERS else None
        return own or "inception"
    EXTRACTORS.entry(name)
    return name
EXTRACTORS.add("inception", InceptionExtractor, source="FID Inception-v3 (torch-fidelity weights, local path)")
EXTRACTORS.add("clip", CLIPExtractor, source="CLIP image embeddings (hub id or path)")
EXTRACTORS.add("dinov2", DINOv2Extractor, source="DINOv2 CLS features (hub id or path)")


def build_extractor(name: str, args: dict[str, Any] | None = None) -> FeatureExtractor:
    """Instantiate a registered extractor with its --extractor-arg values."""
    return EXTRACTORS.build(name, args)
