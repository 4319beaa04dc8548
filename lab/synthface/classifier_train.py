"""Training of the synthface attribute classifier on renders with exact labels.

Face-present negatives are noise, flat fields, head-less scenes and tile-shuffled faces. Trained
with augmentations (noise, blur, colour gain, shifts) so it transfers to generated images; its
held-out confusion matrices are measured here and ship with it.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from torch import nn

from fairbench.io import atomic_write_json
from fairbench.metrics.confusion import confusion_from_counts
from fairbench.synthface.classifier import SynthFaceNet, head_groups, load_classifier, predict_all, to_input
from fairbench.synthface.population import render_set
from fairbench.synthface.render import EXPRESSIONS, render_negative

def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Noise, blur, colour gain, shifts and flips: what separates generated images from renders."""
    b = x.shape[0]
    gain = 1 + 0.08 * (torch.rand(b, 3, 1, 1, generator=gen) * 2 - 1)
    bias = 0.08 * (torch.rand(b, 1, 1, 1, generator=gen) * 2 - 1)
    x = x * gain + bias
    blur = torch.rand(b, generator=gen) < 0.3
    if blur.any():
        k = torch.tensor([1.0, 2.0, 1.0])
        k = (k[:, None] * k[None, :] / 16).expand(3, 1, 3, 3)
        x[blur] = nn.functional.conv2d(nn.functional.pad(x[blur], (1, 1, 1, 1), mode="replicate"), k, groups=3)
    x = x + torch.randn(x.shape, generator=gen) * 0.06 * torch.rand(b, 1, 1, 1, generator=gen)
    dx, dy = torch.randint(-2, 3, (2,), generator=gen).tolist()
    x = torch.roll(x, shifts=(dy, dx), dims=(2, 3))
    flip = torch.rand(b, generator=gen) < 0.5
    x[flip] = x[flip].flip(-1)
    return x.clamp(-1.2, 1.2)


@dataclass
class ClassifierTrainConfig:
    """Hyperparameters of the classifier training."""

    n_positive: int = 24_000
    n_negative: int = 6_000
    n_heldout: int = 4_000
    steps: int = 1_500
    batch_size: int = 128
    lr: float = 2e-3
    seed: int = 1


