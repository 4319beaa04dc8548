"""`uce`: Unified Concept Editing's closed-form cross-attention edit, debiasing loop (weights level).

Source: Gandikota, Orgad, Belinkov, Materzynska, Bau, "Unified Concept Editing in Diffusion
Models", WACV 2024 (code: rohitgandikota/unified-concept-editing, train-scripts/train_debias.py).
Every cross-attention value projection W (keys too with edit_keys=true) is replaced by

  W = (lam W_old + e sum_E v*_i c_i^T + p sum_P W_old c_j c_j^T) (lam I + e sum_E c_i c_i^T + p sum_P c_j c_j^T)^-1

the minimiser of e sum ||W c_i - v*_i||^2 + p sum ||W c_j - W_old c_j||^2 + lam ||W - W_old||_F^2.
c_i: token states of the concept from its last word token on (aligned with the group texts);
v*_i = W_old c_i + sum_a alpha_a ||W_old c_i|| u_a, u_a the normalised W_old-projection of the
concept specialised to group a. alpha = step * (desired ratio - observed ratio), with the
observed ratios measured by generating `images_per_concept` images per concept and labelling
them with the run's own face detector and classifier; each round edits the current weights;
concepts within `tolerance` of the target join the preserved set (as in the published loop).
Concepts = the subjects of the prompts this run generates (UCE edits the concepts it debiases),
or of `concepts_suite` / `concepts_split` (e.g. edit for the test occupations, then measure the
edited model on explicit prompts). The edited projections are cached by everything that
determines them (arguments, concepts, sampling settings, seed, classifier, UNet weights), so a
second run with the same specification loads them instead of repeating the loop.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file
from tqdm.auto import tqdm

from fairbench import cache
from fairbench.errors import UserError
from fairbench.io import atomic_save_tensors, atomic_write_json
from fairbench.labels import label_batch
from fairbench.methods.base import Method, MethodContext
from fairbench.models.backend import DiffusersBackend
from fairbench.prompts import attribute, load_suite, parse_attributes, subject_of
from fairbench.registry import Count
from fairbench.units import unit_seed


def closed_form_edit(w_old: torch.Tensor, c_edit: torch.Tensor, v_edit: torch.Tensor, c_keep: torch.Tensor,
                     lam: float, erase_scale: float = 1.0, preserve_scale: float = 1.0) -> torch.Tensor:
    """UCE's W for rows c_edit (N x d_in) -> targets v_edit (N x d_out), preserving rows c_keep (float64)."""
    w, c, v, k = (t.double() for t in (w_old, c_edit, v_edit, c_keep))
    eye = torch.eye(w.shape[1], dtype=torch.float64)
    mat1 = lam * w + erase_scale * v.T @ c + preserve_scale * (w @ k.T) @ k
    mat2 = lam * eye + erase_scale * c.T @ c + preserve_scale * k.T @ k
    return torch.linalg.solve(mat2, mat1.T).T  # mat1 @ mat2^-1, mat2 symmetric


