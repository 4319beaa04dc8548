"""Image quality: Frechet distance (FID with Inception-v3) and KID, through torchmetrics.

Generated set: a run directory's images. Reference set: a folder of real images, or another
run directory (e.g. vanilla's images for the same prompts, which measures how far a method
moves the image distribution). Reference statistics are cached by (extractor identity, resize,
reference content hash); torchmetrics keeps float64 running sums, so the FD state of a set is
its (sum, sum of outer products, count).
"""

from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from fairbench.errors import UserError
from fairbench.generation.manifest import IMAGE_SUFFIXES, run_rows
from fairbench import cache
from fairbench.io import sha256_file
from fairbench.metrics.features import FeatureExtractor
from fairbench.outputs.rundir import MANIFEST


def list_images(source: str | Path) -> tuple[list[Path], str]:
    """Image files of a run directory (its manifest, in canonical order) or a folder (sorted), and
    a content hash of the set (sha256 over names and file checksums)."""
    src = Path(source)
    if not src.is_dir():
        raise UserError(f"image set not found: {source}")
    if (src / MANIFEST).is_file():  # a run directory: its own images, each checked against its sha256
        items = [(r["image"], r["sha256"]) for r in run_rows(src)]
    else:
        files = sorted(p for p in src.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        items = [(p.relative_to(src).as_posix(), sha256_file(p)) for p in files]
    if len(items) < 2:
        raise UserError(f"{source} holds {len(items)} image(s); a distance needs at least 2")
    digest = hashlib.sha256("".join(f"{name}\x1f{sha}\n" for name, sha in items).encode()).hexdigest()
    return [src / name for name, _ in items], digest


def image_batches(paths: list[Path], size: int, batch_size: int) -> Iterator[torch.Tensor]:
    """uint8 (N, 3, size, size) batches, resized with PIL bicubic (clean-fid's 'clean' mode)."""
    for i in range(0, len(paths), batch_size):
        arrays = []
        for p in paths[i : i + batch_size]:
            try:
                im = Image.open(p).convert("RGB")
            except (OSError, SyntaxError) as exc:  # PIL's UnidentifiedImageError is an OSError
                raise UserError(f"{p} is not a readable image ({type(exc).__name__})") from None
            if im.size != (size, size):
                im = im.resize((size, size), Image.BICUBIC)
            arrays.append(np.asarray(im))
        yield torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def stats_path(extractor: FeatureExtractor, content_hash: str) -> Path:
    """Where the reference statistics of an image set are cached, keyed by everything that changes them."""
    spec = {"extractor": extractor.identity, "input_size": extractor.input_size, "resize": "PIL bicubic",
            "content": content_hash}
    return cache.root() / "reference-stats" / f"{cache.key(spec, 32)}.safetensors"


def features_of(extractor: FeatureExtractor, paths: list[Path], batch_size: int) -> torch.Tensor:
    """(N, D) float64 features of an image set."""
    feats = [extractor(b).double() for b in image_batches(paths, extractor.input_size, batch_size)]
    return torch.cat(feats)


def reference_features(extractor: FeatureExtractor, source: str | Path, batch_size: int,
                       use_cache: bool = True) -> tuple[torch.Tensor, str, bool]:
    """Reference features, from the cache when the same extractor saw the same content before."""
    paths, content = list_images(source)
    path = stats_path(extractor, content)
    if use_cache and path.is_file():
        return load_file(path)["features"], content, True
    feats = features_of(extractor, paths, batch_size)
    if use_cache:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        save_file({"features": feats.contiguous()}, str(tmp))
        os.replace(tmp, path)
    return feats, content, False


class _Features(torch.nn.Module):
    """Feeds precomputed features through torchmetrics' update(): 'images' here are feature rows."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = num_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def frechet_distance(real: torch.Tensor, fake: torch.Tensor) -> float:
    """torchmetrics' FID computation (float64 sums) on two feature sets."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    metric = FrechetInceptionDistance(feature=_Features(real.shape[1]))
    metric.update(real, real=True)
    metric.update(fake, real=False)
    return float(metric.compute())


def kernel_distance(real: torch.Tensor, fake: torch.Tensor, subsets: int = 100, subset_size: int = 1000,
                    seed: int = 0) -> tuple[float, float | None]:
    """torchmetrics' KID (unbiased MMD^2, cubic polynomial kernel): mean and std over subsets.

    The std is None when a subset holds every image of both sets: then every subset is the same
    draw and its spread (0) says nothing about uncertainty."""
    from torchmetrics.image.kid import KernelInceptionDistance

    size = min(subset_size, len(real), len(fake))
    with warnings.catch_warnings():
        # its buffer warning is about memory; here both feature sets are already in memory, whole
        warnings.filterwarnings("ignore", message=".*will save all extracted features in buffer")
        metric = KernelInceptionDistance(feature=_Features(real.shape[1]), subsets=subsets, subset_size=size)
    metric.update(real, real=True)
    metric.update(fake, real=False)
    torch.manual_seed(seed)  # torchmetrics draws subsets with the global generator
    mean, std = metric.compute()
    return float(mean), (None if size == len(real) == len(fake) else float(std))


def quality(run_dir: str | Path, reference: str | Path, extractor: FeatureExtractor, batch_size: int = 64,
            use_cache: bool = True) -> dict[str, Any]:
    """FD and KID of a run's images against a reference set."""
    gen_paths, gen_hash = list_images(run_dir)
    fake = features_of(extractor, gen_paths, batch_size)
    real, ref_hash, cached = reference_features(extractor, reference, batch_size, use_cache)
    fd = frechet_distance(real, fake)
    kid, kid_std = kernel_distance(real, fake)
    return {"fd": fd, "kid": kid, "kid_std": kid_std, "n_generated": len(fake), "n_reference": len(real),
            "reference": str(reference), "reference_hash": ref_hash, "generated_hash": gen_hash,
            "reference_stats_cached": cached, "batch_size": batch_size, **extractor.describe(),
            "name": "FID" if extractor.identity.startswith("inception") else f"FD_{extractor.identity.split(':')[0]}"}
