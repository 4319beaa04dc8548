"""`finetune`: LoRA adapters trained through the sampler with the distributional alignment loss (weights level).

Source: Shen, Du, Pang, Lin, Wong, Yang, "Finetuning Text-to-Image Diffusion Models for Fairness",
ICLR 2024 (code: sail-sg/finetune-fair-diffusion, exp-1-debias-gender/1-main-debias.py for one
attribute, exp-3-debias-gender-race for two). As published, per training step:
  1. one training prompt; N = 24 images from fresh noise with the model being finetuned, a number
     of denoising steps drawn from 19..23 (the evaluation uses 25); their faces are classified;
  2. dynamic targets: one binary attribute -> rank the images by P(class 1), the lowest half get
     class 0, the rest class 1, with uncertainty = the binomial CDF of the image's rank
     (`generate_dynamic_targets`); several attributes -> optimal transport of the N images onto
     100 count vectors drawn from the target distribution (cost = sqrt(sum_a ||p_a - onehot_a||^2),
     `ot.emd`), target = the argmax of the averaged plan, uncertainty = 1 - its share; targets
     whose uncertainty exceeds 0.2 are dropped;
  3. the same noise through the original model (adapters off): its classes and image features;
  4. in batches of 4, the images again, now with gradients through the sampling chain ("adjusted
     direct finetuning": the denoiser's input is detached at every step and the gradient of its
     output is scaled by sqrt(abar_t) sqrt(1 - abar_t) / (1 - alpha_t), normalised by the
     coefficients' geometric mean; gradient checkpointing in the denoiser), and
       loss = CE(classifier logits, target)                          (distributional alignment)
            + 8 * w * (1 - cos(CLIP(x), CLIP(x_orig)) + 1 - cos(DINO(x), DINO(x_orig)))
            + 1 * face-realism loss,
     w = 1 where the target is the original image's class (or no face), 0.2 elsewhere; the face
     region's gradient is scaled the same way (1 or 0.2);
  5. AdamW lr 5e-5 (betas 0.9/0.999, weight decay 0.01, constant), gradients averaged over the
     batches, a step skipped when they are not finite; diffusers' EMAModel of the adapters (decay
     (1 + s) / (10 + s) at its s-th update, capped at 0.996).
  Adapters: LoRA rank 50 on the text encoder's attention and MLP projections (`patch_mlp`), and/or
  on the UNet's attention projections (q, k, v, out); the paper's main setting is the text encoder.

Unpublished details or departures here, each a parameter with its default:
  - the classifier trained against (`clip_model`, "auto"): a zero-shot CLIP over attributes.yaml's
    class texts on the whole image; synthclip on the embedded worlds (whose images are faces), CLIP
    ViT-L/14 elsewhere. The paper trains against its own CelebA classifier on detected face crops.
    It is never the run's scoring classifier: a run scoring with the same CLIP is refused;
  - the image-semantics term uses that CLIP's image features only: DINOv2 is not available for the
    embedded worlds, and the face-realism term needs a face-recognition network and a bank of real
    faces (not reproduced); the face region is the whole image;
  - training prompts: the `split` prompts of `train_suite` as the suite writes them (the paper's
    template is "A photo of the face of a {occupation}, a person"), shuffled per epoch;
  - denoising steps per training step: drawn from `steps - 6 .. steps - 2` of the run's steps
    (19..23 for 25); `max_steps` (the paper: 10,000, "largely realised" by 2,000) is sized for a
    CPU budget on the embedded worlds; `images_per_prompt` 24 and `batch` 4 as published;
  - the adapters used for generation: the EMA (`use_ema`; the authors export both);
  - every step's prompt, noise and step count derive from (seed, step); the adapters, their EMA and
    the optimizer are checkpointed every `checkpoint_every` steps and training resumes from there,
    identically. The trained adapters are cached by everything that determines them.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.optimize import linprog
from scipy.stats import binom
from diffusers.training_utils import EMAModel
from torch import nn
from tqdm import tqdm

from fairbench.errors import UserError
from fairbench.io import (atomic_save_tensors, atomic_write_json, load_optimizer_tensors, load_safetensors_file,
                          optimizer_tensors)
from fairbench.methods.base import Method, MethodContext, own_clip
from fairbench.models.backend import DiffusersBackend, SamplingParams, weights_fingerprint
from fairbench.models.dual_encoder import _features
from fairbench.prompts import attribute, parse_attributes
from fairbench.registry import Count

from fairbench.baselines.hspace import cache_folder, training_units

RANK = 50
LR = 5e-5
IMAGES_PER_PROMPT = 24
BATCH = 4
WEIGHT_IMAGE = 8.0
FACTOR = 0.2  # factor1 (loss weight) and factor2 (gradient on the face region), both 0.2 in every config
UNCERTAINTY = 0.2
EMA_DECAY = 0.996
TARGET_SAMPLES = 100
MAX_STEPS = 120
CLIP_L14 = "openai/clip-vit-large-patch14"
TEXT_LAYERS = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2",  # CLIP's text tower
               "query", "key", "value", "dense")  # BERT-style encoders (the embedded worlds' text towers)
UNET_LAYERS = ("to_q", "to_k", "to_v", "to_out.0")


# adapters ----------------------------------------------------------------------------------
class LoRALinear(nn.Module):
    """A frozen nn.Linear plus up(down(x)) (diffusers' LoRALinearLayer: down ~ N(0, 1/rank), up = 0)."""

    def __init__(self, base: nn.Linear, rank: int, generator: torch.Generator) -> None:
        super().__init__()
        self.base, self.enabled = base, True
        device = base.weight.device  # drawn on the CPU generator, so a seed gives the same adapters on any device
        self.down = nn.Parameter((torch.randn(rank, base.in_features, generator=generator) / rank).to(device))
        self.up = nn.Parameter(torch.zeros(base.out_features, rank, device=device))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)
        if not self.enabled:
            return out
        return out + (x.to(self.down.dtype) @ self.down.T @ self.up.T).to(out.dtype)


