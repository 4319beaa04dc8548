"""`fairdiffusion`: Fair Diffusion's semantic guidance with a random direction per image (guidance level).

Source: Friedrich, Brack, Struppek, Hintersdorf, Schramowski, Luccioni, Kersting, "Fair
Diffusion: Instructing Text-to-Image Generation Models on Fairness", 2023 (code:
ml-research/Fair-Diffusion, built on SEGA; the same guidance as diffusers'
SemanticStableDiffusionPipeline, whose arithmetic `sega_guidance` follows term by term).
Per step, with CFG on:
  eps = eps_u + s_g (eps_p - eps_u) + sum_c mu_c psi_c (+ momentum),  psi_c = +/- s_e (eps_c - eps_u)
mu_c keeps the entries of |psi_c| at or above the `edit_threshold` quantile (per image and
channel); momentum nu <- beta nu + (1 - beta) g. Edit guidance joins after `edit_warmup_steps`.
Each image draws a target group per attribute (uniformly, from its own seed): that group's
editing prompt is added, the others' are reversed ("male person" / "female person" for gender).
The published recipe is binary. `reverse` says which non-target groups are reversed: "binary"
(default) the other group of a two-group attribute, as published, and none of an attribute with
more groups, whose target is only added; "all" every other group; "none" no group
(docs/baselines.md has the measured difference).

The loop is the pipeline's own: the UNet's forward is wrapped for the duration of a batch so
that the pipeline's classifier-free-guidance combination yields the edited prediction; with
edit_guidance_scale = 0 images equal vanilla's exactly.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from fairbench.errors import UserError
from fairbench.methods.base import Method, MethodContext, step_index
from fairbench.models.backend import Conditioning, DiffusersBackend, SamplingParams
from fairbench.prompts import attribute, parse_attributes, render_template
from fairbench.units import WorkUnit


def sega_guidance(eps_uncond: torch.Tensor, eps_text: torch.Tensor, eps_edit: torch.Tensor, signs: torch.Tensor,
                  momentum: torch.Tensor, guidance_scale: float, edit_scale: float, threshold: float,
                  momentum_scale: float, momentum_beta: float, warm: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """One step of SEGA guidance: (guided noise prediction, new momentum).

    eps_uncond, eps_text: (B, C, H, W); eps_edit: (E, B, C, H, W); signs: (E, B), +1 adds an
    editing concept, -1 reverses it; momentum: (B, C, H, W).
    """
    guidance = guidance_scale * (eps_text - eps_uncond)
    psi = signs[:, :, None, None, None] * edit_scale * (eps_edit - eps_uncond.unsqueeze(0))
    q = torch.quantile(psi.abs().flatten(start_dim=3).float(), threshold, dim=3).to(psi.dtype)
    psi = torch.where(psi.abs() >= q[..., None, None], psi, torch.zeros_like(psi))
    edit = psi.sum(dim=0) + momentum_scale * momentum
    momentum = momentum_beta * momentum + (1 - momentum_beta) * edit
    if warm:
        guidance = guidance + edit
    return eps_uncond + guidance, momentum


REVERSE_MODES = ("binary", "all", "none")


def edit_signs(seeds: list[int], sizes: list[int], reverse: str = "binary") -> torch.Tensor:
    """(sum(sizes), B) signs: per image and attribute one target group (+1), the others reversed (-1) or left out (0)."""
    cols = []
    for seed in seeds:
        rng = np.random.default_rng([seed, 0x4644])
        col = []
        for k in sizes:
            target = int(rng.integers(k))
            other = -1.0 if reverse == "all" or (reverse == "binary" and k == 2) else 0.0
            col += [1.0 if g == target else other for g in range(k)]
        cols.append(col)
    return torch.tensor(cols).T


class FairDiffusion(Method):
    """SEGA guidance towards a uniformly drawn group per image."""

    level = "guidance"
    architectures = ("sd", "sdxl")
    source = "Friedrich et al., Fair Diffusion (2023; ml-research/Fair-Diffusion, SEGA guidance)"

    def __init__(self, attributes: str = "gender", edit_guidance_scale: float = 4.0, edit_warmup_steps: int = 5,
                 edit_threshold: float = 0.95, edit_momentum_scale: float = 0.5, edit_mom_beta: float = 0.6,
                 edit_template: str = "{group} person", reverse: str = "binary") -> None:
        super().__init__()
        self.attributes = parse_attributes(attributes)
        self.edit_scale, self.warmup = float(edit_guidance_scale), int(edit_warmup_steps)
        self.threshold, self.mom_scale, self.mom_beta = float(edit_threshold), float(edit_momentum_scale), float(edit_mom_beta)
        self.edit_texts = [render_template(edit_template, group=g.adjective)
                           for a in self.attributes for g in attribute(a).groups]
        self.sizes = [attribute(a).k for a in self.attributes]
        if reverse not in REVERSE_MODES:
            raise UserError(f"fairdiffusion: reverse must be one of {', '.join(REVERSE_MODES)}, got {reverse!r}")
        self.reverse = reverse
        self.args: dict[str, Any] = {"attributes": self.attributes, "edit_guidance_scale": self.edit_scale,
                                     "edit_warmup_steps": self.warmup, "edit_threshold": self.threshold,
                                     "edit_momentum_scale": self.mom_scale, "edit_mom_beta": self.mom_beta,
                                     "editing_prompts": self.edit_texts, "reverse": reverse}
        self.edit_embeds: torch.Tensor | None = None
        self.edit_pooled: torch.Tensor | None = None  # SDXL: the editing prompts' pooled embeddings

    def prepare(self, backend: DiffusersBackend, suite: Any, context: MethodContext | None = None) -> None:
        """Encode the editing prompts once."""
        if context is not None and context.params is not None and context.params.guidance_scale <= 1.0:
            raise UserError("fairdiffusion needs classifier-free guidance (--guidance-scale > 1)")
        edits = backend.encode(self.edit_texts, guidance_scale=0.0)
        self.edit_embeds, self.edit_pooled = edits.prompt_embeds, edits.pooled

    def generate(self, backend: DiffusersBackend, cond: Conditioning, generators: list[torch.Generator],
                 params: SamplingParams, units: list[WorkUnit]) -> tuple[list[Any], list[bool]]:
        """The pipeline's own loop, with the UNet's prediction replaced by the SEGA-guided one."""
        if self.edit_embeds is None:
            raise RuntimeError("FairDiffusion.prepare() must run before generation")
        if params.guidance_scale <= 1.0:
            raise UserError("fairdiffusion needs classifier-free guidance (--guidance-scale > 1)")
        unet, scheduler = backend.unet, backend.pipe.scheduler
        original = unet.forward
        signs = edit_signs([u.seed for u in units], self.sizes, self.reverse)
        state: dict[str, torch.Tensor] = {}
        edit_embeds, edit_pooled = self.edit_embeds, self.edit_pooled

        def forward(sample: torch.Tensor, timestep: Any, encoder_hidden_states: torch.Tensor, *args: Any, **kwargs: Any):
            out = original(sample, timestep, encoder_hidden_states, *args, **kwargs)
            pred = out[0] if isinstance(out, tuple) else out.sample
            b = sample.shape[0] // 2
            e = edit_embeds.to(device=sample.device, dtype=encoder_hidden_states.dtype)
            x = sample[b:].repeat(e.shape[0], *[1] * (sample.dim() - 1))
            ctx = e.repeat_interleave(b, dim=0)
            edit_kwargs = dict(kwargs)
            added = kwargs.get("added_cond_kwargs")
            if added:  # SDXL: each editing prompt brings its pooled embedding; the image's time ids stay
                edit_kwargs["added_cond_kwargs"] = {
                    "text_embeds": edit_pooled.to(sample.device, added["text_embeds"].dtype).repeat_interleave(b, 0),
                    "time_ids": added["time_ids"][b:].repeat(e.shape[0], 1)}
            eps_edit = original(x, timestep, ctx, *args, **edit_kwargs)
            eps_edit = (eps_edit[0] if isinstance(eps_edit, tuple) else eps_edit.sample).view(e.shape[0], b, *pred.shape[1:])
            u, c = pred[:b], pred[b:]
            step = step_index(scheduler, timestep)
            mom = state.get("momentum", torch.zeros_like(u))
            guided, state["momentum"] = sega_guidance(u, c, eps_edit, signs.to(u.device, u.dtype), mom,
                                                      params.guidance_scale, self.edit_scale, self.threshold,
                                                      self.mom_scale, self.mom_beta, step >= self.warmup)
            # the pipeline computes u + s_g (c' - u); choose c' so that this equals the guided prediction
            new = torch.cat([u, u + (guided - u) / params.guidance_scale])
            if isinstance(out, tuple):
                return (new,)
            out.sample = new
            return out

        unet.forward = forward
        try:
            return backend.generate(cond, generators, params)
        finally:
            del unet.forward
