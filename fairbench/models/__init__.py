"""Model registry: registered names, hub ids or local pipeline folders -> a backend."""

from __future__ import annotations

from pathlib import Path

from fairbench.errors import UserError
from fairbench.models.backend import DiffusersBackend, SamplingParams
from fairbench.registry import Registry

# name -> hub id (the real weights; they load where the hub or its cache is reachable)
MODELS: Registry[str] = Registry("model")
MODELS.add("sd14", "CompVis/stable-diffusion-v1-4", family="Stable Diffusion 1.4")
MODELS.add("sd15", "stable-diffusion-v1-5/stable-diffusion-v1-5", family="Stable Diffusion 1.5")
MODELS.add("sd21base", "stabilityai/stable-diffusion-2-1-base", family="Stable Diffusion 2.1 base")


def resolve_model(name: str) -> str:
    """Registered name -> its hub id; a local folder or a hub id ('org/name') passes through."""
    if name in MODELS:
        return MODELS.get(name)
    if Path(name).expanduser().exists() or name.count("/") == 1:
        return name
    MODELS.get(name)  # raises the unknown-name error with suggestions
    raise UserError(f"unknown model {name!r}")


def load_backend(name: str, dtype: str = "float32", device: str = "cpu", scheduler: str | None = None):
    """Load the backend for a registered name, hub id or local folder."""
    return DiffusersBackend.load(resolve_model(name), dtype=dtype, device=device, scheduler=scheduler)


__all__ = ["MODELS", "DiffusersBackend", "SamplingParams", "load_backend", "resolve_model"]
