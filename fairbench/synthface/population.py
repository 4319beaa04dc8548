"""Who the synthface worlds' faces are: subjects, their skewed attributes, and rendered sets.

Per occupation, P(female) is SD 1.5's measured share (Fair Diffusion's released counts, in the
occupations suite); skin tone and age follow the family's designed skew (prompts/families.yaml).
With `expressions` (the vision-language world), every render also shows an expression, and the 12
emotion descriptors of prompts/suites/emotions.yaml join as subjects with their designed shares.
A run needs this for the reference renders of the methods that learn from images of each group;
the captions the denoiser was trained on live with the training code (lab/synthface/captions.py).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from fairbench.prompts import attribute, load_suite
from fairbench.synthface.families import family_names, family_of, load_families
from fairbench.synthface.render import AGE_GROUPS, EXPRESSIONS, GENDERS, SKIN_GROUPS, FaceSpec, render_face


def occupations(limit: int | None = None) -> list[tuple[str, float]]:
    """(occupation, SD 1.5 female share) for the 153 occupations (the first `limit`)."""
    suite = load_suite("occupations")
    return [(p.vars["occupation"], p.reference["sd15_female"] / (p.reference["sd15_female"] + p.reference["sd15_male"]))
            for p in suite.prompts][:limit]


@dataclass(frozen=True)
class Subject:
    """What a caption is about, and how its renders are drawn."""

    text: str  # "nurse", "sad person"
    female: float  # P(female) of its renders
    family: int | None = None  # family index; None: drawn uniformly per render
    skin: tuple[float, ...] | None = None  # skin-group shares; None: the family's
    expression: int | None = None  # the expression every render shows; None: drawn uniformly


def emotion_subjects() -> list[Subject]:
    """The emotions suite's descriptors with their designed shares (light share; the rest split evenly)."""
    expr = {name: i for i, name in enumerate(EXPRESSIONS)}
    out = []
    for p in load_suite("emotions").prompts:
        light = p.reference["designed_light_share"]
        text = p.vars["descriptor"].split(" ", 1)[1]  # the article comes from the template
        out.append(Subject(text, p.reference["designed_female_share"], None, (light, *[(1 - light) / 3] * 3),
                           expr[p.requested["expression"]]))
    return out


def subjects(n_occupations: int | None = None, expressions: bool = False) -> list[Subject]:
    """The occupations (the first `n_occupations`), then, with `expressions`, the emotion descriptors."""
    fam_index = {name: i for i, name in enumerate(family_names())}
    fam_of = family_of()
    occs = [Subject(o, f, fam_index[fam_of[o]]) for o, f in occupations(n_occupations)]
    return occs + (emotion_subjects() if expressions else [])


@dataclass
class RenderSet:
    """Rendered training images (uint8, N x 32 x 32 x 3) and their exact labels."""

    images: np.ndarray
    occupation: np.ndarray
    family: np.ndarray
    gender: np.ndarray
    skin: np.ndarray
    age: np.ndarray
    expression: np.ndarray | None = None  # labelled-expression data only

    def arrays(self) -> dict[str, np.ndarray]:
        """The fields that are set, for np.savez."""
        return {k: v for k, v in asdict(self).items() if v is not None}


def sample_labels(n: int, seed: int, n_occupations: int | None = None, balanced: bool = False,
                  expressions: bool = False) -> dict[str, np.ndarray]:
    """Draw subjects uniformly and attributes with the world's skew (`balanced`: uniform groups)."""
    rng = np.random.default_rng(seed)
    occ = rng.integers(0, len(subjects(n_occupations, expressions)), n)
    return {"occupation": occ, **attributes_given(occ, rng, n_occupations, balanced, expressions)}