def adapter_targets(module: nn.Module, names: tuple[str, ...]) -> list[str]:
    """Qualified names of the nn.Linear layers in `module` whose own name (or last two parts) is in `names`."""
    found = []
    for qual, child in module.named_modules():
        parts = qual.split(".")
        if isinstance(child, nn.Linear) and (parts[-1] in names or ".".join(parts[-2:]) in names):
            found.append(qual)
    return found


def _set(module: nn.Module, qual: str, value: nn.Module) -> None:
    parent, _, name = qual.rpartition(".")
    setattr(module.get_submodule(parent) if parent else module, name, value)


class Adapters:
    """LoRA on named layers of the pipeline's parts; installed, toggled, merged into the weights, removed."""

    def __init__(self, parts: dict[str, nn.Module], names: dict[str, tuple[str, ...]], rank: int, seed: int) -> None:
        gen = torch.Generator().manual_seed(seed)
        self.parts, self.layers = parts, {}
        for part, module in parts.items():
            for qual in adapter_targets(module, names[part]):
                self.layers[f"{part}.{qual}"] = LoRALinear(module.get_submodule(qual), rank, gen)
        if not self.layers:
            raise UserError("finetune: no layer to adapt in " + ", ".join(parts))

    def parameters(self) -> dict[str, nn.Parameter]:
        """Every adapter parameter by name."""
        return {f"{k}.{p}": getattr(layer, p) for k, layer in self.layers.items() for p in ("down", "up")}

    def install(self) -> None:
        """Swap each adapted layer for its LoRA wrapper."""
        for key, layer in self.layers.items():
            part, qual = key.split(".", 1)
            _set(self.parts[part], qual, layer)

    def remove(self) -> None:
        """Put the original layers back."""
        for key, layer in self.layers.items():
            part, qual = key.split(".", 1)
            _set(self.parts[part], qual, layer.base)

    def enable(self, on: bool) -> None:
        """Adapters on (the model being finetuned) or off (the original model)."""
        for layer in self.layers.values():
            layer.enabled = on

    @torch.no_grad()
    def merge(self, weights: dict[str, torch.Tensor]) -> None:
        """Add up @ down of the given adapter weights into each original layer (a zero `up` leaves it unchanged)."""
        for key, layer in self.layers.items():
            delta = weights[f"{key}.up"] @ weights[f"{key}.down"]
            layer.base.weight.add_(delta.to(layer.base.weight))


