"""Occupation families of the synthface world (prompts/families.yaml, strict schema)."""

from __future__ import annotations

from functools import lru_cache

import yaml
from pydantic import BaseModel, ConfigDict, field_validator

from fairbench.prompts import occupation_families, prompts_dir


class Look(BaseModel):
    """Visual cues the renderer draws for a family."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    background: tuple[int, int, int]
    pattern: str
    clothing: tuple[int, int, int]
    collar: str
    headwear: str
    tool: str


class Family(BaseModel):
    """One occupation family: its look, its designed skin-tone and age skew, its occupations."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    look: Look
    skin: tuple[float, float, float, float]
    old: float
    occupations: list[str]

    @field_validator("skin")
    @classmethod
    def _sums_to_one(cls, v: tuple[float, ...]) -> tuple[float, ...]:
        if abs(sum(v) - 1) > 1e-6:
            raise ValueError(f"skin shares must sum to 1, got {sum(v)}")
        return v


@lru_cache(maxsize=1)
def load_families() -> dict[str, Family]:
    """Family name -> Family, in file order."""
    doc = yaml.safe_load((prompts_dir() / "families.yaml").read_text())
    return {name: Family.model_validate(spec) for name, spec in doc["families"].items()}


def family_of() -> dict[str, str]:
    """Occupation -> family name (the core's reading of the same file)."""
    load_families()  # the world's strict schema first
    return occupation_families()


def family_names() -> list[str]:
    """Family names in classifier-output order."""
    return list(load_families())
