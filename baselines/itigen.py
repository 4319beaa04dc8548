"""`itigen`: inclusive tokens learned from reference images, appended to the prompt (embedding level).

Source: Zhang, Qi, Yu, Wang, Zheng, Song, Qi, Lee, Huang, "ITI-GEN: Inclusive Text-to-Image
Generation", ICCV 2023 (code: humansensinglab/ITI-GEN, iti_gen/model.py, prepend.py, generation.py).
As published:
  tokens  = per attribute a, K_a x L x D zeros (`FairToken`, L = 3), D the text encoder's width;
  prompt  = the base prompt's token embeddings with, after its last word, the sum over attributes of
            each one's tokens for the combination's groups (attribute 1 replaces, the others add);
  text    = the CLIP text feature of every combination of groups (2 x 4 = 8 for gender and skin tone);
  loss    = per attribute in turn, over every pair (i, j) of its groups and every set of combinations
            that differ only in it: 1 - cos(mean image(i) - mean image(j), text(i) - text(j)) (direction)
            + relu(lambda - mean cos(base text, text(i), text(j))) (semantic consistency, lambda 0.8),
            summed over pairs / (2 * pairs / K); when a group is missing from the batch (NaN direction)
            the image-text cosine loss replaces the direction loss;
  train   = Adam lr 0.01, 30 epochs of 5 steps, lr halved after epoch 10; per step and attribute a
            batch of len(references) / 5 reference images (shuffled, last partial batch dropped),
            at most 200 per group; base prompt "a headshot of a person";
  generate= train once, use for all: the tokens follow any prompt's last word ("train-once-for-all",
            prepend.py); every combination gets the same number of images (generation.py writes one
            folder per combination).

Unpublished details or choices here, each a parameter with its default:
  - reference images (`reference`): on the embedded worlds, renders of each group with every other
    attribute uniform (`reference_per_group` of them); elsewhere `reference_dir`/<attribute>/<group>/
    holds the user's images (the authors' data/<dataset>/<attribute>/<category> layout), the first
    `reference_per_group` by file name;
  - the CLIP (`clip_model`, "auto"): synthclip on the embedded worlds; else the CLIP whose text tower
    has the pipeline encoder's width (768: openai/clip-vit-large-patch14, the authors' and SD 1.x's;
    1024: OpenCLIP ViT-H/14, SD 2.x's; 1280: OpenCLIP ViT-bigG/14, SDXL's second encoder). SDXL
    gets one set of tokens per encoder (`clip_model_2` for the second), each trained in its own CLIP;
  - insertion: the tokens are inserted after the last word and the end token and padding move
    right by L. The authors overwrite the end token with the first token and read the feature L
    positions later; with SD's tokenizer, which pads with the end token, the two sequences are the
    same. The tokens ride on L placeholder words whose input embeddings are replaced;
  - combination per image: sample index modulo the number of combinations (equal counts per
    prompt when n is a multiple of it, as the paper's per-combination folders);
  - prompts that name a group get the tokens too (ITI-GEN has no keyword bypass);
  - shuffling and the reference renders are seeded by `seed`; training checkpoints every epoch and
    resumes from the last one, identically.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from fairbench import cache
from fairbench.errors import UserError
from fairbench.io import (atomic_save_tensors, atomic_write_json, load_optimizer_tensors, load_safetensors_file,
                          optimizer_tensors, sha256_file)
from fairbench.methods.base import Method, MethodContext, own_clip
from fairbench.models.backend import Conditioning, DiffusersBackend, weights_fingerprint
from fairbench.outputs.rundir import IMAGE_SUFFIXES  # the image files fairbench reads anywhere
from fairbench.prompts import attribute, parse_attributes
from fairbench.registry import Count
from fairbench.units import WorkUnit

BASE_PROMPT = "a headshot of a person"
TOKEN_LENGTH = 3
LR = 0.01
EPOCHS = 30
STEPS_PER_EPOCH = 5
LAMBDA = 0.8
REFERENCE_PER_GROUP = 200
MILESTONE, GAMMA = 10, 0.5  # MultiStepLR(milestones=[10], gamma=0.5), stepped once per epoch
CLIP_BY_WIDTH = {768: "openai/clip-vit-large-patch14", 1024: "laion/CLIP-ViT-H-14-laion2B-s32B-b79K",
                 1280: "laion/CLIP-ViT-bigG-14-laion2B-39B-b160k"}
PLACEHOLDERS = ("*", "x", "z", "a")  # the first that is one token, kept as one, in every tokenizer involved
TOKEN_ARGS = ("attributes", "base_prompt", "token_length", "lr", "epochs", "steps_per_epoch", "lam",
              "reference_per_group", "reference_dir", "seed")


# the mathematics ---------------------------------------------------------------------------------
def combinations(ks: list[int]) -> list[tuple[int, ...]]:
    """Every combination of groups, the first attribute outermost (the authors' order)."""
    return list(itertools.product(*(range(k) for k in ks)))


def index_sets(combos: list[tuple[int, ...]], attr: int, k: int) -> torch.Tensor:
    """(S, k): each row the combinations that differ only in attribute `attr`, ordered by its group."""
    rest: dict[tuple[int, ...], list[int]] = {}
    for i, c in enumerate(combos):
        rest.setdefault(c[:attr] + c[attr + 1:], [0] * k)[c[attr]] = i
    return torch.tensor(list(rest.values()), dtype=torch.long)


def combination_vectors(tokens: list[torch.Tensor], combos: list[tuple[int, ...]]) -> torch.Tensor:
    """(C, L, D): per combination, the sum over attributes of its groups' tokens."""
    return torch.stack([sum(t[g] for t, g in zip(tokens, c)) for c in combos])  # type: ignore[misc]


def direction_loss(image: torch.Tensor, labels: torch.Tensor, text: torch.Tensor, base: torch.Tensor,
                   sets: torch.Tensor, lam: float = LAMBDA) -> tuple[torch.Tensor, torch.Tensor]:
    """(direction, consistency) losses of one attribute; image and text features unit-norm, base (E,)."""
    k = sets.shape[1]
    pairs = list(itertools.combinations(range(k), 2))
    directions, consistencies = [], []
    for i, j in pairs:
        delta_img = image[labels == i].mean(0) - image[labels == j].mean(0)
        delta_img = delta_img / delta_img.norm()
        delta_txt = text[sets[:, i]] - text[sets[:, j]]
        delta_txt = delta_txt / delta_txt.norm(dim=-1, keepdim=True)
        directions.append((1 - delta_txt @ delta_img).mean())
        sims = torch.stack([text[sets[:, i]] @ base, text[sets[:, j]] @ base], dim=1).mean(dim=1)
        consistencies.append(torch.relu(lam - sims).mean())
    divide = 2 * len(pairs) / k
    return torch.stack(directions).sum() / divide, torch.stack(consistencies).sum() / divide


def cosine_loss(image: torch.Tensor, labels: torch.Tensor, text: torch.Tensor, sets: torch.Tensor) -> torch.Tensor:
    """Per combination 1 - the mean cosine to the batch's images of its group, summed over combinations
    and divided by the number of sets (0 for a combination whose group has no image in the batch)."""
    loss = image.new_zeros(())
    for g in range(sets.shape[1]):
        mine = image[labels == g]
        if len(mine):
            loss = loss + (1 - (mine @ text[sets[:, g]].T).mean(dim=0)).sum()
    return loss / len(sets)


def learning_rate(lr: float, epoch: int) -> float:
    """The authors' MultiStepLR: lr, halved from epoch MILESTONE on (epochs counted from 0)."""
    return lr * (GAMMA if epoch >= MILESTONE else 1.0)


# tokens inside a text encoder ------------------------------------------------------------------
def _ids(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, truncation=False)["input_ids"])


