"""`fairimagen`: FairPCA projection of the prompt embedding plus empirical noise (embedding level).

Source: Fu et al., "FairImagen: Post-Processing for Bias Mitigation in Text-to-Image Models",
NeurIPS 2025 (code: fuzihaofzh/FairImagen, src/fair_PCA.py and src/fairpca_processor.py).
Closed form, no training:
  X   = embeddings of group-labelled prompts (N x D), Z = one-hot group labels (N x G);
  n_g = row g of (Z - mean Z)^T X, L2-normalised: the group directions;
  R   = an orthonormal basis of the null space of (Z - mean Z)^T X (D x (D - rank));
  V   = the top `hdim` eigenvectors of R^T X^T X R (uncentred PCA inside the null space);
  E  <- E W W^T with W = R V, for every token state of the prompt (the negative prompt is left alone);
  then the empirical noise ("enoise"): per image a group g drawn uniformly and one of its training
  embeddings x drawn uniformly; E <- E + noise^2 * <n_g, x> n_g on every token. The authors' code
  multiplies by the scale twice (`delta = scale * ...; transformed += scale * delta`); the noise
  parameter keeps their meaning (README: enoise=0.6), so the step is 0.36 <n_g, x> n_g.
Several attributes: one FairPCA over the cross product of their groups (the authors' `cross` mode,
the only multi-attribute mode their noise supports): group (g_1, g_2) holds the embeddings of g_1's
prompts and of g_2's prompts.

Unpublished details or ones that differ between the authors' pipelines, each a parameter:
  - the group-labelled prompts (`template`): the authors use their own lists ("An image of a teenage
    Caucasian male plumber."); here "A photo of a {group} {subject}." over the training subjects;
  - the embedding fitted (`features`): the authors fit on the pipeline's pooled embedding and, on
    pipelines without one, on the mean of the token states; SD 1.x and the embedded worlds have no
    pooled embedding, so the token states' mean is fitted, and the projection acts in that space;
    on SDXL the pooled embedding gets its own FairPCA, fitted on the pooled embeddings;
  - `keep`: hdim as a fraction of the width D (the README's 1800 of SD3's 2048); `hdim` overrides;
  - the noise draw is per image from its own seed; the authors draw once per process and reuse
    the draws for every prompt (the same distribution for each image).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import scipy.linalg
import torch

from fairbench.errors import UserError
from fairbench.methods.base import Method, MethodContext
from fairbench.models.backend import Conditioning, DiffusersBackend
from fairbench.prompts import attribute, load_suite, parse_attributes, render_template, subject_of
from fairbench.units import WorkUnit

TEMPLATE = "A photo of a {group} {subject}."
KEEP = 1800 / 2048  # README: hdim=1800 on SD3's 2048-wide pooled embedding
NOISE = 0.6  # README: enoise=0.6
ENCODE_BATCH = 64


@dataclass(frozen=True)
class FairPCA:
    """A fitted FairPCA in one embedding space: the projection W W^T, the group directions and, per
    group, the training embeddings' coordinates along that group's direction (the noise's source)."""

    projection: torch.Tensor  # D x D
    directions: torch.Tensor  # G x D, unit rows
    coordinates: tuple[np.ndarray, ...]  # per group g: <n_g, x> over g's training embeddings

    def apply(self, e: torch.Tensor, noise: torch.Tensor | None) -> torch.Tensor:
        """E W W^T, plus each row's noise vector (B x D) on every token where given."""
        out = e.float() @ self.projection.to(e.device)
        if noise is not None:
            out = out + (noise.to(e.device)[:, None, :] if out.dim() == 3 else noise.to(e.device))
        return out.to(e.dtype)


def fair_pca(x: np.ndarray, labels: np.ndarray, hdim: int) -> tuple[np.ndarray, np.ndarray]:
    """(W W^T (D x D), group directions (G x D)) of FairPCA fitted on rows `x` with group `labels`."""
    x = np.asarray(x, dtype=np.float64)
    z = np.eye(int(labels.max()) + 1)[labels]
    zx = (z - z.mean(axis=0)).T @ x
    directions = zx / np.linalg.norm(zx, axis=1, keepdims=True)
    r = scipy.linalg.null_space(zx)
    h = r.T @ x.T @ x @ r
    m = h.shape[0]
    _, v = scipy.linalg.eigh(h, subset_by_index=[max(0, m - hdim), m - 1])
    w = r @ v
    return w @ w.T, directions


def fit(groups: list[np.ndarray], hdim: int | None, keep: float) -> FairPCA:
    """FairPCA over groups of embeddings (each N_g x D)."""
    x = np.concatenate(groups)
    labels = np.repeat(np.arange(len(groups)), [len(g) for g in groups])
    width = x.shape[1]
    dim = hdim if hdim is not None else max(1, round(keep * width))
    if not 0 < dim <= width:
        raise UserError(f"fairimagen: hdim must be in 1..{width} for this model's embedding width; got {dim}")
    projection, directions = fair_pca(x, labels, dim)
    coordinates = tuple(np.asarray(g, dtype=np.float64) @ directions[i] for i, g in enumerate(groups))
    return FairPCA(torch.from_numpy(projection).float(), torch.from_numpy(directions).float(), coordinates)


def noise_draw(seed: int, sizes: list[int]) -> tuple[int, int]:
    """(group, training embedding) of one image's noise, from the image seed."""
    rng = np.random.default_rng([seed, 0x46494D47])
    g = int(rng.integers(len(sizes)))
    return g, int(rng.integers(sizes[g]))


def cross_groups(per_attribute: list[list[np.ndarray]]) -> list[np.ndarray]:
    """The authors' cross mode: one group per combination, holding each member group's embeddings."""
    return [np.concatenate(combo) for combo in itertools.product(*per_attribute)]


class FairImagen(Method):
    """Project group information out of the prompt embedding (FairPCA) and add empirical group noise."""

    level = "embedding"
    architectures = ("sd", "sdxl")
    source = "Fu et al., FairImagen: Post-Processing for Bias Mitigation in Text-to-Image Models (NeurIPS 2025; fuzihaofzh/FairImagen)"

    def __init__(self, attributes: str = "gender", noise: float = NOISE, keep: float = KEEP, hdim: int | None = None,
                 train_suite: str = "occupations", split: str = "train", template: str = TEMPLATE) -> None:
        super().__init__()
        self.attributes = parse_attributes(attributes)
        if not 0 < float(keep) <= 1:
            raise UserError(f"fairimagen: keep must be in (0, 1]; got {keep}")
        if float(noise) < 0:
            raise UserError(f"fairimagen: noise must be >= 0; got {noise}")
        self.noise, self.keep = float(noise), float(keep)
        self.hdim = None if hdim is None else int(hdim)
        self.train_suite, self.split, self.template = train_suite, split, template
        self.args: dict[str, Any] = {"attributes": self.attributes, "noise": self.noise, "keep": self.keep,
                                     "hdim": self.hdim, "train_suite": train_suite, "split": split, "template": template}
        self.tokens: FairPCA | None = None
        self.pooled: FairPCA | None = None

    def group_embeddings(self, backend: DiffusersBackend) -> tuple[list[list[np.ndarray]], list[list[np.ndarray]] | None]:
        """Per attribute and group, the token-state means (and pooled embeddings, SDXL) of its prompts."""
        suite = load_suite(self.train_suite)
        prompts = suite.select(self.split)  # type: ignore[arg-type]
        if not prompts:
            raise UserError(f"suite {suite.name!r} has no {self.split!r} prompts for FairImagen's group prompts")
        subjects = [subject_of(suite, p) for p in prompts]
        tokens: list[list[np.ndarray]] = []
        pooled: list[list[np.ndarray]] = []
        for a in self.attributes:
            tokens.append([])
            pooled.append([])
            for group in attribute(a).groups:
                texts = [render_template(self.template, group=group.adjective, subject=s) for s in subjects]
                t, p = self._encode(backend, texts)
                tokens[-1].append(t)
                if p is not None:
                    pooled[-1].append(p)
        return tokens, (pooled if pooled[0] else None)

    @staticmethod
    def _encode(backend: DiffusersBackend, texts: list[str]) -> tuple[np.ndarray, np.ndarray | None]:
        means, pooled = [], []
        for i in range(0, len(texts), ENCODE_BATCH):
            cond = backend.encode(texts[i: i + ENCODE_BATCH], guidance_scale=0.0)
            means.append(cond.prompt_embeds.float().mean(dim=1).cpu().numpy())
            if cond.pooled is not None:
                pooled.append(cond.pooled.float().cpu().numpy())
        return np.concatenate(means), (np.concatenate(pooled) if pooled else None)

    def prepare(self, backend: DiffusersBackend, suite: Any, context: MethodContext | None = None) -> None:
        """Fit the FairPCA of the token states (and of the pooled embedding on SDXL), once."""
        tokens, pooled = self.group_embeddings(backend)
        self.tokens = fit(cross_groups(tokens), self.hdim, self.keep)
        self.pooled = fit(cross_groups(pooled), self.hdim, self.keep) if pooled is not None else None

    def _noise(self, pca: FairPCA, draws: list[tuple[int, int]]) -> torch.Tensor | None:
        if self.noise == 0:
            return None
        coords = torch.tensor([pca.coordinates[g][i] for g, i in draws], dtype=torch.float32)
        return self.noise ** 2 * coords[:, None] * pca.directions[[g for g, _ in draws]]

    @torch.no_grad()
    def transform_conditioning(self, cond: Conditioning, units: list[WorkUnit], texts: list[str]) -> Conditioning:
        """E <- E W W^T + noise^2 <n_g, x> n_g on the prompt's token states (and its pooled embedding)."""
        if self.tokens is None:
            raise RuntimeError("FairImagen.prepare() must run before generation")
        if len(units) != len(cond):
            raise RuntimeError(f"fairimagen needs one unit per conditioning row ({len(units)} for {len(cond)})")
        sizes = [len(c) for c in self.tokens.coordinates]
        draws = [noise_draw(u.seed, sizes) for u in units] if self.noise else []
        out = replace(cond, prompt_embeds=self.tokens.apply(cond.prompt_embeds, self._noise(self.tokens, draws)))
        if cond.pooled is not None and self.pooled is not None:
            out.pooled = self.pooled.apply(cond.pooled, self._noise(self.pooled, draws))
        return out
