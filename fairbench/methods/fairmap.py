"""`fairmap`: Fair Mapping (Li, Hu, Zhang, Zheng, Zhang, Wang; "Fair Text-to-Image Diffusion via
Fair Mapping", AAAI 2025, arXiv 2311.17695). No official code is public: this is a documented
RECONSTRUCTION (docs/fairmap.md). Known parts are implemented as published; every unpublished
detail is a parameter with the default below.

Known: text encoder and diffusion model frozen; a small mapping network M after the text encoder
maps the conditioning token states; loss L = L_text + lambda * L_fair, where L_text keeps M(E(p))
close to E(p) and L_fair makes the mapped neutral embedding equidistant from the embeddings of the
prompt specialised to each group; at inference a keyword detector bypasses M for prompts that
already name a group.

Reconstruction defaults (unknown in the paper): M = one linear d x d layer with bias, identity
initialised (`depth` > 1: residual MLP, last layer zero-initialised, still identity at start;
`init=default`: PyTorch's default initialisation, a plain MLP); one joint map for every attribute
(`per_attribute=true`: one map per attribute, as the reviews describe, each trained on its own
attribute's L_fair and applied in turn, `apply=` choosing which act); group embeddings are fixed
targets, not mapped (`map_groups=true`: they pass through M too and L_text covers every prompt,
neutral and group); d = Euclidean distance per
token, averaged over tokens; L_fair = sum_j (d(v, v_j) - mean_k d(v, v_k))^2 per attribute, summed
over attributes; L_text = mean over prompts and tokens of ||M(E(p)) - E(p)||^2; lambda = 100
(map_groups and lambda chosen by the embedded worlds' ablation, docs/fairmap_ablation.md); Adam, lr 1e-3, 400
full-batch steps; training prompts = the suite's training split; group words = the adjectives
of prompts/attributes.yaml; detector words = their `words` lists; the unconditional (negative)
embedding is not mapped.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from torch import nn

from fairbench.cache import folder as cache_folder
from fairbench.errors import UserError
from fairbench.io import atomic_save_tensors, atomic_write_json, load_safetensors_file
from fairbench.methods.base import Method, MethodContext
from fairbench.models.backend import Conditioning, DiffusersBackend, weights_fingerprint
from fairbench.prompts import KeywordDetector, SuiteSpec, attribute, parse_attributes
from fairbench.units import WorkUnit

SOURCE = "Li et al., Fair Mapping (AAAI 2025, arXiv 2311.17695); fairbench reconstruction"


INITS = ("identity", "default")


class MappingNetwork(nn.Module):
    """Token-wise map R^d -> R^d. init "identity": identity at initialisation (depth > 1: residual MLP
    whose last layer starts at zero); "default": PyTorch's default initialisation, a plain MLP."""

    def __init__(self, dim: int, depth: int = 1, hidden: int | None = None, init: str = "identity") -> None:
        super().__init__()
        if init not in INITS:
            raise UserError(f"fairmap: init must be one of {list(INITS)}, got {init!r}")
        self.dim, self.depth, self.init = dim, depth, init
        if depth == 1:
            self.linear = nn.Linear(dim, dim)
            if init == "identity":
                with torch.no_grad():
                    self.linear.weight.copy_(torch.eye(dim))
                    self.linear.bias.zero_()
        else:
            width = hidden or dim
            dims = [dim] + [width] * (depth - 1) + [dim]
            layers: list[nn.Module] = []
            for i in range(depth):
                layers.append(nn.Linear(dims[i], dims[i + 1]))
                if i < depth - 1:
                    layers.append(nn.GELU())
            self.mlp = nn.Sequential(*layers)
            if init == "identity":
                nn.init.zeros_(self.mlp[-1].weight)
                nn.init.zeros_(self.mlp[-1].bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.depth == 1:
            return self.linear(x)
        return x + self.mlp(x) if self.init == "identity" else self.mlp(x)


class AttributeMaps(nn.Module):
    """One map per attribute, applied in turn (the reviews: one mapping module per bias type);
    `active` chooses which of them act, in the trained order."""

    def __init__(self, attributes: list[str], dim: int, depth: int = 1, hidden: int | None = None,
                 init: str = "identity") -> None:
        super().__init__()
        self.dim, self.depth = dim, depth
        self.maps = nn.ModuleDict({a: MappingNetwork(dim, depth, hidden, init) for a in attributes})
        self.active = list(attributes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for a in self.active:
            x = self.maps[a](x)
        return x


def token_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Euclidean distance per token, averaged over tokens: (..., L, D) x (..., L, D) -> (...)."""
    return (a - b).norm(dim=-1).mean(dim=-1)


def pooled_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Euclidean distance between the token-averaged states: (..., L, D) x (..., L, D) -> (...)."""
    return (a.mean(dim=-2) - b.mean(dim=-2)).norm(dim=-1)


DISTANCES = {"token": token_distance, "pooled": pooled_distance}


def fairness_loss(v: torch.Tensor, v_groups: torch.Tensor, distance: str = "token") -> torch.Tensor:
    """sum_j (d(v, v_j) - mean_k d(v, v_k))^2, averaged over prompts. v: (P, L, D); v_groups: (P, K, L, D)."""
    d = DISTANCES[distance](v.unsqueeze(1), v_groups)  # (P, K)
    return ((d - d.mean(dim=1, keepdim=True)) ** 2).sum(dim=1).mean()


def text_loss(mapped: torch.Tensor, original: torch.Tensor) -> torch.Tensor:
    """Mean over prompts and tokens of ||M(E(p)) - E(p)||^2."""
    return ((mapped - original) ** 2).sum(dim=-1).mean()


MAX_STEPS = 1_000_000  # a training budget beyond any run's; more is a typo, not a plan


@dataclass
class FairMapConfig:
    """Hyperparameters (the unpublished ones carry fairbench's defaults)."""

    attributes: list[str] = field(default_factory=lambda: ["gender"])
    lambda_fair: float = 100.0
    depth: int = 1
    hidden: int | None = None
    map_groups: bool = False
    lr: float = 1e-3
    steps: int = 400
    seed: int = 0
    split: str = "train"
    use_text_loss: bool = True
    use_fair_loss: bool = True
    distance: str = "token"
    init: str = "identity"
    per_attribute: bool = False

    def __post_init__(self) -> None:
        if self.split not in ("train", "test", "all"):
            raise UserError(f"fairmap: split must be train, test or all (the training prompts), got {self.split!r}")
        if self.init not in INITS:
            raise UserError(f"fairmap: init must be one of {list(INITS)}, got {self.init!r}")
        if self.distance not in DISTANCES:
            raise UserError(f"fairmap: distance must be one of {sorted(DISTANCES)}, got {self.distance!r}")
        for name, most in (("steps", MAX_STEPS), ("depth", 64), ("hidden", 65_536)):
            value = getattr(self, name)
            if value is not None and not 1 <= value <= most:
                raise UserError(f"fairmap: {name} must be between 1 and {most:,}, got {value}")
        if self.lr <= 0 or self.lambda_fair < 0:
            raise UserError("fairmap: "
                            f"lr must be positive and lambda_fair non-negative, got {self.lr} and {self.lambda_fair}")


def training_texts(suite: SuiteSpec, attributes: list[str], split: str) -> tuple[list[str], dict[str, list[list[str]]]]:
    """Neutral prompts of the split and, per attribute, each prompt specialised to every group."""
    prompts = suite.select(split)  # type: ignore[arg-type]
    if not prompts:
        raise UserError(f"suite {suite.name!r} has no {split!r} prompts to train Fair Mapping on")
    neutral = [suite.text(p) for p in prompts]
    groups = {a: [[suite.group_text(p, g.adjective) for g in attribute(a).groups] for p in prompts]
              for a in attributes}
    return neutral, groups


def text_encoder_hash(backend: DiffusersBackend) -> str:
    """sha256 over every parameter of the text encoder (names, shapes, values): which encoder a map fits.

    Values are hashed at bfloat16 precision, so one encoder loaded in float32 or bfloat16 has one
    identity (a map trained in one precision applies in the other)."""
    encoders = backend.text_encoders
    # one encoder keeps the unprefixed hash that SD 1.x checkpoints were written with
    return weights_fingerprint({"": backend.text_encoder} if len(encoders) == 1 else encoders, samples=None)


def encode_all(backend: DiffusersBackend, texts: list[str], batch_size: int = 64) -> torch.Tensor:
    """Conditioning token states of texts, computed once."""
    chunks = [backend.encode(texts[i : i + batch_size], guidance_scale=0.0).prompt_embeds.float().cpu()
              for i in range(0, len(texts), batch_size)]
    return torch.cat(chunks)


def describe_maps(net: nn.Module) -> str:
    """'one joint map' or 'maps for gender, skin_tone'."""
    return f"maps for {', '.join(net.maps)}" if isinstance(net, AttributeMaps) else "one joint map"


def build_network(cfg: FairMapConfig, dim: int) -> nn.Module:
    """The map a configuration trains: one joint map, or one per attribute."""
    if cfg.per_attribute:
        return AttributeMaps(cfg.attributes, dim, cfg.depth, cfg.hidden, cfg.init)
    return MappingNetwork(dim, cfg.depth, cfg.hidden, cfg.init)


def train_map(net: nn.Module, e_neutral: torch.Tensor, e_groups: list[torch.Tensor], cfg: FairMapConfig) -> list[dict]:
    """Adam on L_text + lambda * sum over `e_groups` of L_fair; the loss history.

    map_groups: the group embeddings pass through the map too, and L_text covers every prompt
    (the neutral prompts and each group prompt)."""
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    history = []
    for step in range(cfg.steps):
        v = net(e_neutral)
        mapped = [net(e) for e in e_groups] if cfg.map_groups else e_groups
        lt, lf = torch.zeros(()), torch.zeros(())
        if cfg.use_text_loss:
            lt = text_loss(v, e_neutral)
            if cfg.map_groups:  # the mean over every prompt: P neutral and P * K_a per attribute
                sizes = [e_neutral.shape[0]] + [e.shape[0] * e.shape[1] for e in e_groups]
                parts = [lt] + [text_loss(m, e) for m, e in zip(mapped, e_groups)]
                lt = sum(n * part for n, part in zip(sizes, parts)) / sum(sizes)
        if cfg.use_fair_loss:
            for m in mapped:
                lf = lf + fairness_loss(v, m, cfg.distance)
        loss = lt + cfg.lambda_fair * lf
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 50 == 0 or step == cfg.steps - 1:
            history.append({"step": step, "loss": loss.item(), "text": lt.item(), "fair": lf.item()})
    return history


def fit_mapping(backend: DiffusersBackend, suite: SuiteSpec, cfg: FairMapConfig) -> tuple[nn.Module, dict]:
    """Train M on cached text embeddings; returns the network and training statistics."""
    start = time.perf_counter()
    neutral, groups = training_texts(suite, cfg.attributes, cfg.split)
    e_neutral = encode_all(backend, neutral)
    e_groups = {a: encode_all(backend, [t for row in rows for t in row]).view(len(neutral), len(rows[0]),
                                                                               *e_neutral.shape[1:])
                for a, rows in groups.items()}
    encode_s = time.perf_counter() - start
    torch.manual_seed(cfg.seed)
    net = build_network(cfg, e_neutral.shape[-1])
    if isinstance(net, AttributeMaps):  # each attribute's map trained alone, on its own groups
        history = {a: train_map(net.maps[a], e_neutral, [e_groups[a]], cfg) for a in cfg.attributes}
    else:
        history = train_map(net, e_neutral, list(e_groups.values()), cfg)
    stats = {"n_prompts": len(neutral), "encode_seconds": round(encode_s, 3),
             "train_seconds": round(time.perf_counter() - start - encode_s, 3), "history": history}
    return net.eval(), stats


class FairMapping(Method):
    """Map the prompt's conditioning token states with a trained M (bypassed for prompts naming a group)."""

    level = "embedding"
    architectures = ("sd", "sdxl")
    source = SOURCE

    def __init__(self, checkpoint: str | None = None, attributes: str = "gender",
                 lambda_fair: float = FairMapConfig.lambda_fair, depth: int = FairMapConfig.depth,
                 hidden: int | None = None, steps: int = FairMapConfig.steps, lr: float = FairMapConfig.lr,
                 detector: bool = True, map_groups: bool = FairMapConfig.map_groups, seed: int = 0,
                 use_text_loss: bool = True, use_fair_loss: bool = True, train_suite: str = "occupations",
                 distance: str = FairMapConfig.distance, init: str = FairMapConfig.init,
                 per_attribute: bool = FairMapConfig.per_attribute, apply: str | None = None,
                 split: str = FairMapConfig.split) -> None:
        super().__init__()
        attrs = parse_attributes(attributes)
        self.cfg = FairMapConfig(attributes=attrs, lambda_fair=float(lambda_fair), depth=int(depth), hidden=hidden,
                                 map_groups=bool(map_groups), lr=float(lr), steps=int(steps), seed=int(seed),
                                 use_text_loss=bool(use_text_loss), use_fair_loss=bool(use_fair_loss),
                                 distance=str(distance), init=str(init), per_attribute=bool(per_attribute),
                                 split=str(split))
        # per_attribute: which attributes' maps act (default all, in turn); chosen per evaluation
        self.apply = parse_attributes(apply) if apply else None
        if self.apply and not self.cfg.per_attribute:
            raise UserError("fairmap: apply= chooses among per-attribute maps; add per_attribute=true")
        self.checkpoint = checkpoint
        self.train_suite = train_suite
        self.use_detector = bool(detector)
        self.detector = KeywordDetector(attrs)
        self.net: nn.Module | None = None
        self.args = {"checkpoint": checkpoint, "detector": self.use_detector, "train_suite": train_suite,
                     **asdict(self.cfg), **({"apply": self.apply} if self.apply else {})}
        self.bypassed = 0

    def prepare(self, backend: DiffusersBackend, suite: SuiteSpec, context: MethodContext | None = None) -> None:
        """Load the checkpoint, or fit one on `train_suite`'s training split (cached by its full specification)."""
        from fairbench.prompts import load_suite

        if self.checkpoint:
            self.net, meta = load_checkpoint(Path(self.checkpoint))
            enc = text_encoder_hash(backend)
            if meta["text_encoder_sha256"] != enc:
                raise UserError(f"Fair Mapping checkpoint {self.checkpoint} was trained for another text encoder "
                                f"({meta['text_encoder_sha256'][:12]}, this model's is {enc[:12]})")
            self.args["checkpoint_meta"] = {k: meta[k] for k in ("config", "text_encoder", "suite")}
            self.cfg = FairMapConfig(**meta["config"])
        else:
            path = train_and_save(backend, load_suite(self.train_suite), self.cfg, cache=True)
            self.checkpoint = str(path)
            self.net, _ = load_checkpoint(path)
            self.args["checkpoint"] = self.checkpoint
        if self.apply:
            if not isinstance(self.net, AttributeMaps) or set(self.apply) - set(self.net.maps):
                raise UserError(f"fairmap: apply={','.join(self.apply)} needs a per-attribute map of those attributes; "
                                f"{self.checkpoint} holds {describe_maps(self.net)}")
            self.net.active = [a for a in self.cfg.attributes if a in self.apply]
        # the words of the attributes the acting maps were trained for
        self.detector = KeywordDetector(self.apply or self.cfg.attributes)

    @torch.no_grad()
    def transform_conditioning(self, cond: Conditioning, units: list[WorkUnit], texts: list[str]) -> Conditioning:
        """M on the prompt embeddings of rows whose text names no group; the negative embedding stays."""
        if self.net is None:
            raise RuntimeError("FairMapping.prepare() must run before generation")
        pe = cond.prompt_embeds.clone()
        dev, dt = pe.device, pe.dtype
        net = self.net.to(dev)
        for i, text in enumerate(texts):
            if self.use_detector and self.detector.names_group(text):
                self.bypassed += 1
                continue
            pe[i] = net(pe[i].float()).to(dt)
        # SDXL: pe holds both encoders' token states, so the map reaches both; the pooled embedding (which
        # enters through the time embedding, not cross-attention) passes unchanged: reconstruction choice
        return replace(cond, prompt_embeds=pe)


def checkpoint_meta(backend: DiffusersBackend, suite: SuiteSpec, cfg: FairMapConfig, stats: dict) -> dict:
    """JSON side of a checkpoint: config, groups, text encoder identity and hash, training data."""
    return {
        "method": "fairmap", "reconstruction": True, "source": SOURCE, "config": asdict(cfg),
        "groups": {a: attribute(a).group_names for a in cfg.attributes},
        "adjectives": {a: [g.adjective for g in attribute(a).groups] for a in cfg.attributes},
        "text_encoder": {"model": backend.source, "class": type(backend.text_encoder).__name__},
        "text_encoder_sha256": text_encoder_hash(backend),
        "suite": {"name": suite.name, "version": suite.version, "split": cfg.split,
                  "group_template": suite.group_template},
        "training": stats,
    }


def save_checkpoint(net: nn.Module, meta: dict, out: Path) -> Path:
    """mapping.safetensors + mapping.json in `out`."""
    atomic_save_tensors(out / "mapping.safetensors", net.state_dict())
    atomic_write_json(out / "mapping.json", {**meta, "dim": net.dim, "depth": net.depth})
    return out


def load_checkpoint(path: Path) -> tuple[nn.Module, dict]:
    """Load a checkpoint folder written by save_checkpoint."""
    if not (path / "mapping.json").is_file() or not (path / "mapping.safetensors").is_file():
        raise UserError(f"{path} is not a Fair Mapping checkpoint (mapping.json + mapping.safetensors)")
    try:
        meta = json.loads((path / "mapping.json").read_text(encoding="utf-8"))
        cfg = FairMapConfig(**meta["config"])
        net = build_network(cfg, meta["dim"])
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, AttributeError, UserError) as exc:
        raise UserError(f"{path / 'mapping.json'} is not a Fair Mapping checkpoint description ({type(exc).__name__}: "
                        f"{exc})") from None
    try:
        net.load_state_dict(load_safetensors_file(path / "mapping.safetensors", "Fair Mapping"))
    except RuntimeError as exc:
        raise UserError(f"{path / 'mapping.safetensors'} does not fit the network mapping.json describes: "
                        f"{str(exc).splitlines()[0][:160]}") from None
    return net.eval(), meta


def cache_spec(backend: DiffusersBackend, suite: SuiteSpec, cfg: FairMapConfig) -> dict[str, Any]:
    """Everything that changes the trained map."""
    return {"cfg": asdict(cfg), "enc": text_encoder_hash(backend),
            "texts": training_texts(suite, cfg.attributes, cfg.split)}


def train_and_save(backend: DiffusersBackend, suite: SuiteSpec, cfg: FairMapConfig, out: Path | None = None,
                   cache: bool = False) -> Path:
    """Fit and write a checkpoint (to `out`, or to the cache keyed by the full specification)."""
    if out is None:
        out = cache_folder("fairmap", cache_spec(backend, suite, cfg))
        if cache and (out / "mapping.json").is_file():
            return out
    net, stats = fit_mapping(backend, suite, cfg)
    return save_checkpoint(net, checkpoint_meta(backend, suite, cfg, stats), out)
