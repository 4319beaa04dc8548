"""synthface training data: renders with exact labels and captions with SD-1.5-like skew.

Per occupation, P(female) is SD 1.5's measured share (Fair Diffusion's released counts, in the
occupations suite); skin tone and age follow the family's designed skew (prompts/families.yaml).
Captions: 10 % empty (for classifier-free guidance), 50 % neutral ("a photo of the face of a
nurse"), 40 % naming one to three of the rendered attributes with the group words of
prompts/attributes.yaml ("a photo of the face of an old female dark-skinned nurse"), so the
model also learns attribute control.

The labelled-expression data (`expressions=True`, the vision-language world's) adds, from the
same draws: an expression per render (uniform over the renderer's five, exactly labelled), the
12 emotion descriptors of prompts/suites/emotions.yaml as extra subjects whose renders show the
requested expression with the suite's designed gender and skin-tone shares, and captions that
name the render's expression 30 % of the time ("a photo of the face of a smiling nurse").
"""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass

import numpy as np

from fairbench.prompts import attribute, load_suite, render_template
from fairbench.synthface.families import family_names, family_of, load_families
from fairbench.synthface.render import AGE_GROUPS, EXPRESSIONS, GENDERS, SKIN_GROUPS, FaceSpec, render_face

NEUTRAL = "a photo of the face of {a} {occupation}"
NAMED = "a photo of the face of {a} {group} {occupation}"
# caption kinds and their probabilities; a kind names a subset of (age, gender, skin)
KINDS: tuple[tuple[tuple[str, ...], float], ...] = (
    ((), 0.50), (("gender",), 0.15), (("skin",), 0.12), (("age",), 0.05),
    (("gender", "skin"), 0.03), (("age", "gender"), 0.02), (("age", "skin"), 0.01), (("age", "gender", "skin"), 0.02),
)
P_EMPTY = 0.10
P_EXPRESSION = 0.30  # labelled-expression data: share of non-empty occupation captions naming the expression
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


def caption(occupation: str, kind: tuple[str, ...], g: int, s: int, a: int, e: int | None = None) -> str:
    """The caption naming the attributes in `kind` (order: age, gender, skin), and expression `e` first if given."""
    adj = adjectives()
    words = [adj[k][{"gender": g, "skin": s, "age": a}[k]] for k in ("age", "gender", "skin") if k in kind]
    if e is not None:
        words.insert(0, attribute("expression").groups[e].adjective)
    if not words:
        return render_template(NEUTRAL, occupation=occupation)
    return render_template(NAMED, group=" ".join(words), occupation=occupation)


