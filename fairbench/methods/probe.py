"""What a method does to the conditioning, measured without images: the embedding-distance gap
(fairbench.metrics.embedding) of every unit's conditioning, for the methods that hand the denoiser a
conditioning of their own (embedding level) and for vanilla, their reference."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from fairbench.methods.base import Method
from fairbench.metrics.embedding import distance_spread, embedding_gap
from fairbench.models.backend import DiffusersBackend
from fairbench.prompts import SuiteSpec, attribute, load_attributes
from fairbench.generation.engine import batches
from fairbench.units import WorkUnit

PROBED_LEVELS = ("none", "embedding")
PER_PROMPT = 8  # images per prompt whose conditioning is probed (ITI-GEN's 8 gender x skin-tone combinations)


def probe_attributes(suite: SuiteSpec, method: Method, attributes: list[str]) -> list[str]:
    """The attributes a run's probe measures: none unless the method hands over its own conditioning
    and the suite can name a group in each prompt (its group template)."""
    if method.level not in PROBED_LEVELS or not suite.group_template:
        return []
    known = load_attributes()
    return [a for a in attributes if a in known]


def _states(backend: DiffusersBackend, texts: list[str]) -> torch.Tensor:
    return backend.encode(texts, guidance_scale=0.0).prompt_embeds.float().cpu()


@torch.no_grad()
def embedding_probe(backend: DiffusersBackend, method: Method, suite: SuiteSpec, units: list[WorkUnit],
                    attributes: list[str], level: float = 0.95, batch_size: int = 64,
                    per_prompt: int = PER_PROMPT) -> dict[str, Any]:
    """Per attribute: the gap of each prompt (mean over its first `per_prompt` units) and their mean with
    an interval over prompts."""
    from fairbench.methods.fairmap import token_distance

    units = [u for u in units if u.sample_idx < per_prompt]
    prompts = {p.id: p for p in suite.prompts}
    order = list(dict.fromkeys(u.prompt_id for u in units))
    # the unmodified model's states of every group variant of every prompt: the fixed references
    refs = {a: _states(backend, [suite.group_text(prompts[pid], g.adjective) for pid in order
                                 for g in attribute(a).groups]).unflatten(0, (len(order), attribute(a).k))
            for a in attributes}
    spreads: dict[str, dict[str, list[float]]] = {a: {pid: [] for pid in order} for a in attributes}
    for chunk in batches(units, batch_size):
        texts = [method.rewrite_prompt(u) for u in chunk]
        v = method.transform_conditioning(backend.encode(texts, guidance_scale=0.0), chunk, texts).prompt_embeds
        v = v.float().cpu()
        for a in attributes:
            for row, unit in zip(v, chunk):  # d(v, v_j) for every group j: (K,)
                d = token_distance(row.unsqueeze(0), refs[a][order.index(unit.prompt_id)]).numpy()
                spreads[a][unit.prompt_id].append(float(distance_spread(d)))
    out: dict[str, Any] = {}
    for a in attributes:
        gaps = np.array([np.mean(spreads[a][pid]) for pid in order])
        out[a] = {**embedding_gap(gaps, level), "distance": "token", "units_per_prompt": per_prompt,
                  "per_prompt": dict(zip(order, gaps.round(6).tolist()))}
    return out
