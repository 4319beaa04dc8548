"""Install trained synthface weights into the package (fairbench/synthface/assets/)."""

from __future__ import annotations

import shutil
from pathlib import Path

from fairbench.errors import UserError
from fairbench.io import atomic_write_json
from fairbench.synthface.pipeline import ASSETS
from fairbench.synthface.train import MODEL_INDEX


def install_assets(model_dir: Path, classifier_dir: Path, dest: Path = ASSETS) -> Path:
    """Copy unet/, scheduler/ and the classifier files; write model_index.json."""
    for need in (model_dir / "unet", model_dir / "scheduler", classifier_dir / "classifier.safetensors",
                 classifier_dir / "classifier.json"):
        if not need.exists():
            raise UserError(f"missing {need}: train first (`fairbench synthface train` / `train-classifier`)")
    dest.mkdir(parents=True, exist_ok=True)
    for sub in ("unet", "scheduler"):
        shutil.rmtree(dest / sub, ignore_errors=True)
        shutil.copytree(model_dir / sub, dest / sub)
    for name in ("classifier.safetensors", "classifier.json"):
        if (classifier_dir / name).resolve() != (dest / name).resolve():  # installing a new UNet only
            shutil.copy2(classifier_dir / name, dest / name)
    atomic_write_json(dest / "model_index.json", MODEL_INDEX)
    return dest
