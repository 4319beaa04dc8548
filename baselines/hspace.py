"""What the h-space methods (balancingact, selfdebias) share: the model's own generations with the
UNet's mid-block output recorded, their units and cache folder, and each UNet call's step."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from fairbench import cache
from fairbench.errors import UserError
from fairbench.methods.base import MethodContext, step_index
from fairbench.models.backend import DiffusersBackend, SamplingParams, weights_fingerprint
from fairbench.prompts import load_suite
from fairbench.units import unit_seed


def training_units(suite_name: str, split: str, per_prompt: int, seed: int, tag: str,
                   purpose: str) -> list[tuple[str, str, int]]:
    """(prompt id, text, seed) of `per_prompt` generations of every prompt of a split; seeds apart from
    the benchmark's (the method's tag enters each seed)."""
    suite = load_suite(suite_name)
    prompts = suite.select(split)  # type: ignore[arg-type]
    if not prompts:
        raise UserError(f"suite {suite.name!r} has no {split!r} prompts to {purpose}")
    return [(p.id, suite.text(p), unit_seed(seed, f"{tag}:{p.id}", i)) for p in prompts for i in range(per_prompt)]


def cache_folder(kind: str, args: dict[str, Any], units: list[tuple[str, str, int]], backend: DiffusersBackend,
                 context: MethodContext, **extra: Any) -> Path:
    """The cache folder of what a method learned from its generations, keyed by everything that determines it."""
    return cache.folder(kind, {"args": args, **extra, "units": units,
                               "params": (context.params or SamplingParams()).to_dict(),
                               "batch_size": context.batch_size, "model": backend.source,
                               "weights": weights_fingerprint(backend.text_encoders | {"unet": backend.unet})})


def generations_with_h(backend: DiffusersBackend, context: MethodContext, units: list[tuple[str, str, int]],
                       desc: str) -> Iterator[tuple[torch.Tensor, list[Any]]]:
    """Per batch of (prompt id, text, seed) units: the mid-block output h at every step (S, R, F; float16,
    R = the UNet's rows: with classifier-free guidance the unconditional half first) and the images."""
    params = context.params or SamplingParams()
    recorded: list[torch.Tensor] = []

    def record(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        recorded.append(output.detach().flatten(1).to(torch.float16).cpu())

    handle = backend.unet.mid_block.register_forward_hook(record)
    try:
        for start in tqdm(range(0, len(units), context.batch_size), desc=desc, unit="batch", disable=not context.progress):
            chunk = units[start: start + context.batch_size]
            recorded[:] = []
            cond = backend.encode([t for _, t, _ in chunk], params.negative_prompt, params.guidance_scale)
            images, _ = backend.generate(cond, [torch.Generator("cpu").manual_seed(s) for _, _, s in chunk], params)
            yield torch.stack(recorded), images
    finally:
        handle.remove()


class StepTracker:
    """The denoising step of each UNet call (its timestep's position in the scheduler's schedule)."""

    def __init__(self, scheduler: Any) -> None:
        self.scheduler, self.step = scheduler, 0

    def __call__(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        self.step = step_index(self.scheduler, args[1] if len(args) > 1 else kwargs["timestep"])


def generate_guided(backend: DiffusersBackend, cond: Any, generators: list[torch.Generator], params: SamplingParams,
                    guide: Callable[[torch.Tensor, int, Any], torch.Tensor]) -> tuple[list[Any], list[bool]]:
    """The pipeline's own loop with the mid-block output h replaced by guide(h, step, scheduler) at every UNet call."""
    steps = StepTracker(backend.pipe.scheduler)

    def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
        return guide(output, steps.step, backend.pipe.scheduler)

    hooks = [backend.unet.register_forward_pre_hook(steps, with_kwargs=True),
             backend.unet.mid_block.register_forward_hook(hook)]
    try:
        return backend.generate(cond, generators, params)
    finally:
        for handle in hooks:
            handle.remove()
