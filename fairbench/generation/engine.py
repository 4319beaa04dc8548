"""Generation stage: pending work units -> images/ + manifest rows, batched and resumable."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch
from PIL import Image
from tqdm.auto import tqdm

from fairbench.generation.manifest import MANIFEST, Manifest, completed_rows, part_name, unit_image
from fairbench.io import atomic_write_bytes, png_bytes, sha256_bytes
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


def canonical_batches(units: list[WorkUnit], size: int) -> list[list[WorkUnit]]:
    """Fixed batches over the whole run's canonical unit order.

    Kernels reduce in batch-shape-dependent order, so an image's last bits depend on which
    images share its batch. Shards, processes and resumed runs therefore work on these fixed
    batches (never re-batch leftovers), which keeps every image bit-identical for a given
    batch size.
    """
    return list(batches(units, size))


def run_generation(
    run_dir: Path,
    units: list[WorkUnit],
    backend: DiffusersBackend,
    method: Method,
    params: SamplingParams,
    batch_size: int,
    part: tuple[int, int] = (0, 1),
    separate_manifest: bool = False,
    batch_invariant: bool = False,
    progress: bool = True,
    done: dict[str, dict] | None = None,
) -> GenerationStats:
    """Generate every unit of this part not yet in the run's manifest; safe to kill and re-run.

    `units` is the whole run in canonical order; `part` = (i, n) takes canonical batches
    i, i + n, ... (a shard, or a process under `accelerate launch`). With `batch_invariant`,
    each image is computed on its own, so its bits do not depend on the batch size either.
    `done` is `completed_rows` of the run directory, where the caller has it already.
    """
    index, count = part
    if done is None:
        done = completed_rows(run_dir, {u.key: u for u in units})
    mine = canonical_batches(units, batch_size)[index::count]
    pending = [b for b in mine if any(u.key not in done for u in b)]
    n_mine = sum(len(b) for b in mine)
    n_pending = sum(u.key not in done for b in pending for u in b)
    manifest = Manifest(run_dir / (part_name(index) if separate_manifest else MANIFEST))
    start = time.perf_counter()
    label = f"generate [{index + 1}/{count}]" if count > 1 else "generate"
    bar = tqdm(total=n_pending, unit="img", desc=label, disable=not progress, dynamic_ncols=True)
    for batch in pending:
        groups = [[u] for u in batch] if batch_invariant else [batch]
        rows = []
        for group in groups:
            texts, images, nsfw = generate_batch(backend, method, group, params)
            for unit, text, image, flag in zip(group, texts, images, nsfw):
                if unit.key in done:
                    continue  # finished before an interruption; identical bytes, keep the first
                data = png_bytes(image)
                rel = unit_image(unit.key)
                atomic_write_bytes(run_dir / rel, data)
                rows.append({**unit.to_dict(), "key": unit.key, "prompt_used": text, "image": rel,
                             "sha256": sha256_bytes(data), "nsfw": flag})
        manifest.append(rows)
        bar.update(len(rows))
    bar.close()
    return GenerationStats(n_mine, n_mine - n_pending, n_pending, time.perf_counter() - start)
