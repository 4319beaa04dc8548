"""synthface training captions: the SD-1.5-like skew of what the captions say about the renders.

Captions: 10 % empty (for classifier-free guidance), 50 % neutral ("a photo of the face of a
nurse"), 40 % naming one to three of the rendered attributes with the group words of
prompts/attributes.yaml ("a photo of the face of an old female dark-skinned nurse"), so the
model also learns attribute control. The renders they describe come from the world's population
(fairbench/synthface/population.py).

The labelled-expression data (`expressions=True`, the vision-language world's) adds captions that
name the render's expression 30 % of the time ("a photo of the face of a smiling nurse").
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from fairbench.prompts import attribute, render_template
from fairbench.synthface.population import RenderSet, attributes_given, render_labels, subjects
from fairbench.synthface.render import AGE_GROUPS, EXPRESSIONS, GENDERS, SKIN_GROUPS

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
