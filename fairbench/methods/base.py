"""The method contract: a debiasing method acts at exactly one level of the generation stack.

Levels, in the order the engine meets them:
  text       rewrite the prompt text of each unit                  (rewrite_prompt)
  embedding  transform the conditioning token states               (transform_conditioning)
  guidance   own the sampling loop (e.g. extra guidance terms)     (generate)
  weights    edit model weights once before generation             (apply_to_model)
A method overrides only the hook of its level; the others are identities.
Trainable methods also implement fit(), writing a checkpoint (safetensors + JSON) that
__init__ loads through its `checkpoint` argument. prepare() receives a MethodContext: what
the run will generate and the run's own face detector and classifier (closed-loop methods
such as UCE measure ratios with them).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from PIL import Image

from fairbench.models.backend import Conditioning, DiffusersBackend, SamplingParams
from fairbench.units import WorkUnit

Level = Literal["none", "text", "embedding", "guidance", "weights"]
LEVELS: tuple[Level, ...] = ("none", "text", "embedding", "guidance", "weights")


@dataclass
class MethodContext:
    """What prepare() may use besides the model: the run's prompts, sampling settings and labellers."""

    suite: Any
    split: str = "all"
    limit: int | None = None
    params: SamplingParams | None = None
    detector: Any = None
    classifier: Any = None
    seed: int = 0
    batch_size: int = 8
    progress: bool = False

    def prompts(self) -> list[Any]:
        """The suite prompts this run generates."""
        return self.suite.select(self.split, self.limit)


def own_clip(backend: DiffusersBackend) -> str | None:
    """The CLIP a pipeline names as its own (`clip_model`: an embedded world's, trained on its images), else None:
    a method that learns against a CLIP uses it there instead of a hub CLIP that has never seen such images."""
    return getattr(backend.pipe, "clip_model", None)


def step_index(scheduler: Any, timestep: Any) -> int:
    """Position of a UNet call's timestep in the scheduler's schedule (0 where it is not in it)."""
    hits = (scheduler.timesteps == torch.as_tensor(timestep).to(scheduler.timesteps)).nonzero()
    return int(hits[0]) if len(hits) else 0


class Method:
    """Base class: identity at every level. Subclasses set `level` and override one hook."""

    level: ClassVar[Level] = "none"
    source: ClassVar[str] = ""
    # pipeline interfaces the method can act on (fairbench.models.backend.ARCHITECTURES); methods that
    # touch embeddings, weights or the denoising loop need a UNet conditioned on token states
    architectures: ClassVar[tuple[str, ...]] = ("sd", "sdxl", "other")

    def __init__(self) -> None:
        self.args: dict[str, Any] = {}

    def prepare(self, backend: DiffusersBackend, suite: Any, context: MethodContext | None = None) -> None:
        """Load or fit what the method needs (checkpoints, statistics), once, before generation."""

    def apply_to_model(self, backend: DiffusersBackend) -> None:
        """Weights level: edit the model in place, once, before any image is generated."""

    def rewrite_prompt(self, unit: WorkUnit) -> str:
        """Text level: the prompt actually sent to the text encoder for this unit."""
        return unit.prompt

    def transform_conditioning(self, cond: Conditioning, units: list[WorkUnit], texts: list[str]) -> Conditioning:
        """Embedding level: map the conditioning of a batch of units."""
        return cond

    def generate(
        self,
        backend: DiffusersBackend,
        cond: Conditioning,
        generators: list[torch.Generator],
        params: SamplingParams,
        units: list[WorkUnit],
    ) -> tuple[list[Image.Image], list[bool]]:
        """Guidance level: sample the images (the default is the backend's own loop)."""
        return backend.generate(cond, generators, params)

    def describe(self) -> dict[str, Any]:
        """Name-free description for run.json: level, source and constructor arguments."""
        return {"level": self.level, "source": self.source, "args": self.args}
