"""Prompt suites and attribute definitions: strict schemas over the YAML files in prompts/."""

from __future__ import annotations

import re
from functools import lru_cache
from importlib.resources import files
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from fairbench.errors import UserError, did_you_mean, validation_message
from fairbench.io import load_yaml_file
from fairbench.registry import Registry

Split = Literal["train", "test", "all"]
SAFE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class GroupSpec(_Strict):
    """One group of an attribute (e.g. gender/female)."""

    name: str
    adjective: str
    clip: str
    words: list[str] = Field(default_factory=list)
    range: tuple[int, int] | None = None
    monk: tuple[int, int] | None = None


class AttributeSpec(_Strict):
    """A sensitive attribute: its ordered groups."""

    description: str = ""
    groups: list[GroupSpec]

    @property
    def group_names(self) -> list[str]:
        """Group names in classifier-output order."""
        return [g.name for g in self.groups]

    @property
    def k(self) -> int:
        """Number of groups."""
        return len(self.groups)


RESERVED_VARS = {"a"}  # {a} is the indefinite article, filled by fairbench, never by a prompt


class PromptSpec(_Strict):
    """One prompt of a suite: an id safe to use in file names, template variables, a split."""

    id: str
    vars: dict[str, str]
    split: Literal["train", "test"] = "test"
    reference: dict[str, float] = Field(default_factory=dict)
    requested: dict[str, str] = Field(default_factory=dict, description="attribute -> group the prompt names")

    @model_validator(mode="after")
    def _check_id(self) -> "PromptSpec":
        if not SAFE_ID.fullmatch(self.id):  # fullmatch: "nurse\n" would pass match() with a $ anchor
            raise ValueError(f"prompt id {self.id!r} must match {SAFE_ID.pattern} (it names files)")
        taken = sorted(RESERVED_VARS & set(self.vars))
        if taken:
            raise ValueError(f"prompt {self.id!r}: variable {taken[0]!r} is reserved ({{a}} is the indefinite article); "
                             "give it another name")
        return self


class SuiteSpec(_Strict):
    """A prompt suite: a template and the prompts that fill it."""

    name: str
    version: int = 1
    description: str = ""
    template: str
    group_template: str | None = None
    subject_var: str | None = None
    split_rule: str | None = None
    prompts: list[PromptSpec]

    @model_validator(mode="after")
    def _unique_ids(self) -> "SuiteSpec":
        # ids name image folders: two that differ only in case would collide on case-insensitive file systems
        ids = [p.id.casefold() for p in self.prompts]
        dupes = sorted({p.id for p, i in zip(self.prompts, ids) if ids.count(i) > 1})
        if dupes:
            raise ValueError(f"duplicate prompt ids (ignoring case): {dupes}")
        for t in (self.template, self.group_template):
            if t is not None:
                template_fields(t)
        return self

    @model_validator(mode="after")
    def _known_requests(self) -> "SuiteSpec":
        # a requested group no attribute has would score as never matched, a silent 0 % adherence
        attrs = load_attributes()
        for p in self.prompts:
            for attr, group in p.requested.items():
                if attr not in attrs:
                    raise ValueError(f"prompt {p.id!r} requests attribute {attr!r}, which is not defined "
                                     f"({', '.join(attrs)})")
                if group not in attrs[attr].group_names:
                    raise ValueError(f"prompt {p.id!r} requests {attr} {group!r}, which is not one of its groups "
                                     f"({', '.join(attrs[attr].group_names)})")
        return self

    def select(self, split: Split = "all", limit: int | None = None) -> list[PromptSpec]:
        """Prompts of `split` in file order, the first `limit` of them."""
        chosen = [p for p in self.prompts if split == "all" or p.split == split]
        return chosen[:limit] if limit else chosen

    def text(self, prompt: PromptSpec) -> str:
        """The neutral prompt text."""
        return render_template(self.template, **prompt.vars)

    def group_text(self, prompt: PromptSpec, adjective: str) -> str:
        """The prompt specialised to one group ("... of a female doctor")."""
        if not self.group_template:
            raise UserError(f"suite {self.name!r} has no group_template, so prompts cannot name a group")
        return render_template(self.group_template, **{**prompt.vars, "group": adjective})


_A_BEFORE_VOWEL = ("uni", "use", "usu", "eu", "one", "ur")  # vowel letter, consonant sound
_AN_BEFORE_H = ("hour", "honest", "honor", "heir")  # silent h


def indefinite_article(word: str) -> str:
    """'a' or 'an' for the word that follows."""
    w = word.lower()
    if w.startswith(_AN_BEFORE_H):
        return "an"
    if w.startswith(_A_BEFORE_VOWEL):
        return "a"
    return "an" if w[:1] in ("a", "e", "i", "o", "u") else "a"


_FIELD = re.compile(r"\{\{|\}\}|\{([^{}]*)\}|[{}]")


def template_fields(template: str) -> set[str]:
    """The variable names a template uses; ValueError for anything but `{name}` fields and `{{`/`}}`."""
    names: set[str] = set()
    for m in _FIELD.finditer(template):
        token, name = m.group(0), m.group(1)
        if token in ("{{", "}}"):
            continue
        if name is None:
            raise ValueError(f"template {template!r} has an unmatched brace (write {{{{ or }}}} for a literal one)")
        if not name.isidentifier():
            raise ValueError(f"template {template!r}: {{{name}}} is not a variable name (templates fill named "
                             "variables only)")
        names.add(name)
    return names