# targets -----------------------------------------------------------------------------------
def rank_targets(p1: np.ndarray, target_ratio: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """One binary attribute (exp-1): rank by P(class 1); the lowest `1 - ratio` share -> 0, the rest -> 1, and
    each target's uncertainty from the binomial CDF of its rank."""
    n = len(p1)
    rank = np.argsort(np.argsort(p1, kind="stable"), kind="stable")
    targets = (rank >= n * target_ratio).astype(int)
    uncertainty = np.where(targets == 1, 1 - binom.cdf(rank, n, 1 - target_ratio), binom.cdf(rank, n, target_ratio))
    return targets, uncertainty


def transport_plan(cost: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """The exact optimal transport (earth mover's) plan from N unit masses onto classes holding `counts`."""
    n, c = cost.shape
    a_eq = np.zeros((n + c, n * c))
    for i in range(n):
        a_eq[i, i * c:(i + 1) * c] = 1
    for j in range(c):
        a_eq[n + j, j::c] = 1
    res = linprog(cost.ravel(), A_eq=a_eq, b_eq=np.concatenate([np.ones(n), counts]), bounds=(0, None),
                  method="highs")
    if not res.success:
        raise RuntimeError(f"optimal transport failed: {res.message}")
    return res.x.reshape(n, c)


def joint_classes(ks: list[int]) -> list[tuple[int, ...]]:
    """Every combination of one group per attribute, the first attribute slowest (the authors' g*4 + r)."""
    return list(np.ndindex(*ks))


def transport_targets(probs: list[np.ndarray], rng: np.random.Generator, samples: int = TARGET_SAMPLES
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Several attributes (exp-3/4): the averaged transport plan onto `samples` count vectors drawn from the
    uniform joint target; per attribute the argmax of its marginal and 1 - that share. Returns (N, A) each."""
    ks = [p.shape[1] for p in probs]
    classes = joint_classes(ks)
    n = len(probs[0])
    cost = np.sqrt(sum(((probs[a][:, None, :] - np.eye(k)[[c[a] for c in classes]][None]) ** 2).sum(-1)
                       for a, k in enumerate(ks)))
    plan = np.zeros((n, len(classes)))
    for _ in range(samples):
        draws = [rng.integers(0, k, n) for k in ks]  # each image's class under the target, per attribute
        counts = np.bincount(np.ravel_multi_index(draws, ks), minlength=len(classes)).astype(float)
        plan += transport_plan(cost, counts)
    plan /= plan[0].sum()
    targets, uncertainty = [], []
    for a, k in enumerate(ks):
        marginal = np.stack([plan[:, [i for i, c in enumerate(classes) if c[a] == g]].sum(1) for g in range(k)], 1)
        targets.append(marginal.argmax(1))
        uncertainty.append(1 - marginal.max(1))
    return np.stack(targets, 1), np.stack(uncertainty, 1)


def dynamic_targets(probs: list[np.ndarray], rng: np.random.Generator, threshold: float = UNCERTAINTY) -> np.ndarray:
    """Each image's target class per attribute (N, A), -1 where the target's uncertainty exceeds `threshold`."""
    if len(probs) == 1 and probs[0].shape[1] == 2:
        t, u = rank_targets(probs[0][:, 1])
        targets, uncertainty = t[:, None], u[:, None]
    else:
        targets, uncertainty = transport_targets(probs, rng)
    return np.where(uncertainty > threshold, -1, targets)


def gradient_coefficients(scheduler: Any) -> np.ndarray:
    """ADFT's per-step scale of the denoiser output's gradient, normalised by the geometric mean."""
    t = scheduler.timesteps.long()
    abar, alpha = scheduler.alphas_cumprod[t].double(), scheduler.alphas[t].double()
    coef = (abar.sqrt() * (1 - abar).sqrt() / (1 - alpha)).numpy()
    return coef / np.exp(np.log(coef).mean())


def loss_weights(targets: np.ndarray, original: np.ndarray, factor: float) -> np.ndarray:
    """1 where every attribute's target is the original image's class, else `factor` (dropped targets too)."""
    return np.where(((targets == original) & (targets >= 0)).all(1), 1.0, factor)


# the method --------------------------------------------------------------------------------
class Finetune(Method):
    """LoRA adapters trained so that each prompt's images match the target distribution (Shen et al.)."""

    level = "weights"
    architectures = ("sd",)
    source = ("Shen et al., Finetuning Text-to-Image Diffusion Models for Fairness (ICLR 2024; "
              "sail-sg/finetune-fair-diffusion)")

    def __init__(self, attributes: str = "gender", train_text_encoder: bool = True, train_unet: bool = False,
                 rank: Count = RANK, lr: float = LR, max_steps: Count = MAX_STEPS,
                 images_per_prompt: Count = IMAGES_PER_PROMPT, batch: Count = BATCH, weight_image: float = WEIGHT_IMAGE,
                 factor: float = FACTOR,
                 uncertainty: float = UNCERTAINTY, ema_decay: float = EMA_DECAY, use_ema: bool = True,
                 clip_model: str = "auto", train_suite: str = "occupations", split: str = "train",
                 checkpoint_every: Count = 5, seed: int = 0, cache: bool = True) -> None:
        super().__init__()
        self.attributes = parse_attributes(attributes)
        self.rank, self.max_steps, self.per_prompt, self.batch = int(rank), int(max_steps), int(images_per_prompt), int(batch)
        self.every, self.seed, self.cache, self.use_ema = int(checkpoint_every), int(seed), bool(cache), bool(use_ema)
        self.lr, self.weight_image, self.factor = float(lr), float(weight_image), float(factor)
        self.uncertainty, self.decay = float(uncertainty), float(ema_decay)
        if min(self.rank, self.max_steps, self.per_prompt, self.batch, self.every) < 1:
            raise UserError("finetune: rank, max_steps, images_per_prompt, batch and checkpoint_every must be >= 1")
        if not (self.lr > 0 and math.isfinite(self.lr)) or not all(
                math.isfinite(v) and v >= 0 for v in (self.weight_image, self.factor, self.uncertainty)):
            raise UserError("finetune: lr must be positive; weight_image, factor and uncertainty finite and >= 0")
        if not 0 <= self.decay < 1:
            raise UserError(f"finetune: ema_decay must be in [0, 1); got {ema_decay}")
        if not (train_text_encoder or train_unet):
            raise UserError("finetune: train_text_encoder, train_unet or both must be true")
        self.parts = tuple(p for p, on in (("text_encoder", train_text_encoder), ("unet", train_unet)) if on)
        self.clip_model, self.train_suite, self.split = clip_model, train_suite, split
        self.args: dict[str, Any] = {"attributes": self.attributes, "train_text_encoder": bool(train_text_encoder),
                                     "train_unet": bool(train_unet), "rank": self.rank, "lr": self.lr,
                                     "max_steps": self.max_steps, "images_per_prompt": self.per_prompt,
                                     "batch": self.batch, "weight_image": self.weight_image, "factor": self.factor,
                                     "uncertainty": self.uncertainty, "ema_decay": self.decay, "use_ema": self.use_ema,
                                     "clip_model": clip_model, "train_suite": train_suite, "split": split,
                                     "seed": self.seed}
        self.weights: dict[str, torch.Tensor] | None = None
        self.adapters: Adapters | None = None

    # preparation ---------------------------------------------------------------------------
    def clip_name(self, backend: DiffusersBackend) -> str:
        """The zero-shot CLIP trained against: synthclip on the embedded worlds, else CLIP ViT-L/14."""
        if self.clip_model != "auto":
            return self.clip_model
        return own_clip(backend) or CLIP_L14

    def prepare(self, backend: DiffusersBackend, suite: Any, context: MethodContext | None = None) -> None:
        """Train the adapters (or load them from the cache), refusing to train against the scoring classifier."""
        from fairbench.classifiers.clip import CLIPClassifier
        from fairbench.models.dual_encoder import DualEncoder, resolve_dual_encoder

        context = context or MethodContext(suite)
        clip_name = self.clip_name(backend)
        scorer = context.classifier
        if isinstance(scorer, CLIPClassifier) and resolve_dual_encoder(scorer.model_id) == resolve_dual_encoder(clip_name):
            raise UserError(f"finetune would train against {clip_name!r}, the run's scoring classifier; give "
                            "clip_model=<another CLIP> or score with another classifier")
        self.args["clip"] = clip_name
        self.adapters = Adapters(self.adapted_parts(backend), {"text_encoder": TEXT_LAYERS, "unet": UNET_LAYERS},
                                 self.rank, self.seed)
        clip = DualEncoder(clip_name, device=backend.device)
        clip.model.requires_grad_(False)
        units = training_units(self.train_suite, self.split, 1, self.seed, "finetune", "finetune on")
        prompts = [t for _, t, _ in units]
        params = context.params or SamplingParams()
        spec = {k: v for k, v in self.args.items() if k != "training"}
        folder = cache_folder("finetune", spec, units, backend, context,
                              clip=weights_fingerprint({"clip": clip.model})) if self.cache else None
        self.weights, self.args["training"] = train_adapters(self, backend, clip, prompts, params, folder,
                                                             context.progress)

    def adapted_parts(self, backend: DiffusersBackend) -> dict[str, nn.Module]:
        """The pipeline parts the adapters sit in."""
        return {"text_encoder": backend.text_encoder, "unet": backend.unet} if len(self.parts) == 2 else \
            {self.parts[0]: getattr(backend, self.parts[0])}

    def apply_to_model(self, backend: DiffusersBackend) -> None:
        """Merge the trained adapters (their EMA by default) into the pipeline's weights."""
        if self.weights is None or self.adapters is None:
            raise RuntimeError("Finetune.prepare() must run before apply_to_model()")
        self.adapters.merge(self.weights)


# training ----------------------------------------------------------------------------------
class Trainer:
    """One finetuning step at a time: the published steps 1-5 on one prompt."""

    def __init__(self, method: Finetune, backend: DiffusersBackend, clip: Any, params: SamplingParams) -> None:
        from fairbench.classifiers.clip import load_class_texts

        self.m, self.backend, self.clip, self.params = method, backend, clip, params
        self.adapters = method.adapters
        texts = load_class_texts(tuple(method.attributes), None)
        self.class_feats = [clip.text_features(texts[a]) for a in method.attributes]
        proc = clip.processor.image_processor
        self.device = torch.device(backend.device)
        self.mean = torch.tensor(proc.image_mean, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(proc.image_std, device=self.device).view(1, 3, 1, 1)
        self.scheduler = backend.pipe.scheduler
        # an embedded world hands out its token states with autograd; a diffusers pipeline through encode_prompt
        self.text_states = getattr(backend.pipe, "text_states", None)
        self.guidance = params.guidance_scale

    # pieces ---------------------------------------------------------------------------------
    def states(self, texts: list[str]) -> torch.Tensor:
        """Token states with autograd through the (adapted) text encoder."""
        if self.text_states is not None:
            return self.text_states(texts)
        pe, _ = self.backend.pipe.encode_prompt(texts, self.backend.device, 1, False)
        return pe

    def sample(self, prompt: str, noise: torch.Tensor, steps: int, grad: bool) -> torch.Tensor:
        """Images in [0, 1] from `noise`; with `grad`, ADFT's gradient through the chain (inputs detached)."""
        unet, sched = self.backend.unet, self.scheduler
        with torch.set_grad_enabled(grad):
            n = len(noise)
            cond = torch.cat([self.states([self.params.negative_prompt] * n), self.states([prompt] * n)]).to(unet.dtype)
            sched.set_timesteps(steps)
            coefs = gradient_coefficients(sched)
            x = noise.to(self.device, unet.dtype) * sched.init_noise_sigma
            for i, t in enumerate(sched.timesteps):
                inp = sched.scale_model_input(torch.cat([x.detach()] * 2), t)
                out = unet(inp, t, encoder_hidden_states=cond).sample.float()
                uncond, text = out.chunk(2)
                eps = uncond + self.guidance * (text - uncond)
                if grad:
                    eps.register_hook(lambda g, c=float(coefs[i]): g * c)
                x = sched.step(eps, t, x).prev_sample
            vae = getattr(self.backend.pipe, "vae", None)
            if vae is not None:
                x = vae.decode(x.to(vae.dtype) / vae.config.scaling_factor).sample
            return (x.float().clamp(-1, 1) + 1) / 2

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """The CLIP's normalised image features of [0, 1] images (resized and normalised as its processor does)."""
        size = self.clip.image_size
        px = torch.nn.functional.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
        feats = _features(self.clip.model.get_image_features(pixel_values=(px - self.mean) / self.std))
        return torch.nn.functional.normalize(feats, dim=-1)

    def logits(self, feats: torch.Tensor) -> list[torch.Tensor]:
        """Zero-shot logits per attribute."""
        return [self.clip.logit_scale * feats @ c.T for c in self.class_feats]

    # one step -------------------------------------------------------------------------------
    def step(self, prompt: str, step: int, optimizer: torch.optim.Optimizer) -> dict[str, float]:
        """Steps 1-5 on `prompt`; returns the step's losses and the finetuned images' gap."""
        m, adapters = self.m, self.adapters
        rng = np.random.default_rng([m.seed, step])
        lo = max(1, self.params.steps - 6)
        steps = int(rng.integers(lo, max(lo, self.params.steps - 2) + 1))
        noise = torch.randn(m.per_prompt, *self.latent_shape(),
                            generator=torch.Generator().manual_seed(int(rng.integers(2 ** 62))))
        with torch.no_grad():  # 1. the finetuned model's images and classes -> 2. targets
            adapters.enable(True)
            feats = self.features(self.sample(prompt, noise, steps, False))
            probs = [torch.softmax(lg, -1).float().cpu().numpy() for lg in self.logits(feats)]
            targets = dynamic_targets(probs, rng, m.uncertainty)
            adapters.enable(False)  # 3. the original model on the same noise
            orig_feats = self.features(self.sample(prompt, noise, steps, False))
            orig_class = np.stack([lg.argmax(-1).cpu().numpy() for lg in self.logits(orig_feats)], 1)
            adapters.enable(True)
        weights = loss_weights(targets, orig_class, m.factor)
        optimizer.zero_grad()
        chunks = range(0, m.per_prompt, m.batch)
        fair_sum, image_sum = 0.0, 0.0
        for start in chunks:  # 4. with gradients, in batches
            sl = slice(start, start + m.batch)
            images = self.sample(prompt, noise[sl], steps, True)
            scale = torch.as_tensor(weights[sl], dtype=images.dtype, device=images.device)
            images.register_hook(lambda g, s=scale: g * s.view(-1, 1, 1, 1))  # the face region = the whole image
            feats = self.features(images)
            fair = torch.zeros(len(images), device=images.device)
            for a, lg in enumerate(self.logits(feats)):
                t = torch.as_tensor(targets[sl, a], device=images.device)
                keep = t >= 0
                if keep.any():
                    fair[keep] = fair[keep] + torch.nn.functional.cross_entropy(lg[keep], t[keep], reduction="none")
            image = 1 - (feats * orig_feats[sl]).sum(-1)
            loss = fair + m.weight_image * scale * image
            loss.mean().backward()
            fair_sum, image_sum = fair_sum + fair.sum().item(), image_sum + image.sum().item()
        params = list(adapters.parameters().values())
        finite = all(p.grad is None or torch.isfinite(p.grad).all() for p in params)
        for p in params:
            if p.grad is not None:
                p.grad /= len(chunks)
        if finite:  # 5.
            optimizer.step()
        shares = np.bincount(probs[0].argmax(1), minlength=probs[0].shape[1]) / len(probs[0])
        return {"fair": fair_sum / m.per_prompt, "image": image_sum / m.per_prompt, "kept": int((targets >= 0).all(1).sum()),
                "gap": float(np.abs(shares - 1 / len(shares)).max()), "finite": bool(finite), "denoising_steps": steps}

    def latent_shape(self) -> tuple[int, int, int]:
        """(channels, height, width) of the denoiser's input."""
        cfg = self.backend.unet.config
        fixed = getattr(self.backend.pipe, "fixed_size", None)  # an embedded world draws one size
        scaled = self.params.height // self.backend.pipe.vae_scale_factor if self.params.height else cfg.sample_size
        side = fixed or scaled
        return cfg.in_channels, side, side


def train_adapters(method: Finetune, backend: DiffusersBackend, clip: Any, prompts: list[str], params: SamplingParams,
                   folder: Path | None, progress: bool = False) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The finetuning loop, checkpointed every `checkpoint_every` steps under `folder` and resumed from it;
    returns the adapter weights generation uses (the EMA by default) and a summary."""
    adapters = method.adapters
    if folder is not None and (folder / "adapters.json").is_file():  # written last: training finished
        return (load_safetensors_file(folder / "adapters.safetensors", "finetune adapters"),
                json.loads((folder / "adapters.json").read_text())["training"])
    params_by_name = adapters.parameters()
    names = list(params_by_name)
    optimizer = torch.optim.AdamW(list(params_by_name.values()), lr=method.lr, betas=(0.9, 0.999), weight_decay=1e-2,
                                  eps=1e-8)
    ema = EMAModel(list(params_by_name.values()), decay=method.decay)  # the authors' EMA, its warm-up included
    start, history = 0, []
    if folder is not None and (folder / "state.json").is_file():
        state = json.loads((folder / "state.json").read_text())
        start, history = state["steps_done"], state["history"]
        saved = load_safetensors_file(folder / "checkpoint.safetensors", "finetune checkpoint")
        with torch.no_grad():
            for k, p in params_by_name.items():
                p.copy_(saved[f"param.{k}"])
        ema.shadow_params = [saved[f"ema.{k}"].to(params_by_name[k].device) for k in names]
        ema.optimization_step = state["ema_steps"]
        load_optimizer_tensors(optimizer, names, {k[4:]: v for k, v in saved.items() if k.startswith("opt.")})
    unet = backend.unet
    # only the adapters learn: the pipeline's own weights get no gradients (diffusers loads them trainable)
    frozen = [p for m in (unet, *backend.text_encoders.values()) for p in m.parameters() if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    was_checkpointing = getattr(unet, "gradient_checkpointing", False)
    if hasattr(unet, "enable_gradient_checkpointing"):
        unet.enable_gradient_checkpointing()
    adapters.install()
    trainer = Trainer(method, backend, clip, params)
    began = time.perf_counter()
    try:
        for step in tqdm(range(start, method.max_steps), desc="finetune", unit="step", disable=not progress,
                         initial=start, total=method.max_steps):
            epoch, pos = divmod(step, len(prompts))
            order = np.random.default_rng([method.seed, epoch]).permutation(len(prompts))
            record = trainer.step(prompts[order[pos]], step, optimizer)
            if record["finite"]:
                ema.step(list(params_by_name.values()))
            record["seconds"] = time.perf_counter() - began  # wall time of this process's steps so far
            history.append({k: (round(v, 6) if isinstance(v, float) else v) for k, v in record.items()})
            if folder is not None and ((step + 1) % method.every == 0 or step + 1 == method.max_steps):
                tensors = {f"param.{k}": p.detach() for k, p in params_by_name.items()}
                tensors.update({f"ema.{k}": v for k, v in zip(names, ema.shadow_params)})
                tensors.update({f"opt.{k}": v for k, v in optimizer_tensors(optimizer, names).items()})
                atomic_save_tensors(folder / "checkpoint.safetensors", tensors)
                atomic_write_json(folder / "state.json", {"steps_done": step + 1, "history": history,
                                                          "ema_steps": ema.optimization_step})
    finally:
        adapters.remove()
        for p in frozen:
            p.requires_grad_(True)
        if not was_checkpointing and hasattr(unet, "disable_gradient_checkpointing"):
            unet.disable_gradient_checkpointing()
    shadow = dict(zip(names, ema.shadow_params))
    result = {k: (shadow[k] if method.use_ema else p.detach()).clone() for k, p in params_by_name.items()}
    training = {"clip": clip.model_id, "prompts": len(prompts), "steps": method.max_steps,
                "seconds": round(sum(h["seconds"] for i, h in enumerate(history)
                                     if i + 1 == len(history) or history[i + 1]["seconds"] < h["seconds"]), 1),
                "last": history[-1] if history else None,
                "gap_first_10": float(np.mean([h["gap"] for h in history[:10]])) if history else None,
                "gap_last_10": float(np.mean([h["gap"] for h in history[-10:]])) if history else None}
    if folder is not None:
        atomic_save_tensors(folder / "adapters.safetensors", result)
        atomic_write_json(folder / "adapters.json", {"args": {k: v for k, v in method.args.items() if k != "training"},
                                                     "training": training, "history": history})
    return result, training
