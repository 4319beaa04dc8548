"""Work units (method, model, prompt_id, sample_idx) and their derived seeds."""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass

from fairbench.generation.manifest import unit_key
from fairbench.prompts import SuiteSpec, Split


# how unit_seed derives a seed, as run.json records it
SEED_RULE = "sha256(f'{seed}\\x1f{prompt_id}\\x1f{sample_idx}')[:8] >> 1; one CPU torch.Generator per image"


def unit_seed(global_seed: int, prompt_id: str, sample_idx: int) -> int:
    """Seed of one image: sha256 of (global seed, prompt id, sample index), first 63 bits.

    Stable across Python processes and versions (never Python's salted hash()).
    """
    digest = hashlib.sha256(f"{global_seed}\x1f{prompt_id}\x1f{sample_idx}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


@dataclass(frozen=True)
class WorkUnit:
    """One image to generate."""

    method: str
    model: str
    prompt_id: str
    sample_idx: int
    prompt: str
    seed: int

    @property
    def key(self) -> str:
        """Unique key of the unit within a run; also its image file stem."""
        return unit_key(self.prompt_id, self.sample_idx)

    def to_dict(self) -> dict:
        """Plain dict for the manifest."""
        return asdict(self)


def make_units(
    suite: SuiteSpec,
    method: str,
    model: str,
    n: int,
    global_seed: int,
    split: Split = "all",
    limit: int | None = None,
) -> list[WorkUnit]:
    """All units of a run in canonical order (prompt order, then sample index)."""
    return [
        WorkUnit(method, model, p.id, i, suite.text(p), unit_seed(global_seed, p.id, i))
        for p in suite.select(split, limit)
        for i in range(n)
    ]

