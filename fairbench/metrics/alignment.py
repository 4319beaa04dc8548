"""Prompt-faithfulness measures that need no CLIP: occupation-family accuracy, where a classifier
predicts the family (prompts/families.yaml)."""

from __future__ import annotations

from typing import Any

import pandas as pd

from fairbench.metrics.evaluate import match_rate
from fairbench.prompts import PromptSpec, occupation_families


def family_accuracy(labels: pd.DataFrame, prompts: list[PromptSpec], level: float = 0.95) -> dict[str, Any] | None:
    """Share of faces whose predicted occupation family is the prompt's (needs a `family` label column)."""
    if "family" not in labels.columns:
        return None
    expected = expected_families(prompts)
    return match_rate(labels, "family", expected, level) if expected else None


def expected_families(prompts: list[PromptSpec]) -> dict[str, str]:
    """Prompt id -> the occupation family its occupation belongs to (prompts with a known occupation)."""
    fam = occupation_families()
    return {p.id: fam[p.vars["occupation"]] for p in prompts if p.vars.get("occupation") in fam}
