"""`entigen`: ethical-intervention text appended to the prompt (prompt-text level).

Source: Bansal, Yin, Monajatipoor, Chang, "How well can Text-to-Image Generative Models
understand Ethical Natural Language Interventions?", EMNLP 2022. The intervention text and its
attribute phrases live in prompts/interventions.yaml.
"""

from __future__ import annotations

from typing import Any

from fairbench.methods.base import Method, MethodContext
from fairbench.prompts import load_prompt_data, parse_attributes, render_template, subject_of
from fairbench.units import WorkUnit


def intervention_text(subject: str, attributes: list[str], data: dict | None = None) -> str:
    """"if all individuals can be a nurse irrespective of their gender and skin color"."""
    spec = (data or load_prompt_data("interventions"))["entigen"]
    phrases = list(dict.fromkeys(spec["attribute_phrases"].get(a, a.replace("_", " ")) for a in attributes))
    joined = phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]
    return render_template(spec["template"], subject=subject, attributes=joined)


class Entigen(Method):
    """Append ENTIGEN's ethical intervention to every prompt."""

    level = "text"
    source = "Bansal et al., ENTIGEN (EMNLP 2022)"

    def __init__(self, attributes: str = "gender") -> None:
        super().__init__()
        self.attributes = parse_attributes(attributes)
        self.args: dict[str, Any] = {"attributes": self.attributes}
        self._suffix: dict[str, str] = {}

    def prepare(self, backend: Any, suite: Any, context: MethodContext | None = None) -> None:
        """One intervention per prompt id, from the suite's subject."""
        self._suffix = {p.id: intervention_text(subject_of(suite, p), self.attributes) for p in suite.prompts}

    def rewrite_prompt(self, unit: WorkUnit) -> str:
        """The prompt, a space, the intervention."""
        return f"{unit.prompt} {self._suffix[unit.prompt_id]}"
