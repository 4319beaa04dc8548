"""Model registry: registered names, hub ids or local pipeline folders -> a backend."""

from __future__ import annotations

import os
from pathlib import Path

from fairbench.errors import UserError
from fairbench.models.backend import PIPELINES, DiffusersBackend, SamplingParams
from fairbench.registry import WORLDS, Registry

# name -> hub id or folder (hub weights load where the hub or its cache is reachable); a world plugin's
# models carry `folder`, a function that returns their folder
MODELS: Registry[str] = Registry("model", entry_point_group=WORLDS)
MODELS.add("sd14", "CompVis/stable-diffusion-v1-4", family="Stable Diffusion 1.4")
MODELS.add("sd15", "stable-diffusion-v1-5/stable-diffusion-v1-5", family="Stable Diffusion 1.5")
MODELS.add("sd21base", "stabilityai/stable-diffusion-2-1-base", family="Stable Diffusion 2.1 base (512 px, epsilon)")
MODELS.add("sd21", "stabilityai/stable-diffusion-2-1", family="Stable Diffusion 2.1 (768 px, v-prediction)")
# SDXL: diffusers' own default guidance for the pipeline; a smaller batch for its 1024 px images
MODELS.add("sdxl", "stabilityai/stable-diffusion-xl-base-1.0", family="Stable Diffusion XL base 1.0 (1024 px)",
           defaults={"steps": 25, "guidance_scale": 5.0, "batch_size": 4, "classifier": "agegender",
                     "detector": "mtcnn"})


SD_DEFAULTS = {"steps": 25, "guidance_scale": 7.5, "batch_size": 8, "classifier": "agegender", "detector": "mtcnn"}


def model_defaults(name: str) -> dict:
    """Sampling and labelling defaults of a model: a registered one's own, a folder of a world's pipeline
    class that class's, any other pipeline Stable Diffusion's."""
    if name in MODELS:
        return MODELS.entry(name).meta.get("defaults", SD_DEFAULTS)
    from fairbench.models.backend import read_model_index

    folder = Path(name).expanduser()
    pipeline = read_model_index(folder).get("_class_name") if (folder / "model_index.json").is_file() else None
    if isinstance(pipeline, str) and pipeline in PIPELINES:
        return PIPELINES.entry(pipeline).meta.get("defaults", SD_DEFAULTS)
    return SD_DEFAULTS


def resolve_device(device: str) -> str:
    """'auto' -> this process's accelerator when there is one, else the CPU; other names are checked."""
    import torch

    if device == "auto":
        if torch.cuda.is_available():
            return f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
        return "cpu"
    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError):
        raise UserError(f"unknown device {device!r} (auto, cpu, cuda, cuda:N, mps)") from None
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"--device {device}: this machine has no CUDA device (use --device cpu or auto)")
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise UserError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif parsed.type == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"--device {device}: MPS is not available on this machine")
    elif parsed.type not in ("cpu", "cuda", "mps"):
        raise UserError(f"unsupported device {device!r} (auto, cpu, cuda, cuda:N, mps)")
    return device


def native_bfloat16(device: str) -> bool:
    """Whether `device` computes in bfloat16 natively (CUDA with bf16, or a CPU with AVX-512 BF16 or AMX)."""
    import torch

    if device.startswith("cuda"):
        return torch.cuda.is_bf16_supported()
    # torch has no public query for the CPU's bf16 instructions; these private ones exist since 2.1
    cpu = torch.cpu
    return bool(getattr(cpu, "_is_avx512_bf16_supported", lambda: False)()
                or getattr(cpu, "_is_amx_tile_supported", lambda: False)())


def default_dtype(name: str, device: str) -> str:
    """The model's dtype on `device`: the one its defaults name where the device computes it natively (the
    embedded worlds: bfloat16, half the cost, the same measured bias), else float32."""
    wanted = model_defaults(name).get("dtype", "float32")
    return wanted if wanted == "float32" or native_bfloat16(device) else "float32"


def check_model(name: str) -> None:
    """Refuse, before any work, a model that is no registered name, local folder or hub id ('org/name')."""
    if name not in MODELS and not Path(name).expanduser().exists() and name.count("/") != 1:
        MODELS.get(name)  # raises the unknown-name error with suggestions


def resolve_model(name: str) -> str:
    """Registered name -> its hub id or folder; a local folder or a hub id ('org/name') passes through."""
    check_model(name)
    if name in MODELS:
        entry = MODELS.entry(name)
        return entry.meta["folder"]() if "folder" in entry.meta else entry.obj
    return name


def load_backend(name: str, dtype: str = "float32", device: str = "cpu", scheduler: str | None = None):
    """Load the backend for a registered name, hub id or local folder."""
    return DiffusersBackend.load(resolve_model(name), dtype=dtype, device=device, scheduler=scheduler)


__all__ = ["MODELS", "DiffusersBackend", "SamplingParams", "check_model", "default_dtype", "load_backend",
           "model_defaults", "native_bfloat16", "resolve_device", "resolve_model"]
