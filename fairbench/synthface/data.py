"""synthface training data: renders with exact labels and captions with SD-1.5-like skew.

Per occupation, P(female) is SD 1.5's measured share (Fair Diffusion's released counts, in the
occupations suite); skin tone and age follow the family's designed skew (prompts/families.yaml).
Captions: 10 % empty (for classifier-free guidance), 50 % neutral ("a photo of the face of a
nurse"), 40 % naming one to three of the rendered attributes with the group words of
prompts/attributes.yaml ("a photo of the face of an old female dark-skinned nurse"), so the
model also learns attribute control.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from fairbench.prompts import attribute, load_suite, render_template
from fairbench.synthface.families import family_names, family_of, load_families
from fairbench.synthface.render import AGE_GROUPS, GENDERS, SKIN_GROUPS, FaceSpec, render_face

NEUTRAL = "a photo of the face of {a} {occupation}"
NAMED = "a photo of the face of {a} {group} {occupation}"
# caption kinds and their probabilities; a kind names a subset of (age, gender, skin)
KINDS: tuple[tuple[tuple[str, ...], float], ...] = (
    ((), 0.50), (("gender",), 0.15), (("skin",), 0.12), (("age",), 0.05),
    (("gender", "skin"), 0.03), (("age", "gender"), 0.02), (("age", "skin"), 0.01), (("age", "gender", "skin"), 0.02),
)
P_EMPTY = 0.10
# KIND_NAMES[k, j]: whether kind k names attribute j (gender, skin, age)
KIND_NAMES = np.array([[a in kind for a in ("gender", "skin", "age")] for kind, _ in KINDS])


def adjectives() -> dict[str, list[str]]:
    """Group words used in captions, from prompts/attributes.yaml (same words Fair Mapping uses)."""
    return {"gender": [g.adjective for g in attribute("gender").groups],
            "skin": [g.adjective for g in attribute("skin_tone").groups],
            "age": [g.adjective for g in attribute("age2").groups]}


def occupations(limit: int | None = None) -> list[tuple[str, float]]:
    """(occupation, SD 1.5 female share) for the 153 occupations (the first `limit`)."""
    suite = load_suite("occupations")
    return [(p.vars["occupation"], p.reference["sd15_female"] / (p.reference["sd15_female"] + p.reference["sd15_male"]))
            for p in suite.prompts][:limit]


def caption(occupation: str, kind: tuple[str, ...], g: int, s: int, a: int) -> str:
    """The caption naming the attributes in `kind` (order: age, gender, skin)."""
    if not kind:
        return render_template(NEUTRAL, occupation=occupation)
    adj = adjectives()
    words = [adj[k][{"gender": g, "skin": s, "age": a}[k]] for k in ("age", "gender", "skin") if k in kind]
    return render_template(NAMED, group=" ".join(words), occupation=occupation)


@dataclass
class CaptionTable:
    """Every caption the training can use, and the index of each (occupation, kind, g, s, a)."""

    texts: list[str]
    index: np.ndarray  # (n_occupations, n_kinds, 2, 4, 2) -> row in texts; row 0 is ""

    @classmethod
    def build(cls, n_occupations: int | None = None) -> "CaptionTable":
        """Enumerate captions once (deduplicated: a neutral caption ignores g, s, a)."""
        occs = occupations(n_occupations)
        texts, rows = [""], {"": 0}
        index = np.zeros((len(occs), len(KINDS), 2, 4, 2), dtype=np.int64)
        for o, (occ, _) in enumerate(occs):
            for k, (kind, _) in enumerate(KINDS):
                for g, s, a in itertools.product(range(2), range(4), range(2)):
                    text = caption(occ, kind, g, s, a)
                    if text not in rows:
                        rows[text] = len(texts)
                        texts.append(text)
                    index[o, k, g, s, a] = rows[text]
        return cls(texts, index)


@dataclass
class RenderSet:
    """Rendered training images (uint8, N x 32 x 32 x 3) and their exact labels."""

    images: np.ndarray
    occupation: np.ndarray
    family: np.ndarray
    gender: np.ndarray
    skin: np.ndarray
    age: np.ndarray


def sample_labels(n: int, seed: int, n_occupations: int | None = None, balanced: bool = False) -> dict[str, np.ndarray]:
    """Draw occupations uniformly and attributes with the world's skew (`balanced`: uniform groups)."""
    rng = np.random.default_rng(seed)
    occ = rng.integers(0, len(occupations(n_occupations)), n)
    return {"occupation": occ, **attributes_given(occ, rng, n_occupations, balanced)}


