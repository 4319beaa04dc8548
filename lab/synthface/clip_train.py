"""`python -m lab.synthface train-clip`: contrastive training of synthclip on the world's renders and captions.

The data is the vision-language world's own (labelled expressions, emotion descriptors): the
same renders and caption mix the denoiser learns from, neutral captions on skewed renders
included, so a neutral caption's embedding is pulled toward the images it describes, skew and
all. Empty captions (the denoiser's guidance dropout) are left out. The loss is CLIP's symmetric
InfoNCE with a learned temperature; because many images share one caption ("a photo of the face
of a nurse"), the text-to-image direction treats every image of a caption as a positive (a
uniform target over them) and the image-to-text direction contrasts each image with the batch's
distinct captions. Every group-naming caption also brings a hard negative: the same caption with
one named group changed ("a female nurse" for a male nurse's image; NegCLIP's counterfactual
captions, Yuksekgonul et al. 2023), used in the image-to-text direction only. Without them the
captions of one family differ mostly in occupation, which the images cannot show, and a first
run learned the family (zero-shot 1.00) while "a male person" and "a female person" embedded
identically (cosine 1.000, gender at chance after 400 steps). The image tower can start from the
synthface classifier's expression body (`image_init`, see `init_image_tower`): from a random tower
expression was never learned. Every step's batch, augmentation and dropout derive from (seed,
step), so a resumed run continues the same trajectory.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file
from tqdm.auto import tqdm

from fairbench.errors import UserError
from fairbench.synthface.classifier import to_input
from fairbench.synthface.population import RenderSet, render_set
from fairbench.synthface.synthclip import TEXT_SIDE, build_model, build_processor, load_shipped
from lab.synthface.captions import P_EXPRESSION, CaptionTable, sample_fresh_named
from lab.synthface.classifier_train import augment
from lab.synthface.synthclip_export import export, freeze_untrained, round_to_shipped
from lab.synthface.train import record_config, save_checkpoint


IMAGE_BODIES = ("expression_body",)  # the classifier body that seeds a one-body image tower


@dataclass
class ClipTrainConfig:
    """Hyperparameters of a synthclip training run (recorded in the output folder)."""

    steps: int = 1400
    batch_size: int = 128
    lr: float = 1e-3  # image tower and projections
    text_lr: float = 2e-4  # MiniLM's fine-tuned layers
    warmup: int = 100
    n_renders: int = 40_000
    seed: int = 0
    checkpoint_every: int = 100
    n_occupations: int | None = None  # first N occupations only (smoke tests)
    neutral_share: float | None = 0.2  # share of non-empty captions naming no group: the vision-language denoiser's
    hard_negatives: int = 1  # counterfactual captions each group-naming caption brings as extra negatives (0: none)
    expression_share: float = P_EXPRESSION  # share of occupation captions naming the expression
    init_from: str | None = None  # a shipped synthclip folder to continue from (a second stage)
    freeze_text: bool = False  # lock the text encoder (the token states the denoiser reads); its pooler and projection train
    image_init: str | None = None  # a classifier folder whose bodies (image_bodies) seed the image tower
    image_bodies: tuple[str, ...] = IMAGE_BODIES  # with image_init: the classifier's bodies, in tower order
    vision_width: int = 40  # the image tower's width (set to the classifier's with image_init)


def build_for(cfg: ClipTrainConfig):
    """A fresh synthclip shaped as `cfg` trains it (its image tower's width and number of bodies)."""
    return build_model(vision_width=cfg.vision_width, vision_bodies=len(cfg.image_bodies) if cfg.image_init else 1)


def init_image_tower(model, classifier_dir: Path, bodies: tuple[str, ...] = IMAGE_BODIES) -> None:
    """Copy a synthface classifier's bodies (supervised on labelled renders; `body`: gender, skin tone, age,
    family; `expression_body`: expression) into the image tower's, in order.

    Contrastive training from a random tower never finds expression: the mouth is a few pixels, the
    other attributes explain the batch first, and the text side then learns to ignore the expression
    words (measured: "a calm person" and "a sad person" at cosine 1.000 after 300 steps, an image
    probe at chance). A supervised tower seeds the features, as CLIP variants start from pretrained
    image towers (LiT, Zhai et al. 2022); everything then trains contrastively."""
    from fairbench.synthface.classifier import load_classifier

    net, _ = load_classifier(str(classifier_dir))
    for name, tower_body in zip(bodies, model.vision_model.bodies(), strict=True):
        if not hasattr(net, name):
            hint = " (no expression head; train-expression-head adds one)" if name == "expression_body" else ""
            raise UserError(f"--image-init {classifier_dir}: the classifier has no {name}{hint}")
        tower_body.load_state_dict(getattr(net, name).state_dict())


def load_renders(out: Path, cfg) -> RenderSet:
    """The vision-language world's renders (labelled expressions), cached as out/renders.npz."""
    data_file = out / "renders.npz"
    if data_file.exists():
        z = np.load(data_file)
        return RenderSet(**{k: z[k] for k in z.files})
    rs = render_set(cfg.n_renders, cfg.seed, cfg.n_occupations, expressions=True)
    np.savez(data_file, **rs.arrays())
    return rs


def _batch(step: int, cfg: ClipTrainConfig, rs: RenderSet, table: CaptionTable,
           counterfactuals: list[np.ndarray] | None) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """Augmented images, their caption rows, and the hard-negative rows (not already among the captions)."""
    rng = np.random.default_rng([cfg.seed, step])
    idx = rng.integers(0, len(rs.images), cfg.batch_size)
    rows, images = sample_fresh_named(table, rs, idx, rng, 10_000 * (cfg.seed + 1) + step, cfg.neutral_share,
                                      cfg.n_occupations, cfg.expression_share)
    keep = rows > 0  # the empty caption is guidance dropout, not a description
    rows, images = rows[keep], images[keep]
    hard = np.zeros(0, dtype=np.int64)
    if counterfactuals is not None:
        picks = [_pick(counterfactuals[r], cfg.hard_negatives, rng) for r in rows]
        hard = np.setdiff1d(np.concatenate([hard, *picks]), rows)
    gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
    return augment(to_input(images), gen), rows, hard


def _pick(rows: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k of a caption's counterfactual rows at random (all of them when it has no more than k)."""
    if len(rows) == 0:
        return rows
    if k == 1:  # one draw, as the first stage's shipped training made it
        return rows[rng.integers(len(rows))][None]
    return rows if len(rows) <= k else rng.choice(rows, size=k, replace=False)


def caption_states(model, tok) -> torch.Tensor:
    """Every caption row's last-layer state of its first ([CLS]) token, the pooler's input, computed once
    (the text encoder locked, no dropout)."""
    states = []
    model.eval()
    with torch.no_grad():
        for i in range(0, len(tok["input_ids"]), 512):
            states.append(model.text_model(**{k: v[i:i + 512] for k, v in tok.items()}).last_hidden_state[:, 0])
    model.train()
    return torch.cat(states)


def text_features(model, tok, uniq: np.ndarray, cached: torch.Tensor | None) -> torch.Tensor:
    """Normalised joint-space features of caption rows `uniq` (from their cached states when the encoder is
    locked: the pooler and the projection still train)."""
    if cached is not None:
        txt = model.text_projection(model.text_model.pooler(cached[uniq][:, None]))
    else:
        width = int(tok["attention_mask"][uniq].sum(1).max())  # trim padding shared by the whole batch
        txt = model.get_text_features(**{k: v[uniq, :width] for k, v in tok.items()}).pooler_output
    return torch.nn.functional.normalize(txt, dim=-1)


def contrastive_loss(img: torch.Tensor, txt: torch.Tensor, rows: np.ndarray, scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE between images and the batch's distinct captions (`rows`: each image's caption id).

    img: (B, D) normalised; txt: (U + H, D) normalised, one per distinct caption in sorted order of
    np.unique, then H hard negatives that no image is paired with (image-to-text direction only)."""
    _, inverse = np.unique(rows, return_inverse=True)
    n_pos = int(inverse.max()) + 1
    target = torch.from_numpy(inverse)
    logits = scale * img @ txt.T  # (B, U + H)
    i2t = torch.nn.functional.cross_entropy(logits, target)
    positives = torch.nn.functional.one_hot(target, n_pos).T.float()  # (U, B)
    t2i = -(positives / positives.sum(1, keepdim=True) * torch.log_softmax(logits[:, :n_pos].T, dim=1)).sum(1).mean()
    return (i2t + t2i) / 2


def _checkpoint(out: Path, step: int, model, opt) -> None:
    # MiniLM's embeddings never change; they come from its package on resume
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("text_model.embeddings.")}
    save_checkpoint(out, step, {"model": state}, opt)


def train_clip(out: str | Path, cfg: ClipTrainConfig, max_minutes: float | None = None, progress: bool = True) -> int:
    """Train (or resume) synthclip up to cfg.steps; returns the step reached. Exports to out/final at the end."""
    out = Path(out)
    if cfg.image_init:
        cfg = replace(cfg, vision_width=int(json.loads((Path(cfg.image_init) / "classifier.json").read_text())["width"]))
    elif cfg.init_from:  # the width the continued model was trained at
        vision = json.loads((Path(cfg.init_from) / "config.json").read_text())["vision_config"]
        cfg = replace(cfg, vision_width=int(vision["width"]))
    out.mkdir(parents=True, exist_ok=True)
    record_config(out, asdict(cfg))
    torch.manual_seed(cfg.seed)
    rs = load_renders(out, cfg)
    table = CaptionTable.build(cfg.n_occupations, expressions=True)
    counterfactuals = table.counterfactuals() if cfg.hard_negatives else None
    tok = build_processor().tokenizer(table.texts, padding="max_length", truncation=True, return_tensors="pt")
    model = build_for(cfg)
    if cfg.image_init:
        init_image_tower(model, Path(cfg.image_init), tuple(cfg.image_bodies))
    if cfg.init_from:  # with a re-seeded image tower, only the text side continues
        load_shipped(model, Path(cfg.init_from), TEXT_SIDE if cfg.image_init else None)
    freeze_untrained(model)
    cached = None
    if cfg.freeze_text:  # a locked text encoder (LiT, roles swapped): its caption states are computed once
        for p in [*model.text_model.embeddings.parameters(), *model.text_model.encoder.parameters()]:
            p.requires_grad_(False)
        cached = caption_states(model, tok)
    text_params = [p for n, p in model.named_parameters() if p.requires_grad and n.startswith("text_model.")]
    ids = {id(p) for p in text_params}
    rest = [p for p in model.parameters() if p.requires_grad and id(p) not in ids]
    opt = torch.optim.AdamW([{"params": rest, "base_lr": cfg.lr, "weight_decay": 0.05},
                             {"params": text_params, "base_lr": cfg.text_lr, "weight_decay": 0.01}])
    step = 0
    if (out / "checkpoint" / "state.json").exists():
        model.load_state_dict(load_file(out / "checkpoint" / "model.safetensors"), strict=False)
        opt.load_state_dict(torch.load(out / "checkpoint" / "optimizer.pt", weights_only=True))
        step = json.loads((out / "checkpoint" / "state.json").read_text())["step"]
    start = time.time()
    bar = tqdm(total=cfg.steps, initial=step, unit="step", desc="synthclip train", disable=not progress)
    log = open(out / "train_log.jsonl", "a")
    model.train()
    while step < cfg.steps:
        for g in opt.param_groups:
            g["lr"] = g["base_lr"] * min(1.0, (step + 1) / cfg.warmup) * 0.5 * (1 + math.cos(math.pi * step / cfg.steps))
        torch.manual_seed(cfg.seed * 1_000_003 + step)  # dropout, reproducible on resume
        pixels, rows, hard = _batch(step, cfg, rs, table, counterfactuals)
        uniq = np.concatenate([np.unique(rows), hard])
        img = torch.nn.functional.normalize(model.get_image_features(pixel_values=pixels).pooler_output, dim=-1)
        txt = text_features(model, tok, uniq, cached)
        loss = contrastive_loss(img, txt, rows, model.logit_scale.exp().clamp(max=100))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
        opt.step()
        step += 1
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.3f}", scale=f"{model.logit_scale.exp().item():.1f}")
        if step % 25 == 0:
            log.write(json.dumps({"step": step, "loss": loss.item(), "logit_scale": model.logit_scale.exp().item(),
                                  "elapsed_s": round(time.time() - start, 1)}) + "\n")
            log.flush()
        if step % cfg.checkpoint_every == 0 or step == cfg.steps:
            _checkpoint(out, step, model, opt)
        if max_minutes is not None and time.time() - start > 60 * max_minutes:
            _checkpoint(out, step, model, opt)
            break
    bar.close()
    log.close()
    if step >= cfg.steps:
        model.eval()
        round_to_shipped(model)
        export(model, out / "final")
    return step