def debias_target(o: torch.Tensor, groups: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """v* = o + sum_a alpha_a ||o|| u_a / ||u_a||: o (T x d_out) projected concept, groups (A x T x d_out)."""
    norms = groups.flatten(1).norm(dim=1).clamp_min(1e-12)
    return o + o.norm() * (alpha / norms)[:, None, None].mul(groups).sum(dim=0)


def cross_attention_projections(unet: torch.nn.Module, keys: bool = False) -> list[torch.nn.Linear]:
    """The to_v (and to_k) projections of every cross-attention layer, in module order."""
    attns = [m for m in unet.modules() if getattr(m, "is_cross_attention", False)]
    if not attns:
        raise UserError("the model's UNet has no cross-attention layers for UCE to edit")
    return [a.to_v for a in attns] + ([a.to_k for a in attns] if keys else [])


class UCE(Method):
    """Closed-form debiasing edit of the cross-attention projections, iterated against measured ratios."""

    level = "weights"
    architectures = ("sd", "sdxl")
    source = "Gandikota et al., Unified Concept Editing (WACV 2024; rohitgandikota/unified-concept-editing)"

    def __init__(self, attributes: str = "gender", lam: float = 0.5, erase_scale: float = 1.0,
                 preserve_scale: float = 1.0, max_iterations: Count = 30, tolerance: float = 0.05,
                 weight_step: float = 0.1, images_per_concept: Count = 10, edit_keys: bool = False,
                 edit_text: str = "prompt", concepts_suite: str | None = None, concepts_split: str = "test",
                 cache: bool = True) -> None:
        super().__init__()
        if edit_text not in ("prompt", "subject"):
            raise UserError("uce edit_text must be 'prompt' (the suite's prompt) or 'subject' (the bare word)")
        self.attributes = parse_attributes(attributes)
        self.lam, self.erase, self.preserve = float(lam), float(erase_scale), float(preserve_scale)
        self.max_iterations, self.tolerance, self.step = int(max_iterations), float(tolerance), float(weight_step)
        self.n_images, self.keys, self.edit_text = int(images_per_concept), bool(edit_keys), edit_text
        self.args: dict[str, Any] = {"attributes": self.attributes, "lam": self.lam, "erase_scale": self.erase,
                                     "preserve_scale": self.preserve, "max_iterations": self.max_iterations,
                                     "tolerance": self.tolerance, "weight_step": self.step,
                                     "images_per_concept": self.n_images, "edit_keys": self.keys,
                                     "edit_text": edit_text, "concepts_suite": concepts_suite,
                                     "concepts_split": concepts_split if concepts_suite else None}
        self.concepts_suite, self.concepts_split, self.cache = concepts_suite, concepts_split, bool(cache)
        self.context: MethodContext | None = None

    def prepare(self, backend: DiffusersBackend, suite: Any, context: MethodContext | None = None) -> None:
        """Keep the run context: the loop needs its prompts, sampling settings and labellers."""
        if context is None or context.classifier is None or context.detector is None:
            raise UserError("uce measures group ratios with the run's detector and classifier; none were given")
        missing = [a for a in self.attributes if a not in context.classifier.specs()]
        if missing:
            raise UserError(f"classifier {context.classifier.name!r} does not predict {', '.join(missing)}")
        if self.concepts_suite:
            context = MethodContext(load_suite(self.concepts_suite), self.concepts_split, None, context.params,
                                    context.detector, context.classifier, context.seed, context.batch_size,
                                    context.progress)
            if not context.prompts():
                raise UserError(f"suite {self.concepts_suite!r} has no {self.concepts_split!r} prompts to debias")
        self.context = context

    # texts -----------------------------------------------------------------------------------
    def concept_texts(self) -> tuple[list[str], list[str], list[list[str]]]:
        """(prompt ids, concept texts, per concept the texts naming each group of each attribute)."""
        ctx = self.context
        assert ctx is not None
        ids, concepts, groups = [], [], []
        for p in ctx.prompts():
            subject = subject_of(ctx.suite, p)
            adjs = [g.adjective for a in self.attributes for g in attribute(a).groups]
            ids.append(p.id)
            if self.edit_text == "prompt":
                concepts.append(ctx.suite.text(p))
                groups.append([ctx.suite.group_text(p, adj) for adj in adjs])
            else:
                concepts.append(subject)
                groups.append([f"{adj} {subject}" for adj in adjs])
        return ids, concepts, groups

    # measurement -----------------------------------------------------------------------------
    @torch.no_grad()
    def measure(self, backend: DiffusersBackend, prompts: dict[str, str], round_: int) -> dict[str, np.ndarray]:
        """Observed group shares per concept (faces only), concatenated over attributes."""
        ctx = self.context
        assert ctx is not None and ctx.params is not None
        units = [(pid, text, unit_seed(ctx.seed, f"uce:{round_}:{pid}", k))
                 for pid, text in prompts.items() for k in range(self.n_images)]
        counts = {pid: [np.zeros(attribute(a).k) for a in self.attributes] for pid in prompts}
        for start in range(0, len(units), ctx.batch_size):
            chunk = units[start : start + ctx.batch_size]
            cond = backend.encode([t for _, t, _ in chunk], ctx.params.negative_prompt, ctx.params.guidance_scale)
            gens = [torch.Generator("cpu").manual_seed(s) for _, _, s in chunk]
            images, _ = backend.generate(cond, gens, ctx.params)
            for (pid, _, _), rec in zip(chunk, label_batch(images, ctx.detector, ctx.classifier,
                                                           ctx.classifier.crop_margin)):
                if rec["face"]:
                    for j, a in enumerate(self.attributes):
                        counts[pid][j][attribute(a).group_names.index(rec[a])] += 1
        return {pid: np.concatenate([c / max(c.sum(), 1) if c.sum() else np.full(len(c), 1 / len(c)) for c in cs])
                for pid, cs in counts.items()}

    # edit --------------------------------------------------------------------------------------
    @torch.no_grad()
    def edit(self, backend: DiffusersBackend, concepts: list[str], groups: list[list[str]], alphas: list[np.ndarray],
             keep: list[str]) -> None:
        """One closed-form edit of every projection from its current weights."""
        length = None
        c_rows, slices = [], []
        for text, gtexts, alpha in zip(concepts, groups, alphas):
            if not np.any(alpha):
                continue
            emb = backend.encode([text] + gtexts, guidance_scale=0.0).prompt_embeds.float().cpu()
            length = emb.shape[1]
            finals = [n - 2 for n in backend.token_lengths([text] + gtexts, length)]  # last word token
            far = max(finals)
            sl = [emb[i, f : length - (far - f)] for i, f in enumerate(finals)]
            c_rows.append(sl[0])
            slices.append((sl[0], torch.stack(sl[1:]), torch.as_tensor(alpha, dtype=torch.float32)))
        if not slices:
            return
        keep_emb = backend.encode(keep, guidance_scale=0.0).prompt_embeds.float().cpu().flatten(0, 1)
        c_edit = torch.cat(c_rows)
        for layer in cross_attention_projections(backend.unet, self.keys):
            w = layer.weight.detach().float().cpu()
            v_edit = torch.cat([debias_target(c @ w.T, g @ w.T, a) for c, g, a in slices])
            new = closed_form_edit(w, c_edit, v_edit, keep_emb, self.lam, self.erase, self.preserve)
            layer.weight.copy_(new.to(layer.weight.dtype).to(layer.weight.device))

    def desired(self) -> np.ndarray:
        """Uniform target shares, concatenated over attributes."""
        return np.concatenate([np.full(attribute(a).k, 1 / attribute(a).k) for a in self.attributes])

    def cache_path(self, backend: DiffusersBackend) -> Any:
        """Cache folder keyed by everything that determines the edit."""
        ctx = self.context
        assert ctx is not None and ctx.params is not None
        h = hashlib.sha256()
        for name, t in sorted(backend.unet.state_dict().items()):
            if "attn2.to_" in name:
                h.update(name.encode() + t.detach().cpu().float().numpy().tobytes())
        spec = {k: v for k, v in self.args.items() if k != "history"}
        return cache.folder("uce", {"args": spec, "concepts": self.concept_texts(), "params": ctx.params.to_dict(),
                                    "seed": ctx.seed, "batch_size": ctx.batch_size, "classifier": ctx.classifier.name,
                                    "model": backend.source, "unet": h.hexdigest()})

    def apply_to_model(self, backend: DiffusersBackend) -> None:
        """The published loop (or its cached result): measure, stop within tolerance, else edit and repeat."""
        if self.context is None:
            raise RuntimeError("UCE.prepare() must run before apply_to_model()")
        layers = cross_attention_projections(backend.unet, self.keys)
        path = self.cache_path(backend) if self.cache else None
        if path is not None and (path / "uce.json").is_file():  # written last: the edit is complete
            saved = load_file(path / "projections.safetensors")
            with torch.no_grad():
                for i, layer in enumerate(layers):
                    layer.weight.copy_(saved[f"{i}"].to(layer.weight))
            self.args["history"] = json.loads((path / "uce.json").read_text())["args"]["history"]
            self.args["loaded_from_cache"] = str(path)
            return
        self.run_loop(backend)
        if path is not None:
            atomic_save_tensors(path / "projections.safetensors", {f"{i}": layer.weight for i, layer in enumerate(layers)})
            atomic_write_json(path / "uce.json", {"args": self.args, "concepts": self.concept_texts()[1]})

    def run_loop(self, backend: DiffusersBackend) -> None:
        """Measure, stop when every gap is within tolerance, else edit and repeat (up to max_iterations)."""
        ids, concepts, groups = self.concept_texts()
        text_of = dict(zip(ids, concepts))
        target = self.desired()
        keep = [""]
        ratios = self.measure(backend, text_of, 0)
        history = [{"round": 0, "mean_gap": float(np.mean([np.abs(r - target).max() for r in ratios.values()]))}]
        bar = tqdm(range(1, self.max_iterations + 1), desc="uce", unit="round", disable=not self.context.progress)
        for round_ in bar:
            gaps = {pid: float(np.abs(ratios[pid] - target).max()) for pid in ids}
            if max(gaps.values()) < self.tolerance:
                break
            alphas = [self.step * (target - ratios[pid]) if gaps[pid] > self.tolerance else np.zeros_like(target)
                      for pid in ids]
            keep = sorted(set(keep) | {text_of[pid] for pid in ids if gaps[pid] <= self.tolerance})
            self.edit(backend, concepts, groups, alphas, keep)
            pending = {pid: text_of[pid] for pid in ids if gaps[pid] > self.tolerance}
            ratios.update(self.measure(backend, pending, round_))
            history.append({"round": round_, "edited": len(pending),
                            "mean_gap": float(np.mean([np.abs(ratios[p] - target).max() for p in ids]))})
            bar.set_postfix(mean_gap=f"{history[-1]['mean_gap']:.3f}")
        self.args["history"] = history
