"""`hardprompt`: a group sampled uniformly per image and named in the prompt (prompt-text level).

The common reference upper bound for fairness (e.g. Friedrich et al. 2023; Shen et al. 2024):
"a photo of the face of a doctor" becomes "a photo of the face of a female doctor" for a
uniformly drawn group. The draw derives from the image's own seed, so it is the same in every
batch, shard and resumed run. Prompts that already name a group are left as they are.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fairbench.errors import UserError
from fairbench.methods.base import Method, MethodContext
from fairbench.prompts import KeywordDetector, attribute, parse_attributes
from fairbench.units import WorkUnit


def sample_groups(seed: int, attributes: list[str]) -> list[int]:
    """One uniformly drawn group index per attribute, from the image seed."""
    rng = np.random.default_rng([seed, 0x4852])
    return [int(rng.integers(attribute(a).k)) for a in attributes]


class HardPrompt(Method):
    """Name a uniformly sampled group of each attribute in the prompt."""

    level = "text"
    source = "hard-prompt group sampling (reference upper bound; e.g. Friedrich et al. 2023)"

    def __init__(self, attributes: str = "gender") -> None:
        super().__init__()
        self.attributes = parse_attributes(attributes)
        self.detector = KeywordDetector(self.attributes)
        self.args: dict[str, Any] = {"attributes": self.attributes}
        self._suite: Any = None
        self._prompts: dict[str, Any] = {}

    def prepare(self, backend: Any, suite: Any, context: MethodContext | None = None) -> None:
        """Keep the suite's group template and prompts (the rewrite fills the template)."""
        if not suite.group_template and any(not self.detector.names_group(suite.text(p)) for p in suite.prompts):
            raise UserError(f"suite {suite.name!r} has no group_template; hardprompt cannot name a group in it")
        self._suite, self._prompts = suite, {p.id: p for p in suite.prompts}

    def rewrite_prompt(self, unit: WorkUnit) -> str:
        """The suite's group template filled with the sampled groups' adjectives."""
        if self.detector.names_group(unit.prompt):
            return unit.prompt
        groups = sample_groups(unit.seed, self.attributes)
        words = " ".join(attribute(a).groups[g].adjective for a, g in zip(self.attributes, groups))
        return self._suite.group_text(self._prompts[unit.prompt_id], words)