def fill_named(template: str, what: str = "template", /, **variables: str) -> str:
    """Fill the `{name}` fields of `template` from `variables` only: no attribute or index access, no format
    specifications, so a template can never reach Python objects (str.format could)."""
    try:
        missing = sorted(template_fields(template) - set(variables))
    except ValueError as exc:
        raise UserError(str(exc).replace("template", what, 1)) from None
    if missing:
        raise UserError(f"{what} {template!r} needs variable {missing[0]!r} (available: {', '.join(sorted(variables))})")

    def sub(m: re.Match) -> str:
        return {"{{": "{", "}}": "}"}.get(m.group(0)) or str(variables[m.group(1)])

    return _FIELD.sub(sub, template)


def render_template(template: str, /, **variables: str) -> str:
    """Fill `template`'s named variables; `{a}` becomes the indefinite article of the word after it."""
    text = fill_named(template, a="\x00", **variables)
    return re.sub(r"\x00\s+(\S+)", lambda m: f"{indefinite_article(m.group(1))} {m.group(1)}", text)


def _load_yaml(path: Path) -> dict:
    doc = load_yaml_file(path)
    if not isinstance(doc, dict):
        raise UserError(f"{path}: expected a mapping at the top level")
    return doc


def prompts_dir() -> Path:
    """The folder holding attributes.yaml and suites/."""
    return Path(str(files("fairbench.prompt_data")))


def load_suite_file(path: str | Path) -> SuiteSpec:
    """Load and validate a suite YAML (a user's own or a shipped one)."""
    path = Path(path)
    try:
        return SuiteSpec.model_validate(_load_yaml(path))
    except ValidationError as exc:
        raise UserError(f"invalid suite {path}: {validation_message(exc, SuiteSpec)}") from None


SUITES: Registry[Path] = Registry("suite")
for _p in sorted((prompts_dir() / "suites").glob("*.yaml")):
    SUITES.add(_p.stem, _p)


def load_suite(name_or_path: str) -> SuiteSpec:
    """A registered suite name, or the path of a suite YAML."""
    if Path(name_or_path).is_dir():
        raise UserError(f"suite {name_or_path} is a directory: give a suite name or a suite YAML file")
    if name_or_path.endswith((".yaml", ".yml")) or Path(name_or_path).is_file():
        return load_suite_file(name_or_path)
    return load_suite_file(SUITES.get(name_or_path))


def load_run_suite(run_dir: str | Path, name: str) -> SuiteSpec:
    """The suite a run's spec names: the run directory's own file when it holds one of that name
    (a scored run keeps the prompts its images answer there), else a registered name or a path."""
    own = Path(run_dir) / name
    if name == Path(name).name and own.is_file():
        return load_suite_file(own)
    return load_suite(name)


@lru_cache(maxsize=None)
def load_attributes(path: str | None = None) -> dict[str, AttributeSpec]:
    """All attribute definitions (prompts/attributes.yaml unless another file is given)."""
    p = Path(path) if path else prompts_dir() / "attributes.yaml"
    doc = _load_yaml(p)
    try:
        return {name: AttributeSpec.model_validate(spec) for name, spec in doc["attributes"].items()}
    except (KeyError, ValidationError) as exc:
        msg = validation_message(exc, AttributeSpec) if isinstance(exc, ValidationError) else "missing 'attributes'"
        raise UserError(f"invalid attributes file {p}: {msg}") from None


def attribute(name: str) -> AttributeSpec:
    """One attribute by name, with a helpful error for unknown names."""
    attrs = load_attributes()
    if name not in attrs:
        raise UserError(f"unknown attribute {name!r}.{did_you_mean(name, attrs)} Available: {', '.join(attrs)}")
    return attrs[name]


@lru_cache(maxsize=1)
def occupation_families() -> dict[str, str]:
    """Occupation -> its family (prompts/families.yaml; a world may read more of the file than this)."""
    doc = _load_yaml(prompts_dir() / "families.yaml")
    return {occ: name for name, fam in doc["families"].items() for occ in fam["occupations"]}


def parse_attributes(value: str | list[str]) -> list[str]:
    """Attribute names from a --method-arg value ("gender,skin_tone"), each checked against attributes.yaml."""
    names = [a.strip() for a in (value.split(",") if isinstance(value, str) else value) if a.strip()]
    if not names:
        raise UserError("no attribute given (e.g. attributes=gender or attributes=gender,skin_tone)")
    for a in names:
        attribute(a)
    return names


def subject_of(suite: SuiteSpec, prompt: PromptSpec) -> str:
    """The prompt's subject (e.g. the occupation), or an error naming the suite."""
    if not suite.subject_var or suite.subject_var not in prompt.vars:
        raise UserError(f"suite {suite.name!r} declares no subject_var, so the method cannot name the subject")
    return prompt.vars[suite.subject_var]


@lru_cache(maxsize=None)
def load_prompt_data(name: str) -> dict:
    """A YAML data file of prompts/ (e.g. interventions.yaml), safely loaded."""
    return _load_yaml(prompts_dir() / f"{name}.yaml")


class KeywordDetector:
    """Exact, case-insensitive, whole-word match against the group words of the debiased attributes."""

    def __init__(self, attributes: list[str]) -> None:
        words = sorted({w.lower() for a in attributes for g in attribute(a).groups for w in g.words + [g.adjective]},
                       key=len, reverse=True)
        self.words = words
        self._pattern = re.compile(r"(?<![\w-])(" + "|".join(re.escape(w) for w in words) + r")(?![\w-])") if words else None

    def names_group(self, text: str) -> bool:
        """Whether the prompt already names a group (then Fair Mapping leaves it alone)."""
        return bool(self._pattern and self._pattern.search(text.lower()))