def attributes_given(occ: np.ndarray, rng: np.random.Generator, n_occupations: int | None = None,
                     balanced: bool = False, expressions: bool = False) -> dict[str, np.ndarray]:
    """Family, gender, skin tone, age (and expression) for subject indices, with the world's skew
    (`balanced`: uniform groups). Draws beyond the text-only world's come after its own, so its data is unchanged."""
    n = len(occ)
    subs = subjects(n_occupations, expressions)
    fams = [load_families()[f] for f in family_names()]
    female_share = np.array([s.female for s in subs])[occ]
    family = np.array([-1 if s.family is None else s.family for s in subs], dtype=np.int64)[occ]
    free_family = family < 0
    family[free_family] = 0  # placeholder until drawn below; keeps the draws of fixed-family subjects in order
    skin_p = np.array([fams[f].skin for f in family]).reshape(n, 4)
    old_p = np.where(free_family, np.mean([f.old for f in fams]), np.array([fams[f].old for f in family]))
    if balanced:
        female_share, skin_p, old_p = np.full(n, 0.5), np.full((n, 4), 0.25), np.full(n, 0.5)
    elif expressions:
        own_skin = np.array([s.skin or (np.nan,) * 4 for s in subs])[occ]
        skin_p = np.where(np.isnan(own_skin), skin_p, own_skin)
    gender = (rng.random(n) < female_share).astype(np.int64)
    skin = (rng.random(n)[:, None] > np.cumsum(skin_p, axis=1)).sum(axis=1).clip(0, 3)
    age = (rng.random(n) < old_p).astype(np.int64)
    out = {"family": family, "gender": gender, "skin": skin, "age": age}
    if expressions:
        out["family"] = np.where(free_family, rng.integers(0, len(fams), n), family)
        fixed = np.array([-1 if s.expression is None else s.expression for s in subs], dtype=np.int64)[occ]
        out["expression"] = np.where(fixed >= 0, fixed, rng.integers(0, len(EXPRESSIONS), n))
    return out


def render_labels(lab: dict[str, np.ndarray], seeds: np.ndarray) -> np.ndarray:
    """Render one face per label row (uint8, N x 32 x 32 x 3), each from its own seed."""
    fams = family_names()
    if len(seeds) == 0:
        return np.zeros((0, 32, 32, 3), np.uint8)
    expr = lab.get("expression")
    return np.stack([
        render_face(FaceSpec(GENDERS[lab["gender"][i]], SKIN_GROUPS[lab["skin"][i]], AGE_GROUPS[lab["age"][i]],
                             fams[lab["family"][i]], None if expr is None else EXPRESSIONS[expr[i]]), int(seeds[i]))
        for i in range(len(seeds))
    ])


def render_set(n: int, seed: int, n_occupations: int | None = None, balanced: bool = False,
               expressions: bool = False) -> RenderSet:
    """Render n labelled training faces (deterministic in seed)."""
    lab = sample_labels(n, seed, n_occupations, balanced, expressions)
    return RenderSet(images=render_labels(lab, seed * 1_000_003 + np.arange(n)), **lab)


# benchmark attribute -> the RenderSet field that labels it (the renderer's own groups, in attributes.yaml order)
RENDER_FIELDS = {"gender": "gender", "skin_tone": "skin", "age2": "age"}


def group_renders(attr: str, per_group: int, seed: int) -> list[np.ndarray]:
    """`per_group` renders of each group of `attr` (uint8, per_group x 32 x 32 x 3 each), every other
    attribute uniform: the reference images of a method that learns from images of each group."""
    if attr not in RENDER_FIELDS:
        raise ValueError(f"synthface renders no {attr!r}; it renders {', '.join(RENDER_FIELDS)}")
    k = attribute(attr).k
    lab = sample_labels(per_group * k, seed, balanced=True)
    lab[RENDER_FIELDS[attr]] = np.repeat(np.arange(k), per_group)
    images = render_labels(lab, seed * 1_000_003 + np.arange(per_group * k))
    return [images[g * per_group:(g + 1) * per_group] for g in range(k)]