def placeholder(tokenizers: list[Any], length: int) -> str:
    """A word that each tokenizer turns into exactly one token, kept separate when repeated."""
    for word in PLACEHOLDERS:
        if all(len(_ids(t, " ".join([word] * length))) == len(_ids(t, "")) + length for t in tokenizers):
            return word
    raise UserError(f"itigen: none of {PLACEHOLDERS} is one token in this pipeline's tokenizer")


@dataclass(frozen=True)
class Insertion:
    """The token ids of `text` + L placeholder words, and where the placeholders sit."""

    ids: tuple[int, ...]
    positions: tuple[int, ...]

    @classmethod
    def of(cls, tokenizer: Any, text: str, word: str, length: int, max_length: int) -> "Insertion":
        """Tokenise the text with the placeholders after its last word; refuse one that would be cut."""
        base = _ids(tokenizer, text)
        ids = _ids(tokenizer, f"{text} {' '.join([word] * length)}")
        end = len(base) - 1  # the end token's position; the placeholders take it and the next L - 1
        if ids[:end] != base[:end] or len(ids) != len(base) + length:
            raise UserError(f"itigen: the prompt {text!r} does not tokenise cleanly with the inclusive tokens")
        if len(ids) > max_length:
            raise UserError(f"itigen: the prompt {text!r} leaves no room for {length} inclusive tokens "
                            f"({len(base)} of {max_length} tokens)")
        return cls(tuple(ids), tuple(range(end, end + length)))