def attributes_given(occ: np.ndarray, rng: np.random.Generator, n_occupations: int | None = None,
                     balanced: bool = False) -> dict[str, np.ndarray]:
    """Family, gender, skin tone and age for occupation indices, with the world's skew (`balanced`: uniform)."""
    n = len(occ)
    occs = occupations(n_occupations)
    fams = load_families()
    fam_index = {name: i for i, name in enumerate(family_names())}
    fam_of = family_of()
    female_share = np.array([f for _, f in occs])[occ]
    family = np.array([fam_index[fam_of[occs[o][0]]] for o in occ], dtype=np.int64)
    skin_p = np.array([fams[f].skin for f in family_names()])[family]
    old_p = np.array([fams[f].old for f in family_names()])[family]
    if balanced:
        female_share, skin_p, old_p = np.full(n, 0.5), np.full((n, 4), 0.25), np.full(n, 0.5)
    gender = (rng.random(n) < female_share).astype(np.int64)
    skin = (rng.random(n)[:, None] > np.cumsum(skin_p, axis=1)).sum(axis=1).clip(0, 3)
    age = (rng.random(n) < old_p).astype(np.int64)
    return {"family": family, "gender": gender, "skin": skin, "age": age}


def render_labels(lab: dict[str, np.ndarray], seeds: np.ndarray) -> np.ndarray:
    """Render one face per label row (uint8, N x 32 x 32 x 3), each from its own seed."""
    fams = family_names()
    if len(seeds) == 0:
        return np.zeros((0, 32, 32, 3), np.uint8)
    return np.stack([
        render_face(FaceSpec(GENDERS[lab["gender"][i]], SKIN_GROUPS[lab["skin"][i]], AGE_GROUPS[lab["age"][i]],
                             fams[lab["family"][i]]), int(seeds[i]))
        for i in range(len(seeds))
    ])


def render_set(n: int, seed: int, n_occupations: int | None = None, balanced: bool = False) -> RenderSet:
    """Render n labelled training faces (deterministic in seed)."""
    lab = sample_labels(n, seed, n_occupations, balanced)
    return RenderSet(images=render_labels(lab, seed * 1_000_003 + np.arange(n)), **lab)


def kind_probabilities(neutral_share: float | None = None) -> np.ndarray:
    """Probabilities of KINDS among non-empty captions; `neutral_share` overrides the neutral kind's
    (named kinds rescaled to the rest). None: KINDS as listed (5/9 neutral)."""
    probs = np.array([p for _, p in KINDS])
    probs = probs / probs.sum()
    if neutral_share is not None:
        probs[1:] *= (1 - neutral_share) / probs[1:].sum()
        probs[0] = neutral_share
    return probs


def draw_kinds(n: int, rng: np.random.Generator, neutral_share: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Caption kind per sample (index into KINDS) and whether its caption is dropped (empty)."""
    kinds = rng.choice(len(KINDS), size=n, p=kind_probabilities(neutral_share))
    return kinds, rng.random(n) < P_EMPTY


def sample_caption_rows(table: CaptionTable, rs: RenderSet, idx: np.ndarray, rng: np.random.Generator,
                        neutral_share: float | None = None, balanced: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Caption rows for a batch of render indices (caption kind drawn per sample), and the render indices.

    `balanced`: indices of renders with uniform groups; a caption that names a group takes its
    image from them, so "a female construction worker" is learned from more than a handful of
    renders while neutral captions keep the skewed distribution.
    """
    kinds, empty = draw_kinds(len(idx), rng, neutral_share)
    if balanced is not None:
        named = (kinds > 0) & ~empty
        idx = np.where(named, balanced[rng.integers(0, len(balanced), len(idx))], idx)
    rows = table.index[rs.occupation[idx], kinds, rs.gender[idx], rs.skin[idx], rs.age[idx]]
    return np.where(empty, 0, rows), idx


def sample_fresh_named(table: CaptionTable, rs: RenderSet, idx: np.ndarray, rng: np.random.Generator,
                       render_seed: int, neutral_share: float | None = None,
                       n_occupations: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Caption rows and images for a batch in which every group-naming caption describes a fresh render.

    The fresh render keeps the sample's occupation, draws the named groups uniformly and the
    unnamed ones with the world's skew: "a female carpenter" is then as common as "a male
    carpenter" (the skewed renders hold almost no women in the trades), while "a dark-skinned
    carpenter" is still usually male and neutral captions keep the skewed images.
    """
    kinds, empty = draw_kinds(len(idx), rng, neutral_share)
    named = (kinds > 0) & ~empty
    occ = rs.occupation[idx]
    lab = {"gender": rs.gender[idx].copy(), "skin": rs.skin[idx].copy(), "age": rs.age[idx].copy()}
    fresh = attributes_given(occ[named], rng, n_occupations)
    for j, (attr, groups) in enumerate((("gender", GENDERS), ("skin", SKIN_GROUPS), ("age", AGE_GROUPS))):
        names = KIND_NAMES[kinds[named], j]
        fresh[attr] = np.where(names, rng.integers(0, len(groups), int(named.sum())), fresh[attr])
        lab[attr][named] = fresh[attr]
    images = rs.images[idx].copy()
    images[named] = render_labels(fresh, render_seed * 1_000_003 + np.flatnonzero(named))
    rows = table.index[occ, kinds, lab["gender"], lab["skin"], lab["age"]]
    return np.where(empty, 0, rows), images
