"""`balancingact`: distribution guidance on the denoiser's h-space (guidance level).

Source: Parihar, Bhat, Basu, Mallick, Kundu, Babu, "Balancing Act: Distribution-Guided Debiasing in
Diffusion Models", CVPR 2024 (code: rishubhpar/debiasing_gen_models; its Stable Diffusion form:
diffusers/models/unet_2d_condition.py and helper_hclassify.py). As published for Stable Diffusion:
  h      = the UNet's mid-block output (its "h-space"), at every denoising step;
  heads  = one linear classifier per sampling step on the flattened h (`CustomMLP`: one nn.Linear
           per timestep), trained on h of images whose attribute is known;
  p_bar  = the batch mean of softmax(head_t(h) / temperature), temperature 8;
  loss   = loss_strength * KL(p_bar || target), target uniform;
  h     <- h - scaling_strength * d loss / d h, then the up-blocks continue from the guided h
           (loss_strength 500, scaling_strength 600 in run_stable_diffusion.py, set for a batch of 4).
The guidance acts on every row the UNet sees, the unconditional half of classifier-free guidance
included, as the published forward does.

Unpublished details, each a parameter with its default:
  - training data (`train_images` per training prompt, 8; the training split of `train_suite`):
    the SD heads' data are not published (the DDIM version trains on 1,000-2,000 labelled images
    per class); here the heads learn from generations of the run's own model and sampling settings,
    the h of each image's conditional row at every step, each image labelled by a zero-shot CLIP
    on the whole image (`labeller_model`, "auto": the CLIP the pipeline names as its own, synthclip on
    the embedded worlds; CLIP ViT-L/14 elsewhere); never by the run's own classifier, which scores
    the benchmark;
  - head training: full-batch Adam, `head_lr` 1e-3, `head_epochs` 100, from zero weights;
  - the distribution is taken over each prompt's images within a batch (the authors generate one
    prompt per batch), so an image depends on the others of its prompt in its batch, by design;
  - several attributes: one set of heads per attribute, their losses summed.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import torch
from torch import nn

from fairbench.baselines.hspace import cache_folder, generate_guided, generations_with_h, training_units
from fairbench.errors import UserError
from fairbench.io import atomic_save_tensors, atomic_write_json, load_safetensors_file
from fairbench.methods.base import Method, MethodContext, own_clip
from fairbench.models.backend import Conditioning, DiffusersBackend, SamplingParams
from fairbench.prompts import attribute, parse_attributes
from fairbench.registry import Count
from fairbench.units import WorkUnit

TEMPERATURE = 8.0
LOSS_STRENGTH = 500.0
SCALING_STRENGTH = 600.0
CLIP_LABELLER = "openai/clip-vit-large-patch14"


class StepHeads(nn.Module):
    """One linear classifier per denoising step on the flattened h (the published CustomMLP)."""

    def __init__(self, steps: int, features: int, k: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(steps, k, features))
        self.bias = nn.Parameter(torch.zeros(steps, k))

    def forward(self, h: torch.Tensor, step: int) -> torch.Tensor:
        return h.flatten(1) @ self.weight[step].T + self.bias[step]


def distribution_loss(logits: torch.Tensor, target: torch.Tensor, temperature: float = TEMPERATURE) -> torch.Tensor:
    """KL(p_bar || target), p_bar the mean over rows of softmax(logits / temperature)."""
    p = torch.softmax(logits / temperature, dim=-1).mean(dim=0)
    return (p * (p / target).log()).sum()


def guided_h(h: torch.Tensor, step: int, heads: list[StepHeads], targets: list[torch.Tensor],
             groups: list[torch.Tensor], temperature: float, loss_strength: float,
             scaling_strength: float) -> torch.Tensor:
    """h - scaling_strength * grad_h(loss_strength * sum over heads and row groups of the KL loss)."""
    with torch.enable_grad():
        x = h.detach().float().requires_grad_(True)
        loss = sum(distribution_loss(head(x[rows], step), target.to(x.device), temperature)
                   for head, target in zip(heads, targets) for rows in groups)
        (grad,) = torch.autograd.grad(loss_strength * loss, x)
    return (h.float() - scaling_strength * grad).to(h.dtype)


def fit_heads(features: torch.Tensor, labels: torch.Tensor, k: int, epochs: int, lr: float) -> StepHeads:
    """Per-step logistic regression: features (S, N, F), labels (N,) in 0..k-1."""
    heads = StepHeads(features.shape[0], features.shape[2], k)
    opt = torch.optim.Adam(heads.parameters(), lr=lr)
    for _ in range(epochs):
        loss = sum(nn.functional.cross_entropy(heads(features[s].float(), s), labels) for s in range(features.shape[0]))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return heads.eval()


def row_groups(prompt_ids: list[str], unet_rows: int) -> list[torch.Tensor]:
    """Rows of the UNet batch per prompt: each image's row and, with classifier-free guidance (2B
    rows), its unconditional twin B rows earlier."""
    b = len(prompt_ids)
    groups = []
    for pid in dict.fromkeys(prompt_ids):
        rows = [i for i, p in enumerate(prompt_ids) if p == pid]
        groups.append(torch.tensor(rows + [r + b for r in rows] if unet_rows == 2 * b else rows))
    return groups


class BalancingAct(Method):
    """Guide each prompt's batch toward the target distribution through h-space classifiers."""

    level = "guidance"
    architectures = ("sd", "sdxl")
    source = "Parihar et al., Balancing Act: Distribution-Guided Debiasing in Diffusion Models (CVPR 2024; rishubhpar/debiasing_gen_models)"

    def __init__(self, attributes: str = "gender", loss_strength: float = LOSS_STRENGTH,
                 scaling_strength: float = SCALING_STRENGTH, temperature: float = TEMPERATURE,
                 train_images: Count = 8, train_suite: str = "occupations", split: str = "train",
                 labeller_model: str = "auto", head_epochs: Count = 100, head_lr: float = 1e-3,
                 cache: bool = True) -> None:
        super().__init__()
        self.attributes = parse_attributes(attributes)
        self.loss_strength, self.scaling = float(loss_strength), float(scaling_strength)
        self.temperature = float(temperature)
        self.train_images, self.epochs, self.lr = int(train_images), int(head_epochs), float(head_lr)
        if self.temperature <= 0 or self.train_images < 1 or self.epochs < 1 or self.lr <= 0:
            raise UserError("balancingact: temperature and head_lr must be positive, train_images and head_epochs >= 1")
        self.train_suite, self.split, self.labeller_model, self.cache = train_suite, split, labeller_model, bool(cache)
        self.args: dict[str, Any] = {"attributes": self.attributes, "loss_strength": self.loss_strength,
                                     "scaling_strength": self.scaling, "temperature": self.temperature,
                                     "train_images": self.train_images, "train_suite": train_suite, "split": split,
                                     "labeller_model": labeller_model, "head_epochs": self.epochs, "head_lr": self.lr}
        self.heads: list[StepHeads] = []
        self.targets = [torch.full((attribute(a).k,), 1.0 / attribute(a).k) for a in self.attributes]
        self.steps: int | None = None

    # training ------------------------------------------------------------------------------
    def labeller(self, backend: DiffusersBackend, context: MethodContext) -> Any:
        """The zero-shot CLIP that pseudo-labels the training images (never the run's own classifier)."""
        from fairbench.classifiers import build_classifier

        model = self.labeller_model
        if model == "auto":
            model = own_clip(backend) or CLIP_LABELLER
        self.args["labeller"] = model
        return build_classifier("clip", {"model": model, "attributes": ",".join(self.attributes)})

    def training_units(self, context: MethodContext) -> list[tuple[str, str, int]]:
        """(prompt id, text, seed) of the training images; seeds apart from the benchmark's."""
        return training_units(self.train_suite, self.split, self.train_images, context.seed, "balancingact",
                              "train Balancing Act's heads on")

    def collect(self, backend: DiffusersBackend, context: MethodContext, labeller: Any) -> tuple[torch.Tensor, np.ndarray]:
        """h of each training image's conditional row at every step (S, N, F; float16), and its labels (N, A)."""
        feats, labels = [], []
        for h, images in generations_with_h(backend, context, self.training_units(context), "balancingact heads data"):
            probs = labeller.predict(images)
            feats.append(h[:, -len(images):])
            labels += [[int(np.argmax(probs[a][i])) for a in self.attributes] for i in range(len(images))]
        return torch.cat(feats, dim=1), np.asarray(labels)

    def cache_path(self, backend: DiffusersBackend, context: MethodContext) -> Any:
        """Cache folder keyed by everything that determines the heads."""
        return cache_folder("balancingact", self.args, self.training_units(context), backend, context)

    def prepare(self, backend: DiffusersBackend, suite: Any, context: MethodContext | None = None) -> None:
        """Train (or load from the cache) one set of per-step heads per attribute."""
        if context is None:
            raise UserError("balancingact trains its heads with the run's sampling settings; none were given")
        labeller = self.labeller(backend, context)
        self.steps = (context.params or SamplingParams()).steps
        path = self.cache_path(backend, context) if self.cache else None
        if path is not None and (path / "heads.json").is_file():  # written last: the heads are complete
            tensors = load_safetensors_file(path / "heads.safetensors", "Balancing Act heads")
            self.heads = []
            for a in self.attributes:
                w = tensors[f"{a}.weight"]
                heads = StepHeads(w.shape[0], w.shape[2], w.shape[1])
                heads.load_state_dict({"weight": w, "bias": tensors[f"{a}.bias"]})
                self.heads.append(heads.eval())
            self.args["heads"] = json.loads((path / "heads.json").read_text())["training"]
            return
        feats, labels = self.collect(backend, context, labeller)
        torch.manual_seed(context.seed)
        self.heads = [fit_heads(feats, torch.as_tensor(labels[:, j]), attribute(a).k, self.epochs, self.lr)
                      for j, a in enumerate(self.attributes)]
        self.args["heads"] = {"images": int(feats.shape[1]), "steps": int(feats.shape[0]),
                              "features": int(feats.shape[2]),
                              "shares": {a: np.bincount(labels[:, j], minlength=attribute(a).k).tolist()
                                         for j, a in enumerate(self.attributes)}}
        if path is not None:
            atomic_save_tensors(path / "heads.safetensors",
                                {f"{a}.{n}": p.detach() for a, h in zip(self.attributes, self.heads)
                                 for n, p in h.state_dict().items()})
            atomic_write_json(path / "heads.json", {"args": {k: v for k, v in self.args.items() if k != "heads"},
                                                    "training": self.args["heads"]})

    # generation ----------------------------------------------------------------------------
    def generate(self, backend: DiffusersBackend, cond: Conditioning, generators: list[torch.Generator],
                 params: SamplingParams, units: list[WorkUnit]) -> tuple[list[Any], list[bool]]:
        """The pipeline's own loop, with the mid-block output guided at every step."""
        if not self.heads:
            raise RuntimeError("BalancingAct.prepare() must run before generation")
        if params.steps != self.steps:
            raise UserError(f"balancingact's heads were trained for {self.steps} steps; this run samples {params.steps}")
        prompt_ids = [u.prompt_id for u in units]
        heads = [h.to(backend.device) for h in self.heads]

        def guide(h: torch.Tensor, step: int, scheduler: Any) -> torch.Tensor:
            return guided_h(h, step, heads, self.targets, row_groups(prompt_ids, h.shape[0]),
                            self.temperature, self.loss_strength, self.scaling)

        return generate_guided(backend, cond, generators, params, guide)
