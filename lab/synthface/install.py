"""Install trained weights into the package: a world's denoiser, the shared classifier, synthclip."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from fairbench.errors import UserError
from fairbench.io import atomic_write_json
from fairbench.synthface.pipeline import ASSETS, text_encoder_of, world_assets
from fairbench.synthface.synthclip import ASSETS as SYNTHCLIP_ASSETS
from fairbench.synthface.synthclip import DELTA
from lab.synthface.train import model_index


def _replace_tree(source: Path, dest: Path) -> None:
    shutil.rmtree(dest, ignore_errors=True)
    shutil.copytree(source, dest)


def install_assets(world: str, model_dir: Path, classifier_dir: Path | None = None,
                   synthclip_dir: Path | None = None, classifier_dest: Path = ASSETS) -> Path:
    """Copy unet/, scheduler/ and model_index.json into the world's folder; the classifier files and
    synthclip's shipped form where given. The vision-language world needs its synthclip."""
    needs = [model_dir / "unet", model_dir / "scheduler", model_dir / "model_index.json"]
    if classifier_dir is not None:
        needs += [classifier_dir / "classifier.safetensors", classifier_dir / "classifier.json"]
    if synthclip_dir is not None:
        needs += [synthclip_dir / DELTA, synthclip_dir / "config.json"]
    for need in needs:
        if not need.exists():
            raise UserError(f"missing {need}: train first (`python -m lab.synthface train` / `train-clip` / "
                            "`train-classifier`)")
    encoder = text_encoder_of(json.loads((model_dir / "model_index.json").read_text()))
    if (encoder == "synthclip") != (world == "synthface-vl"):
        raise UserError(f"{model_dir} was trained on the {encoder} text encoder; the {world} world's is "
                        f"{'synthclip' if world == 'synthface-vl' else 'minilm'}")
    if synthclip_dir is not None and world != "synthface-vl":
        raise UserError("--synthclip-dir belongs to the synthface-vl world")
    dest = world_assets(world)
    dest.mkdir(parents=True, exist_ok=True)
    for sub in ("unet", "scheduler"):
        _replace_tree(model_dir / sub, dest / sub)
    atomic_write_json(dest / "model_index.json", model_index(encoder))
    if classifier_dir is not None:
        for name in ("classifier.safetensors", "classifier.json"):
            if (classifier_dir / name).resolve() != (classifier_dest / name).resolve():
                shutil.copy2(classifier_dir / name, classifier_dest / name)
    if synthclip_dir is not None:
        _replace_tree(synthclip_dir, SYNTHCLIP_ASSETS)
    return dest