class TokenHook:
    """Replaces, in a text encoder's input embeddings, the placeholders of the rows it is told to expect
    (matched by their token ids, in order) with the given vectors; every other row passes untouched."""

    def __init__(self, encoder: torch.nn.Module) -> None:
        self.pending: list[tuple[Insertion, torch.Tensor]] = []
        self.handle = encoder.get_input_embeddings().register_forward_hook(self)

    def __call__(self, module: torch.nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
        ids = inputs[0]
        rows, cols, vectors = [], [], []
        for r in range(ids.shape[0]):
            if not self.pending:
                break
            ins, vec = self.pending[0]
            if tuple(ids[r, :len(ins.ids)].tolist()) == ins.ids:
                rows += [r] * len(ins.positions)
                cols += list(ins.positions)
                vectors.append(vec)
                self.pending.pop(0)
        if not rows:
            return output
        out = output.clone()
        out[rows, cols] = torch.cat(vectors).to(out)
        return out

    def remove(self) -> None:
        """Detach from the encoder."""
        self.handle.remove()


def max_tokens(tokenizer: Any, encoder: torch.nn.Module) -> int:
    """The context the encoder is called with (the tokenizer's, capped by the position table)."""
    table = getattr(encoder.config, "max_position_embeddings", None) or tokenizer.model_max_length
    return int(min(tokenizer.model_max_length, table))


# reference images ------------------------------------------------------------------------------
def folder_references(root: Path, attr: str, per_group: int) -> list[list[Path]]:
    """The first `per_group` image files (by name) of each group of `attr` under root/attr/group/."""
    out = []
    for g in attribute(attr).groups:
        folder = root / attr / g.name
        files = sorted(p for p in folder.glob("*") if p.suffix.lower() in IMAGE_SUFFIXES) if folder.is_dir() else []
        if not files:
            raise UserError(f"itigen: no reference images in {folder} (one folder of images per group of {attr!r})")
        out.append(files[:per_group])
    return out


def open_image(path: Path) -> Image.Image:
    """A reference image as RGB, or a one-line error naming the file."""
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise UserError(f"itigen: cannot read reference image {path} ({exc})") from None


# the method ------------------------------------------------------------------------------------
class ITIGen(Method):
    """Append inclusive tokens, learned from reference images of each group, to every prompt."""

    level = "embedding"
    architectures = ("sd", "sdxl")
    source = "Zhang et al., ITI-GEN: Inclusive Text-to-Image Generation (ICCV 2023; humansensinglab/ITI-GEN)"

    def __init__(self, attributes: str = "gender", base_prompt: str = BASE_PROMPT,
                 token_length: Count = TOKEN_LENGTH, lr: float = LR, epochs: Count = EPOCHS,
                 steps_per_epoch: Count = STEPS_PER_EPOCH, lam: float = LAMBDA,
                 reference_per_group: Count = REFERENCE_PER_GROUP, reference_dir: str | None = None,
                 clip_model: str = "auto", clip_model_2: str = "auto", seed: int = 0, cache: bool = True) -> None:
        super().__init__()
        self.attributes = parse_attributes(attributes)
        self.token_length, self.epochs, self.steps = int(token_length), int(epochs), int(steps_per_epoch)
        self.lr, self.lam, self.per_group = float(lr), float(lam), int(reference_per_group)
        if self.token_length < 1 or self.epochs < 1 or self.steps < 1 or self.per_group < 1:
            raise UserError("itigen: token_length, epochs, steps_per_epoch and reference_per_group must be >= 1")
        if not (self.lr > 0 and np.isfinite(self.lr)) or not np.isfinite(self.lam):
            raise UserError(f"itigen: lr must be a positive number and lam finite; got lr={lr}, lam={lam}")
        self.base_prompt, self.reference_dir, self.seed, self.cache = base_prompt, reference_dir, int(seed), bool(cache)
        self.clip_models = (clip_model, clip_model_2)
        self.args: dict[str, Any] = {"attributes": self.attributes, "base_prompt": base_prompt,
                                     "token_length": self.token_length, "lr": self.lr, "epochs": self.epochs,
                                     "steps_per_epoch": self.steps, "lam": self.lam,
                                     "reference_per_group": self.per_group, "reference_dir": reference_dir,
                                     "clip_model": clip_model, "clip_model_2": clip_model_2, "seed": self.seed}
        self.combos = combinations([attribute(a).k for a in self.attributes])
        self.backend: DiffusersBackend | None = None
        self.tokens: dict[str, list[torch.Tensor]] = {}  # encoder part -> per attribute (K, L, D)
        self.word = ""

    # preparation ---------------------------------------------------------------------------
    def encoders(self, backend: DiffusersBackend) -> dict[str, tuple[torch.nn.Module, Any]]:
        """The pipeline's text encoders that condition the UNet, with their tokenizers."""
        out = {"text_encoder": (backend.text_encoder, backend.tokenizer)}
        if backend.arch == "sdxl":
            out["text_encoder_2"] = (backend.pipe.text_encoder_2, backend.pipe.tokenizer_2)
        return out

    @staticmethod
    def embedded(backend: DiffusersBackend) -> bool:
        """Whether the pipeline is an embedded world that renders its own references (its CLIP: own_clip)."""
        return hasattr(backend.pipe, "reference_images")

    def clip_for(self, backend: DiffusersBackend, part: str, width: int) -> str:
        """The CLIP whose text tower the tokens of one encoder are trained in."""
        chosen = self.clip_models[part == "text_encoder_2"]
        if chosen != "auto":
            return chosen
        if own := own_clip(backend):
            return own
        if width not in CLIP_BY_WIDTH:
            raise UserError(f"itigen: no known CLIP has a {width}-wide text tower; give clip_model=<hub id or folder>")
        return CLIP_BY_WIDTH[width]

    def references(self, backend: DiffusersBackend, attr: str) -> tuple[list[list[Image.Image]], str]:
        """Each group's reference images, and a hash of what they are (the cache key's part)."""
        if self.reference_dir is None:
            if not self.embedded(backend):
                raise UserError("itigen needs reference images of each group: give reference_dir=<folder> holding "
                                "<attribute>/<group>/ image folders")
            try:
                return backend.pipe.reference_images(attr, self.per_group, self.seed)
            except ValueError as exc:  # an attribute the world does not render
                raise UserError(f"itigen: {exc}") from None
        files = folder_references(Path(self.reference_dir), attr, self.per_group)
        digest = hashlib.sha256(json.dumps([[f.name, sha256_file(f)] for g in files for f in g]).encode()).hexdigest()
        return [[open_image(f) for f in g] for g in files], digest

    def prepare(self, backend: DiffusersBackend, suite: Any, context: MethodContext | None = None) -> None:
        """Train (or load from the cache) the inclusive tokens of every text encoder."""
        from fairbench.models.dual_encoder import DualEncoder

        self.backend = backend
        tokenizers = [t for _, t in self.encoders(backend).values()]
        self.word = placeholder(tokenizers, self.token_length)
        self.args["training"] = {}
        progress = bool(context and context.progress)
        refs = [self.references(backend, a) for a in self.attributes]
        for part, (encoder, _) in self.encoders(backend).items():
            width = encoder.get_input_embeddings().embedding_dim
            clip = DualEncoder(self.clip_for(backend, part, width), device=backend.device)
            clip.model.requires_grad_(False)
            if not hasattr(clip.model, "text_model"):
                raise UserError(f"itigen: {clip.model_id!r} has no text tower to learn tokens in")
            text_width = clip.model.text_model.get_input_embeddings().embedding_dim
            if text_width != width:
                raise UserError(f"itigen: {clip.model_id!r}'s text tower is {text_width} wide; the pipeline's {part} "
                                f"is {width} wide, so its tokens cannot be inserted there")
            folder = cache.folder("itigen", self.cache_spec(clip, [h for _, h in refs]))
            self.tokens[part], self.args["training"][part] = train_tokens(
                self, clip, [r for r, _ in refs], folder if self.cache else None, progress)

    def token_spec(self) -> dict[str, Any]:
        """The arguments that determine the tokens (a subclass's own arguments do not)."""
        return {k: self.args[k] for k in TOKEN_ARGS}

    def cache_spec(self, clip: Any, reference_hashes: list[str]) -> dict[str, Any]:
        """Everything that determines the trained tokens."""
        return {"spec": self.token_spec(), "clip": clip.model_id, "word": self.word, "references": reference_hashes,
                "clip_weights": weights_fingerprint({"clip": clip.model})}

    # generation ----------------------------------------------------------------------------
    def combination_of(self, unit: WorkUnit) -> int:
        """The combination an image gets: its sample index modulo the number of combinations."""
        return unit.sample_idx % len(self.combos)

    def insertions(self, texts: list[str]) -> dict[str, list[Insertion]]:
        """Per text encoder, each text's ids with the placeholders and their positions."""
        assert self.backend is not None
        return {part: [Insertion.of(tok, t, self.word, self.token_length, max_tokens(tok, enc)) for t in texts]
                for part, (enc, tok) in self.encoders(self.backend).items()}

    @torch.no_grad()
    def inclusive(self, texts: list[str], combos: list[int]) -> tuple[Conditioning, list[Insertion]]:
        """The prompts' conditioning with each row's combination's tokens, and the first encoder's insertions."""
        if self.backend is None or not self.tokens:
            raise RuntimeError("ITIGen.prepare() must run before generation")
        insertions = self.insertions(texts)
        hooks = []
        try:
            for part, (encoder, _) in self.encoders(self.backend).items():
                vectors = combination_vectors(self.tokens[part], self.combos)
                hook = TokenHook(encoder)
                hook.pending = [(ins, vectors[c]) for ins, c in zip(insertions[part], combos)]
                hooks.append(hook)
            cond = self.backend.encode([f"{t} {' '.join([self.word] * self.token_length)}" for t in texts],
                                       guidance_scale=0.0)
            if any(h.pending for h in hooks):
                raise RuntimeError("itigen: a text encoder did not see every prompt it was given")
        finally:
            for hook in hooks:
                hook.remove()
        return cond, insertions["text_encoder"]

    def transform_conditioning(self, cond: Conditioning, units: list[WorkUnit], texts: list[str]) -> Conditioning:
        """The prompt's states re-encoded with its combination's tokens after the last word."""
        new, _ = self.inclusive(texts, [self.combination_of(u) for u in units])
        return replace(cond, prompt_embeds=new.prompt_embeds.to(cond.prompt_embeds),
                       pooled=None if new.pooled is None else new.pooled.to(cond.pooled))


def text_features(clip: Any, insertions: list[Insertion], vectors: torch.Tensor | None) -> torch.Tensor:
    """Unit-norm CLIP text features of tokenised texts, their placeholders replaced by `vectors` (N, L, D)."""
    from fairbench.models.dual_encoder import _features

    width = max(len(i.ids) for i in insertions)
    pad = clip.processor.tokenizer.pad_token_id or 0
    ids = torch.tensor([list(i.ids) + [pad] * (width - len(i.ids)) for i in insertions])
    mask = torch.tensor([[1] * len(i.ids) + [0] * (width - len(i.ids)) for i in insertions])
    text_model = clip.model.text_model
    hook = TokenHook(text_model)
    if vectors is not None:
        hook.pending = list(zip(insertions, vectors))
    try:
        feats = _features(clip.model.get_text_features(input_ids=ids.to(clip.device), attention_mask=mask.to(clip.device)))
    finally:
        hook.remove()
    return torch.nn.functional.normalize(feats, dim=-1)


def train_tokens(method: ITIGen, clip: Any, references: list[list[list[Image.Image]]], folder: Path | None,
                 progress: bool = False) -> tuple[list[torch.Tensor], dict[str, Any]]:
    """ITI-GEN's training loop in one CLIP; checkpointed every epoch under `folder` and resumed from it."""
    if folder is not None and (folder / "tokens.json").is_file():  # written last: training finished
        saved = load_safetensors_file(folder / "tokens.safetensors", "ITI-GEN tokens")
        return [saved[a] for a in method.attributes], json.loads((folder / "tokens.json").read_text())["training"]
    tok = clip.processor.tokenizer
    word, length = method.word, method.token_length
    if len(_ids(tok, " ".join([word] * length))) != len(_ids(tok, "")) + length:
        raise UserError(f"itigen: the placeholder {word!r} is not one token in {clip.model_id!r}'s tokenizer")
    limit = max_tokens(tok, clip.model.text_model)
    base_ins = Insertion.of(tok, method.base_prompt, word, length, limit)
    base = text_features(clip, [Insertion(tuple(_ids(tok, method.base_prompt)), ())], None)[0]
    insertions = [base_ins] * len(method.combos)
    width = clip.model.text_model.get_input_embeddings().embedding_dim
    ks = [attribute(a).k for a in method.attributes]
    tokens = [torch.nn.Parameter(torch.zeros(k, length, width, device=clip.device)) for k in ks]
    optimizers = [torch.optim.Adam([t], lr=method.lr) for t in tokens]
    # reference image features are fixed (frozen CLIP), so they are computed once
    feats, labels = [], []
    for groups in references:
        feats.append(torch.cat([clip.image_features(g) for g in groups]))
        labels.append(torch.cat([torch.full((len(g),), i) for i, g in enumerate(groups)]).to(clip.device))
    sets = [index_sets(method.combos, a, k) for a, k in enumerate(ks)]
    start = 0
    if folder is not None and (folder / "state.json").is_file():
        start = json.loads((folder / "state.json").read_text())["epochs_done"]
        state = load_safetensors_file(folder / "checkpoint.safetensors", "ITI-GEN checkpoint")
        for a, (t, opt) in enumerate(zip(tokens, optimizers)):
            with torch.no_grad():
                t.copy_(state[f"{a}.tokens"])
            load_optimizer_tensors(opt, [str(a)], state)
    losses: list[float] = []
    for epoch in tqdm(range(start, method.epochs), desc="itigen tokens", unit="epoch", disable=not progress,
                      initial=start, total=method.epochs):
        for opt in optimizers:
            opt.param_groups[0]["lr"] = learning_rate(method.lr, epoch)
        orders = [torch.from_numpy(np.random.default_rng([method.seed, epoch, a]).permutation(len(f)))
                  for a, f in enumerate(feats)]
        for step in range(method.steps):
            for a in range(len(ks)):
                size = len(feats[a]) // method.steps
                if size < 1:
                    raise UserError(f"itigen: {len(feats[a])} reference images of {method.attributes[a]!r} cannot "
                                    f"fill {method.steps} steps per epoch")
                batch = orders[a][step * size:(step + 1) * size]
                image, label = feats[a][batch], labels[a][batch]
                text = text_features(clip, insertions, combination_vectors(list(tokens), method.combos))
                direction, consistency = direction_loss(image, label, text, base, sets[a], method.lam)
                loss = (direction if not torch.isnan(direction) else cosine_loss(image, label, text, sets[a])) + consistency
                optimizers[a].zero_grad()
                loss.backward()
                optimizers[a].step()
                losses.append(loss.item())
        if folder is not None:
            state = {f"{a}.tokens": t.detach() for a, t in enumerate(tokens)}
            for a, opt in enumerate(optimizers):
                state.update(optimizer_tensors(opt, [str(a)]))
            atomic_save_tensors(folder / "checkpoint.safetensors", state)
            atomic_write_json(folder / "state.json", {"epochs_done": epoch + 1})
    training = {"clip": clip.model_id, "references": [[len(g) for g in groups] for groups in references],
                "epochs": method.epochs, "steps": method.epochs * method.steps * len(ks),
                "last_loss": round(losses[-1], 6) if losses else None}
    result = [t.detach().clone() for t in tokens]
    if folder is not None:
        atomic_save_tensors(folder / "tokens.safetensors", dict(zip(method.attributes, result)))
        atomic_write_json(folder / "tokens.json", {"args": method.token_spec(),
                                                   "training": training})
    return result, training
