"""Model backend: wraps a diffusers text-to-image pipeline behind encode() and generate()."""

from __future__ import annotations

import hashlib
import inspect
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from PIL import Image

from fairbench.errors import UserError, did_you_mean
from fairbench.registry import WORLDS, Registry

SCHEDULERS = {
    "ddim": "DDIMScheduler",
    "ddpm": "DDPMScheduler",
    "dpm++": "DPMSolverMultistepScheduler",
    "euler": "EulerDiscreteScheduler",
    "euler_a": "EulerAncestralDiscreteScheduler",
    "lms": "LMSDiscreteScheduler",
    "pndm": "PNDMScheduler",
}
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
FINGERPRINT_PARTS = ("unet", "transformer", "text_encoder", "text_encoder_2", "text_encoder_3", "vae")
TEXT_ENCODERS = ("text_encoder", "text_encoder_2", "text_encoder_3")
# How fairbench reaches a pipeline's conditioning:
#   sd    one text encoder, token states only (SD 1.x, SD 2.x, the embedded worlds);
#   sdxl  two text encoders whose token states are concatenated, plus a pooled embedding and add_time_ids;
#   other any other text-to-image pipeline: prompts in, images out (text-level methods only).
ARCHITECTURES = ("sd", "sdxl", "other")


def architecture(pipe: Any) -> str:
    """Which conditioning interface a pipeline exposes (see ARCHITECTURES)."""
    if getattr(pipe, "unet", None) is None or getattr(pipe, "text_encoder", None) is None:
        return "other"
    if getattr(pipe, "text_encoder_2", None) is not None:
        return "sdxl" if "pooled_prompt_embeds" in inspect.signature(pipe.__call__).parameters else "other"
    return "sd" if "prompt_embeds" in inspect.signature(pipe.__call__).parameters else "other"


