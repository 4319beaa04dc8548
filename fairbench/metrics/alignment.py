"""Prompt-faithfulness measures that need no CLIP: occupation-family accuracy on synthface."""

from __future__ import annotations

from typing import Any

import pandas as pd

from fairbench.metrics.evaluate import match_rate
from fairbench.prompts import PromptSpec


def family_accuracy(labels: pd.DataFrame, prompts: list[PromptSpec], level: float = 0.95) -> dict[str, Any] | None:
    """Share of faces whose predicted occupation family is the prompt's (needs a `family` label column)."""
    from fairbench.synthface.families import family_of

    if "family" not in labels.columns:
        return None
    fam = family_of()
    expected = {p.id: fam[p.vars["occupation"]] for p in prompts if p.vars.get("occupation") in fam}
    return match_rate(labels, "family", expected, level) if expected else None