@dataclass
class CaptionTable:
    """Every caption the training can use, and the index of each (occupation, kind, g, s, a)."""

    texts: list[str]
    # (n_subjects, n_kinds, 2, 4, 2, n_e) -> row in texts; row 0 is "". Last axis: 0 names no expression,
    # 1 + e names expression e (only with labelled expressions; n_e = 1 otherwise)
    index: np.ndarray
    neutral_only: np.ndarray  # per subject: captioned neutrally whatever the kind (emotion descriptors)

    @property
    def expressions(self) -> bool:
        """Whether captions can name an expression."""
        return self.index.shape[-1] > 1

    def rows(self, occ: np.ndarray, kinds: np.ndarray, lab: dict[str, np.ndarray], rng: np.random.Generator,
             empty: np.ndarray, expression_share: float = P_EXPRESSION) -> np.ndarray:
        """Caption row per sample: kind `kinds`, groups `lab`; with expressions, `expression_share` of them
        name the render's expression (drawn last, so the text-only world's draws are unchanged). Empty
        captions are row 0."""
        e = np.zeros(len(occ), dtype=np.int64)
        if self.expressions:
            e = np.where(rng.random(len(occ)) < expression_share, 1 + lab["expression"], 0)
        rows = self.index[occ, kinds, lab["gender"], lab["skin"], lab["age"], e]
        return np.where(empty, 0, rows)

    @classmethod
    def build(cls, n_occupations: int | None = None, expressions: bool = False) -> "CaptionTable":
        """Enumerate captions once (deduplicated: a neutral caption ignores g, s, a).

        Emotion descriptors are captioned neutrally only: the descriptor already requests the expression."""
        subs = subjects(n_occupations, expressions)
        n_e = 1 + len(EXPRESSIONS) if expressions else 1
        texts, rows = [""], {"": 0}
        index = np.zeros((len(subs), len(KINDS), 2, 4, 2, n_e), dtype=np.int64)
        for o, sub in enumerate(subs):
            for k, (kind, _) in enumerate(KINDS):
                for g, s, a, e in itertools.product(range(2), range(4), range(2), range(n_e)):
                    if sub.expression is None:
                        text = caption(sub.text, kind, g, s, a, e - 1 if e else None)
                    else:
                        text = caption(sub.text, (), g, s, a)
                    if text not in rows:
                        rows[text] = len(texts)
                        texts.append(text)
                    index[o, k, g, s, a, e] = rows[text]
        return cls(texts, index, np.array([sub.expression is not None for sub in subs]))

    def counterfactuals(self) -> list[np.ndarray]:
        """Per caption row, the rows of the captions that name one of its named groups differently
        ("a female nurse" -> "a male nurse"; "a smiling nurse" -> "a sad nurse"): hard negatives."""
        out: list[set[int]] = [set() for _ in self.texts]
        n_groups = {"gender": 2, "skin": 4, "age": 2}
        axis = {"gender": 2, "skin": 3, "age": 4}
        for pos in itertools.product(*(range(n) for n in self.index.shape)):
            o, k, e = pos[0], pos[1], pos[5]
            if self.neutral_only[o]:
                continue
            row = int(self.index[pos])
            for attr in KINDS[k][0]:
                for other in range(n_groups[attr]):
                    if other != pos[axis[attr]]:
                        swapped = list(pos)
                        swapped[axis[attr]] = other
                        out[row].add(int(self.index[tuple(swapped)]))
            if e > 0:
                out[row].update(int(self.index[(*pos[:5], other)]) for other in range(1, self.index.shape[5])
                                if other != e)
        return [np.array(sorted(r), dtype=np.int64) for r in out]


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
                        neutral_share: float | None = None, balanced: np.ndarray | None = None,
                        expression_share: float = P_EXPRESSION) -> tuple[np.ndarray, np.ndarray]:
    """Caption rows for a batch of render indices (caption kind drawn per sample), and the render indices.

    `balanced`: indices of renders with uniform groups; a caption that names a group takes its
    image from them, so "a female construction worker" is learned from more than a handful of
    renders while neutral captions keep the skewed distribution.
    """
    kinds, empty = draw_kinds(len(idx), rng, neutral_share)
    kinds = np.where(table.neutral_only[rs.occupation[idx]], 0, kinds)
    if balanced is not None:
        named = (kinds > 0) & ~empty
        idx = np.where(named, balanced[rng.integers(0, len(balanced), len(idx))], idx)
    lab = {k: getattr(rs, k)[idx] for k in ("gender", "skin", "age")}
    if table.expressions:
        lab["expression"] = rs.expression[idx]
    return table.rows(rs.occupation[idx], kinds, lab, rng, empty, expression_share), idx


def sample_fresh_named(table: CaptionTable, rs: RenderSet, idx: np.ndarray, rng: np.random.Generator,
                       render_seed: int, neutral_share: float | None = None,
                       n_occupations: int | None = None,
                       expression_share: float = P_EXPRESSION) -> tuple[np.ndarray, np.ndarray]:
    """Caption rows and images for a batch in which every group-naming caption describes a fresh render.

    The fresh render keeps the sample's occupation, draws the named groups uniformly and the
    unnamed ones with the world's skew: "a female carpenter" is then as common as "a male
    carpenter" (the skewed renders hold almost no women in the trades), while "a dark-skinned
    carpenter" is still usually male and neutral captions keep the skewed images.
    """
    kinds, empty = draw_kinds(len(idx), rng, neutral_share)
    occ = rs.occupation[idx]
    kinds = np.where(table.neutral_only[occ], 0, kinds)
    named = (kinds > 0) & ~empty
    attrs = ("gender", "skin", "age") + (("expression",) if table.expressions else ())
    lab = {k: getattr(rs, k)[idx].copy() for k in attrs}
    fresh = attributes_given(occ[named], rng, n_occupations, expressions=table.expressions)
    for j, (attr, groups) in enumerate((("gender", GENDERS), ("skin", SKIN_GROUPS), ("age", AGE_GROUPS))):
        names = KIND_NAMES[kinds[named], j]
        fresh[attr] = np.where(names, rng.integers(0, len(groups), int(named.sum())), fresh[attr])
    for attr in attrs:
        lab[attr][named] = fresh[attr]
    images = rs.images[idx].copy()
    images[named] = render_labels(fresh, render_seed * 1_000_003 + np.flatnonzero(named))
    return table.rows(occ, kinds, lab, rng, empty, expression_share), images
