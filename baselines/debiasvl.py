"""`debiasvl`: Debiasing-VL's calibrated projection on every conditioning token (embedding level).

Source: Chuang, Jampani, Li, Torralba, Jegelka, "Debiasing Vision-Language Models via Biased
Prompts", 2023 (code: chingyaoc/debias_vl). Closed form, no training:
  z_i = L2-normalised end-of-text state of "A photo of a {group word} {subject}." over the
        training subjects; S = every pair of groups of a subject;
  M   = (1/|S|) sum_(i,j) in S (z_i - z_j)(z_i - z_j)^T;   P = (lambda M + I)^-1, lambda = 500;
  E  <- E P^T for every token state of the prompt (the negative prompt is left alone).

SDXL: the token states are both encoders' states concatenated, so P (computed in that space) acts
on both. The pooled embedding is text_encoder_2's projected end-of-text embedding, the very space
the published method projects in (CLIP's text embedding), so it gets its own P, computed the same
way from the pooled embeddings of the same texts.
"""

from __future__ import annotations

import itertools
from dataclasses import replace
from typing import Any

import torch

from fairbench.errors import UserError
from fairbench.methods.base import Method, MethodContext
from fairbench.models.backend import Conditioning, DiffusersBackend
from fairbench.prompts import attribute, load_suite, parse_attributes, render_template, subject_of
from fairbench.units import WorkUnit

TEMPLATE = "A photo of a {group} {subject}."


def calibrated_projection(diffs: torch.Tensor, lam: float) -> torch.Tensor:
    """P = (lam * mean_s d_s d_s^T + I)^-1 for pair differences d_s (S x D), in float64."""
    d = diffs.double()
    m = d.T @ d / d.shape[0]
    return torch.linalg.inv(lam * m + torch.eye(d.shape[1], dtype=torch.float64))


def end_token_states(backend: DiffusersBackend, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """L2-normalised conditioning state at each text's end-of-text token (N x D), and the L2-normalised
    pooled embedding (N x D_pooled) where the pipeline has one (SDXL), else None."""
    cond = backend.encode(texts, guidance_scale=0.0)
    pe = cond.prompt_embeds.float().cpu()
    ends = [n - 1 for n in backend.token_lengths(texts, pe.shape[1])]
    z = pe[torch.arange(len(texts)), ends]
    pooled = torch.nn.functional.normalize(cond.pooled.float().cpu(), dim=-1) if cond.pooled is not None else None
    return torch.nn.functional.normalize(z, dim=-1), pooled


class DebiasVL(Method):
    """Project the group directions out of every prompt token state (softly, by lambda)."""

    level = "embedding"
    architectures = ("sd", "sdxl")
    source = "Chuang et al., Debiasing Vision-Language Models via Biased Prompts (2023; chingyaoc/debias_vl)"

    def __init__(self, attributes: str = "gender", lam: float = 500.0, train_suite: str = "occupations",
                 split: str = "train", template: str = TEMPLATE) -> None:
        super().__init__()
        self.attributes = parse_attributes(attributes)
        self.lam, self.train_suite, self.split, self.template = float(lam), train_suite, split, template
        self.args: dict[str, Any] = {"attributes": self.attributes, "lam": self.lam, "train_suite": train_suite,
                                     "split": split, "template": template}
        self.projection: torch.Tensor | None = None
        self.pooled_projection: torch.Tensor | None = None

    def pair_differences(self, backend: DiffusersBackend) -> tuple[torch.Tensor, torch.Tensor | None]:
        """z_i - z_j over every subject of the training split and every pair of groups of each attribute
        (token states, and pooled embeddings where the pipeline has them)."""
        suite = load_suite(self.train_suite)
        prompts = suite.select(self.split)  # type: ignore[arg-type]
        if not prompts:
            raise UserError(f"suite {suite.name!r} has no {self.split!r} prompts for Debiasing-VL's directions")
        subjects = [subject_of(suite, p) for p in prompts]
        diffs: list[torch.Tensor] = []
        pooled_diffs: list[torch.Tensor] = []
        for a in self.attributes:
            words = [g.adjective for g in attribute(a).groups]
            texts = [render_template(self.template, group=w, subject=s) for s in subjects for w in words]
            z, zp = end_token_states(backend, texts)
            z = z.view(len(subjects), len(words), -1)
            for i, j in itertools.combinations(range(len(words)), 2):
                diffs.append(z[:, i] - z[:, j])
                if zp is not None:
                    zp3 = zp.view(len(subjects), len(words), -1)
                    pooled_diffs.append(zp3[:, i] - zp3[:, j])
        return torch.cat(diffs), torch.cat(pooled_diffs) if pooled_diffs else None

    def prepare(self, backend: DiffusersBackend, suite: Any, context: MethodContext | None = None) -> None:
        """Compute P once from the training subjects (and P_pooled where there is a pooled embedding)."""
        diffs, pooled = self.pair_differences(backend)
        self.projection = calibrated_projection(diffs, self.lam).float()
        if pooled is not None:
            self.pooled_projection = calibrated_projection(pooled, self.lam).float()

    @torch.no_grad()
    def transform_conditioning(self, cond: Conditioning, units: list[WorkUnit], texts: list[str]) -> Conditioning:
        """E <- E P^T on the prompt token states (and the pooled embedding by its own P)."""
        if self.projection is None:
            raise RuntimeError("DebiasVL.prepare() must run before generation")
        pe = cond.prompt_embeds
        out = replace(cond, prompt_embeds=(pe.float() @ self.projection.to(pe.device).T).to(pe.dtype))
        if cond.pooled is not None and self.pooled_projection is not None:
            pp = cond.pooled
            out.pooled = (pp.float() @ self.pooled_projection.to(pp.device).T).to(pp.dtype)
        return out
