"""Generation stage: pending work units -> images/ + manifest rows, batched and resumable."""

from __future__ import annotations

import io
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch
from PIL import Image
from tqdm.auto import tqdm

from fairbench.generation.manifest import MANIFEST, Manifest, completed_rows, part_name
from fairbench.io import atomic_write_bytes, sha256_bytes
from fairbench.methods.base import Method
from fairbench.models.backend import DiffusersBackend, SamplingParams
from fairbench.units import WorkUnit


@dataclass
class GenerationStats:
    """What the generation stage did."""

    total: int
    already_done: int
    generated: int
    seconds: float

    @property
    def images_per_second(self) -> float:
        """Throughput of this invocation."""
        return self.generated / self.seconds if self.seconds > 0 else 0.0


def image_relpath(unit: WorkUnit) -> str:
    """Where a unit's image lives inside the run directory (prompt ids are validated file-safe)."""
    return f"images/{unit.prompt_id}/{unit.sample_idx:05d}.png"


def png_bytes(image: Image.Image) -> bytes:
    """Deterministic PNG encoding (no timestamps or text chunks)."""
    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=False, compress_level=4)
    return buf.getvalue()


def batches(units: list[WorkUnit], size: int) -> Iterator[list[WorkUnit]]:
    """Consecutive batches in canonical order (batches span prompts)."""
    for i in range(0, len(units), size):
        yield units[i : i + size]


def generate_batch(
    backend: DiffusersBackend, method: Method, units: list[WorkUnit], params: SamplingParams
) -> tuple[list[str], list[Image.Image], list[bool]]:
    """Run the method's hooks and the sampler for one batch; one CPU generator per image."""
    texts = [method.rewrite_prompt(u) for u in units]
    cond = backend.encode(texts, params.negative_prompt, params.guidance_scale)
    cond = method.transform_conditioning(cond, units, texts)
    generators = [torch.Generator("cpu").manual_seed(u.seed) for u in units]
    images, nsfw = method.generate(backend, cond, generators, params, units)
    return texts, images, nsfw


def run_generation(
    run_dir: Path,
    units: list[WorkUnit],
    backend: DiffusersBackend,
    method: Method,
    params: SamplingParams,
    batch_size: int,
    rank: int = 0,
    world_size: int = 1,
    progress: bool = True,
) -> GenerationStats:
    """Generate every unit not yet in the run's manifest; safe to kill and re-run at any point."""
    done = completed_rows(run_dir)
    pending = [u for u in units if u.key not in done]
    mine = pending[rank::world_size]
    manifest = Manifest(run_dir / (MANIFEST if world_size == 1 else part_name(rank)))
    start = time.perf_counter()
    bar = tqdm(total=len(mine), unit="img", desc=f"generate{f' [rank {rank}]' if world_size > 1 else ''}",
               disable=not progress, dynamic_ncols=True)
    for batch in batches(mine, batch_size):
        texts, images, nsfw = generate_batch(backend, method, batch, params)
        rows = []
        for unit, text, image, flag in zip(batch, texts, images, nsfw):
            data = png_bytes(image)
            rel = image_relpath(unit)
            atomic_write_bytes(run_dir / rel, data)
            rows.append({**unit.to_dict(), "key": unit.key, "prompt_used": text, "image": rel,
                         "sha256": sha256_bytes(data), "nsfw": flag})
        manifest.append(rows)
        bar.update(len(batch))
    bar.close()
    return GenerationStats(len(units), len(units) - len(pending), len(mine), time.perf_counter() - start)