@torch.no_grad()
def weights_fingerprint(modules: dict[str, torch.nn.Module], samples: int | None = 4096) -> str:
    """sha256 over parameter names, shapes and values (all, or a strided sample per tensor), at bfloat16 precision.

    One set of weights loaded in float32 or bfloat16 keeps its fingerprint; any retraining or edit
    changes it. With `samples` it is a cheap identity, not an integrity check: hashing every value
    of SD's 3.4 GB would cost seconds per run, and a sample still sees every tensor. Parameter
    names carry the module key as a prefix ("" for none)."""
    h = hashlib.sha256()
    for part in sorted(modules):
        for name, t in sorted(modules[part].state_dict().items()):
            flat = t.detach().reshape(-1)
            if samples is not None:
                flat = flat[:: max(1, flat.numel() // samples)][:samples]
            h.update((f"{part}.{name}" if part else name).encode())
            h.update(str(tuple(t.shape)).encode())
            h.update(flat.to(torch.bfloat16).float().cpu().numpy().tobytes())
    return h.hexdigest()


MAX_SIDE = 4096  # pixels; larger images would exhaust memory long before finishing


@dataclass(frozen=True)
class SamplingParams:
    """Everything that changes the sampled image besides the conditioning and the seed."""

    steps: int = 25
    guidance_scale: float = 7.5
    height: int | None = None
    width: int | None = None
    negative_prompt: str = ""

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for run.json."""
        return asdict(self)


@dataclass
class Conditioning:
    """What the denoiser is conditioned on, for the prompts and the negative prompt.

    `prompt_embeds`: per-token text states the UNet cross-attends to (SDXL: both encoders' states,
    concatenated on the last axis). `pooled`: SDXL's pooled text embedding (text_encoder_2's
    projection), None elsewhere. `texts`: for pipelines fairbench cannot condition by embeddings
    (architecture "other"), the prompts themselves, and no embeddings."""

    prompt_embeds: torch.Tensor | None
    negative_prompt_embeds: torch.Tensor | None
    pooled: torch.Tensor | None = None
    negative_pooled: torch.Tensor | None = None
    texts: list[str] | None = None

    def __len__(self) -> int:
        return self.prompt_embeds.shape[0] if self.prompt_embeds is not None else len(self.texts or [])


def read_model_index(folder: Path) -> dict[str, Any]:
    """A pipeline folder's model_index.json, with a one-line error when it is missing or broken."""
    path = folder / "model_index.json"
    if not path.is_file():
        raise UserError(f"model folder {str(folder)!r} has no model_index.json (not a diffusers pipeline)")
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{path} is not valid JSON ({exc})") from None
    if not isinstance(index, dict):
        raise UserError(f"{path} holds a {type(index).__name__}, not a mapping of pipeline parts")
    return index


# a world plugin's pipeline class (model_index.json's _class_name) -> its loader(folder, torch dtype) -> pipeline;
# every other class loads through diffusers' DiffusionPipeline
PIPELINES: Registry[Callable[[Path, Any], Any]] = Registry("pipeline class", entry_point_group=WORLDS)

class DiffusersBackend:
    """A Stable-Diffusion-style pipeline: text encoder -> UNet (cross-attention) -> VAE."""

    def __init__(self, pipe: Any, source: str, dtype: str = "float32", device: str = "cpu") -> None:
        self.pipe = pipe
        self.source = source
        self.dtype = dtype
        self.device = device
        self.arch = architecture(pipe)
        pipe.set_progress_bar_config(disable=True)
        # taken at load, before any weight-level method edits the model: the identity of what was loaded
        self.fingerprint = weights_fingerprint({k: m for k in FINGERPRINT_PARTS
                                                if isinstance(m := getattr(pipe, k, None), torch.nn.Module)})

    @classmethod
    def load(cls, source: str, dtype: str = "float32", device: str = "cpu", scheduler: str | None = None):
        """Load a pipeline from a local folder or a model-hub id."""
        from diffusers import DiffusionPipeline
        from diffusers.utils import logging as diffusers_logging
        from transformers.utils import logging as transformers_logging

        diffusers_logging.disable_progress_bar()
        transformers_logging.disable_progress_bar()

        if dtype not in DTYPES:
            raise UserError(f"unknown dtype {dtype!r}. Available: {', '.join(DTYPES)}")
        local = Path(source).expanduser()
        index = read_model_index(local) if local.exists() else {}
        pipeline = index.get("_class_name")
        if isinstance(pipeline, str) and pipeline in PIPELINES:  # a world plugin's own pipeline class
            pipe = PIPELINES.get(pipeline)(local, DTYPES[dtype])
            backend = cls(pipe.to(device), source, dtype, device)
            if scheduler:
                backend.set_scheduler(scheduler)
            return backend
        # safetensors only: a pickled .bin part is refused rather than unpickled; diffusers' own warnings
        # (hub unreachable, falling back to the cache) would add lines to a one-line error
        verbosity = diffusers_logging.get_verbosity()
        diffusers_logging.set_verbosity(diffusers_logging.CRITICAL)
        # parts the folder lists as null (SD3 without its optional T5) load as None
        absent = {k: None for k, v in index.items() if isinstance(v, list) and v[:2] == [None, None]}
        try:
            pipe = DiffusionPipeline.from_pretrained(str(local) if local.exists() else source, dtype=DTYPES[dtype],
                                                     use_safetensors=True, **absent)
        except (OSError, ValueError, EnvironmentError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UserError(
                f"cannot load model {source!r}: not a local pipeline folder of safetensors weights, and the hub "
                f"copy is not reachable or not cached ({first[:200]})"
            ) from None
        finally:
            diffusers_logging.set_verbosity(verbosity)
        if "prompt" not in inspect.signature(pipe.__call__).parameters:
            raise UserError(f"model {source!r} is a {type(pipe).__name__}, which takes no text prompt: "
                            "not a text-to-image pipeline")
        if getattr(pipe, "unet", None) is not None and getattr(pipe, "text_encoder", None) is None:
            raise UserError(f"model {source!r} is a {type(pipe).__name__} without a text_encoder")
        backend = cls(pipe.to(device), source, dtype, device)
        if scheduler:
            backend.set_scheduler(scheduler)
        return backend

    def check_sampling(self, params: SamplingParams) -> None:
        """Refuse an image size this pipeline cannot draw, before any image is generated."""
        fixed = getattr(self.pipe, "fixed_size", None)  # a pipeline that draws one size only says which
        for side in ("height", "width"):
            value = getattr(params, side)
            if value is None:
                continue
            if fixed is not None:
                if value != fixed:
                    raise UserError(f"--{side} {value}: {type(self.pipe).__name__} draws {fixed} x {fixed} images only")
                continue
            # a transformer denoiser also cuts the latent into patch_size x patch_size tokens
            patch = int(getattr(getattr(getattr(self.pipe, "transformer", None), "config", None), "patch_size", 1) or 1)
            factor = int(getattr(self.pipe, "vae_scale_factor", 8)) * patch
            if value % factor or not factor <= value <= MAX_SIDE:
                raise UserError(f"--{side} {value}: must be a multiple of {factor} between {factor} and {MAX_SIDE} "
                                f"for this pipeline")

    def set_scheduler(self, name: str) -> None:
        """Swap the sampler, keeping the pipeline's noise schedule config."""
        import diffusers

        if name not in SCHEDULERS:
            raise UserError(f"unknown scheduler {name!r}.{did_you_mean(name, SCHEDULERS)} Available: {', '.join(SCHEDULERS)}")
        self.pipe.scheduler = getattr(diffusers, SCHEDULERS[name]).from_config(self.pipe.scheduler.config)

    @property
    def unet(self) -> torch.nn.Module:
        """The denoiser (for weight-level methods)."""
        return self.pipe.unet

    @property
    def text_encoder(self) -> torch.nn.Module:
        """The frozen (first) text encoder."""
        return self.pipe.text_encoder

    @property
    def text_encoders(self) -> dict[str, torch.nn.Module]:
        """Every text encoder the pipeline has, by part name (SDXL: text_encoder and text_encoder_2)."""
        return {k: m for k in TEXT_ENCODERS if isinstance(m := getattr(self.pipe, k, None), torch.nn.Module)}

    @property
    def tokenizer(self) -> Any:
        """The text encoder's tokenizer."""
        return self.pipe.tokenizer

    @torch.no_grad()
    def encode(self, texts: list[str], negative_prompt: str = "", guidance_scale: float = 7.5) -> Conditioning:
        """Token states for `texts` (and for the negative prompt when guidance is on)."""
        cfg = guidance_scale > 1.0
        negative = [negative_prompt] * len(texts) if cfg else None
        if self.arch == "other":
            return Conditioning(None, None, texts=list(texts))
        if self.arch == "sdxl":
            pe, ne, pooled, neg_pooled = self.pipe.encode_prompt(
                texts, device=self.device, num_images_per_prompt=1, do_classifier_free_guidance=cfg,
                negative_prompt=negative)
            return Conditioning(pe, ne if cfg else None, pooled, neg_pooled if cfg else None)
        pe, ne = self.pipe.encode_prompt(texts, self.device, 1, cfg, negative_prompt=negative)
        return Conditioning(pe, ne if cfg else None)

    def token_lengths(self, texts: list[str], max_length: int) -> list[int]:
        """Tokens of each text including start and end tokens (the end token sits at length - 1)."""
        tok = self.tokenizer(texts, padding="max_length", max_length=max_length, truncation=True)
        return [int(sum(m)) for m in tok["attention_mask"]]

    @torch.no_grad()
    def generate(
        self, cond: Conditioning, generators: list[torch.Generator], params: SamplingParams
    ) -> tuple[list[Image.Image], list[bool]]:
        """Sample one image per conditioning row, each from its own generator; return images and NSFW flags."""
        if self.arch == "other":
            negative = [params.negative_prompt] * len(cond) if params.negative_prompt else None
            text: dict[str, Any] = {"prompt": cond.texts, "negative_prompt": negative}
        else:
            text = {"prompt_embeds": cond.prompt_embeds, "negative_prompt_embeds": cond.negative_prompt_embeds}
            if self.arch == "sdxl":
                text.update(pooled_prompt_embeds=cond.pooled, negative_pooled_prompt_embeds=cond.negative_pooled)
        out = self.pipe(
            **text,
            num_inference_steps=params.steps,
            guidance_scale=params.guidance_scale,
            height=params.height,
            width=params.width,
            generator=generators,
            output_type="pil",
        )
        flags = getattr(out, "nsfw_content_detected", None) or [False] * len(out.images)
        return list(out.images), [bool(f) for f in flags]

    def describe(self) -> dict[str, Any]:
        """Identity and settings of the model, for run.json."""
        return {
            "source": self.source,
            "pipeline": type(self.pipe).__name__,
            "architecture": self.arch,
            "prediction_type": getattr(self.pipe.scheduler.config, "prediction_type", None),
            "scheduler": type(self.pipe.scheduler).__name__,
            "dtype": self.dtype,
            "device": self.device,
            "safety_checker": getattr(self.pipe, "safety_checker", None) is not None,
            "default_resolution": self.default_resolution(),
            "weights_fingerprint": self.fingerprint,
        }

    def default_resolution(self) -> int:
        """Pixels per side the pipeline generates when height/width are not given."""
        denoiser = getattr(self.pipe, "unet", None) or getattr(self.pipe, "transformer", None)
        size = getattr(self.pipe, "default_sample_size", None) or denoiser.config.sample_size
        return int(size * self.pipe.vae_scale_factor)
