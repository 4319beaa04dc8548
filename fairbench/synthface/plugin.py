"""The synthface worlds as a fairbench plugin.

fairbench's core never names a world: this module registers the embedded worlds' models, their
pipeline class, labellers, feature extractor and CLIP through the `fairbench.worlds` entry
point (pyproject.toml), the mechanism a third party's world would use. The code that rebuilds the
worlds is not part of the package: it lives in the repository's lab/synthface/.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

# sampling and labelling defaults of both worlds (bfloat16 where the device computes it natively)
DEFAULTS = {"steps": 15, "guidance_scale": 2.0, "batch_size": 64, "classifier": "synthface",
            "detector": "synthface", "dtype": "bfloat16"}


def load_pipeline(folder: Path, dtype: Any) -> Any:
    """A SynthFacePipeline folder -> the pipeline, with one-line errors for a folder that lacks a part."""
    import json

    from fairbench.errors import UserError
    from fairbench.synthface.pipeline import SynthFacePipeline

    for part in ("unet", "scheduler"):
        if not (folder / part / ("scheduler_config.json" if part == "scheduler" else "config.json")).is_file():
            raise UserError(f"model folder {str(folder)!r} is a SynthFacePipeline without its {part} "
                            f"({folder / part} is missing or has no config)")
    try:
        return SynthFacePipeline.from_folder(folder, dtype=dtype)
    except (OSError, ValueError, json.JSONDecodeError) as exc:
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise UserError(f"cannot load the synthface pipeline in {str(folder)!r}: {first}") from None


def world_folder(name: str) -> str:
    """Pipeline folder of an embedded world."""
    from fairbench.synthface.pipeline import world_assets

    return str(world_assets(name))


def synthclip_folder() -> str:
    """The vision-language world's CLIP folder, assembled on first use."""
    from fairbench.synthface.synthclip import synthclip_folder as assemble

    return assemble()


def register() -> None:
    """Add the synthface worlds to fairbench's registries (called once, by the first registry lookup)."""
    # diffusers and transformers load when a world's pipeline or CLIP is first used, not on every lookup
    from fairbench.classifiers import CLASSIFIERS
    from fairbench.faces import DETECTORS
    from fairbench.metrics.features import EXTRACTORS
    from fairbench.models import MODELS, PIPELINES
    from fairbench.models.dual_encoder import DUAL_ENCODERS
    from fairbench.synthface.labellers import SynthFaceClassifier, SynthFaceDetector, SynthFaceExtractor

    # the embedded worlds ship inside fairbench (offline); their source is the package folder
    MODELS.add("synthface", "synthface", folder=lambda: world_folder("synthface"), defaults=DEFAULTS,
               family="embedded text-only world: frozen MiniLM text encoder, the bias lives in the denoiser")
    MODELS.add("synthface-vl", "synthface-vl", folder=lambda: world_folder("synthface-vl"), defaults=DEFAULTS,
               family="embedded vision-language world: synthclip text encoder trained on the world's images")
    PIPELINES.add("SynthFacePipeline", load_pipeline, defaults=DEFAULTS)
    DETECTORS.add("synthface", SynthFaceDetector, source="synthface classifier's face-present head")
    CLASSIFIERS.add("synthface", SynthFaceClassifier, source=SynthFaceClassifier.source, extractor="synthface")
    EXTRACTORS.add("synthface", SynthFaceExtractor, source="synthface classifier features (offline)")
    # an entry with `folder` is assembled on demand (shipped as the tensors that differ from a package's model)
    DUAL_ENCODERS.add("synthclip", "fairbench/synthface/assets_synthclip", folder=synthclip_folder,
                      notes="the vision-language world's CLIP, trained on its renders (offline)")