def _dataset(n_pos: int, n_neg: int, seed: int, balanced: bool = False,
             expressions: bool = False) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Renders (`expressions`: the labelled-expression kind) and negatives, with their labels (-1: none)."""
    rs = render_set(n_pos, seed, balanced=balanced, expressions=expressions)
    neg = np.stack([render_negative(seed * 7_919 + i) for i in range(n_neg)]) if n_neg else rs.images[:0]
    images = np.concatenate([rs.images, neg])
    pad = np.full(n_neg, -1)
    labels = {"face": np.concatenate([np.ones(n_pos, int), np.zeros(n_neg, int)]),
              "gender": np.concatenate([rs.gender, pad]), "skin_tone": np.concatenate([rs.skin, pad]),
              "age2": np.concatenate([rs.age, pad]), "family": np.concatenate([rs.family, pad])}
    if expressions:
        labels["expression"] = np.concatenate([rs.expression, pad])
    return images, labels


def train_classifier(out: Path, cfg: ClassifierTrainConfig, progress: bool = True) -> dict:
    """Train, evaluate on held-out renders, and write classifier.safetensors + classifier.json to `out`."""
    from tqdm.auto import tqdm

    torch.manual_seed(cfg.seed)
    groups = head_groups()
    images, labels = _dataset(cfg.n_positive, cfg.n_negative, cfg.seed)
    x_all = to_input(images)
    y_all = {k: torch.from_numpy(v) for k, v in labels.items()}
    net = SynthFaceNet({k: len(v) for k, v in groups.items()})
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, cfg.lr, total_steps=cfg.steps)
    gen = torch.Generator().manual_seed(cfg.seed)
    start = time.time()
    net.train()
    for _ in tqdm(range(cfg.steps), desc="synthface classifier", disable=not progress):
        idx = torch.randint(0, len(x_all), (cfg.batch_size,), generator=gen)
        out_ = net(augment(x_all[idx].clone(), gen))
        loss = sum(nn.functional.cross_entropy(out_[k], y_all[k][idx], ignore_index=-1) for k in groups)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    train_seconds = time.time() - start
    net.eval()
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(out / "classifier.safetensors"))
    meta = {"groups": {k: list(v) for k, v in groups.items()}, "width": 32, "train": asdict(cfg),
            "train_seconds": round(train_seconds, 1), **heldout_reports(net, cfg)}
    atomic_write_json(out / "classifier.json", meta)
    return meta



def evaluate_classifier(net: SynthFaceNet, n_pos: int, n_neg: int, seed: int, balanced: bool = False,
                        expressions: bool = False) -> dict:
    """Held-out accuracy and confusion matrix (rows: true, columns: predicted) per head.

    `balanced`: faces with uniform gender, skin tone and age in every occupation, so that rare
    combinations of the skewed world ("a female carpenter") are measured as often as common ones."""
    images, labels = _dataset(n_pos, n_neg, seed, balanced, expressions)
    probs = predict_all(net, images)
    groups = head_groups(expressions)
    report = {"n_positive": n_pos, "n_negative": n_neg, "seed": seed, "balanced": balanced}
    for k, names in groups.items():
        y = labels[k]
        keep = y >= 0
        pred = probs[k].argmax(1)
        acc = float((pred[keep] == y[keep]).mean())
        conf = confusion_from_counts(y[keep], pred[keep], len(names))
        tally = np.zeros((len(names), len(names)), dtype=np.int64)
        np.add.at(tally, (y[keep], pred[keep]), 1)
        # the counts carry the matrix's own uncertainty into the corrected shares' interval
        report[k] = {"accuracy": acc, "confusion": conf.round(6).tolist(), "counts": tally.tolist(),
                     "n": int(keep.sum())}
    face_pred = probs["face"].argmax(1)
    report["face"]["false_positive_rate"] = float(face_pred[labels["face"] == 0].mean())
    report["face"]["recall"] = float(face_pred[labels["face"] == 1].mean())
    return report


def heldout_reports(net: SynthFaceNet, cfg: ClassifierTrainConfig) -> dict:
    """Both held-out reports: `heldout` (the world's skew; feeds the confusion correction) and
    `heldout_balanced` (uniform groups: checks the classifier did not learn occupation shortcuts)."""
    n, seed = cfg.n_heldout, cfg.seed + 1000
    return {"heldout": evaluate_classifier(net, n, n // 4, seed=seed),
            "heldout_balanced": evaluate_classifier(net, n, n // 4, seed=seed + 1, balanced=True)}


def expression_report(net: SynthFaceNet, cfg: "ClassifierTrainConfig", n: int | None = None) -> dict:
    """Every head on held-out labelled-expression renders with uniform groups (the vision-language world's kind)."""
    n = n or cfg.n_heldout
    return evaluate_classifier(net, n, n // 4, seed=cfg.seed + 2000, balanced=True, expressions=True)


def train_expression_head(folder: Path, out: Path, steps: int = 1500, progress: bool = True,
                          n_renders: int | None = None, n_heldout: int | None = None) -> dict:
    """Add the expression head to the classifier in `folder` (all else frozen) and write it to `out`.

    Trained on labelled-expression renders (the vision-language world's) with the same augmentations;
    the other heads' weights and held-out reports are copied unchanged."""
    from tqdm.auto import tqdm

    net, meta = load_classifier(str(folder))
    cfg = ClassifierTrainConfig(**meta["train"])
    torch.manual_seed(cfg.seed)
    width = meta["width"]
    net.add_expression_head(len(EXPRESSIONS), width)
    n_renders = n_renders or cfg.n_positive
    images, labels = _dataset(n_renders, 0, cfg.seed + 3000, expressions=True)
    x_all, y_all = to_input(images), torch.from_numpy(labels["expression"])
    params = list(net.expression_body.parameters()) + list(net.expression_head.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, cfg.lr, total_steps=steps)
    gen = torch.Generator().manual_seed(cfg.seed)
    start = time.time()
    net.expression_body.train()
    for _ in tqdm(range(steps), desc="synthface expression head", disable=not progress):
        idx = torch.randint(0, len(x_all), (cfg.batch_size,), generator=gen)
        logits = net.expression_head(net.expression_body(augment(x_all[idx].clone(), gen)))
        loss = nn.functional.cross_entropy(logits, y_all[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    net.eval()
    report = expression_report(net, cfg, n_heldout)
    groups = {**meta["groups"], "expression": list(EXPRESSIONS)}
    meta = {**meta, "groups": groups, "expression_train": {"steps": steps, "seed": cfg.seed + 3000,
                                                           "n_renders": n_renders,
                                                           "train_seconds": round(time.time() - start, 1)},
            "heldout": {**meta["heldout"], "expression": report["expression"]},
            "heldout_expressions": report}
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(out / "classifier.safetensors"))
    atomic_write_json(out / "classifier.json", meta)
    return meta


def reevaluate_classifier(folder: Path) -> dict:
    """Recompute both held-out reports of the classifier in `folder` and rewrite its classifier.json."""
    net, meta = load_classifier(str(folder))
    cfg = ClassifierTrainConfig(**meta["train"])
    meta = {**meta, **heldout_reports(net, cfg)}
    if "expression" in meta["groups"]:
        report = expression_report(net, cfg)
        meta["heldout"]["expression"], meta["heldout_expressions"] = report["expression"], report
    atomic_write_json(Path(folder) / "classifier.json", meta)
    load_classifier.cache_clear()
    return meta
