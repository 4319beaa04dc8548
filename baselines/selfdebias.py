"""`selfdebias`: unsupervised h-space modes and distribution guidance toward them (guidance level).

Source: Korada et al., "Fully Unsupervised Self-Debiasing of Text-to-Image Diffusion Models",
WACV 2026 (arXiv 2512.03749; code: srivardhanakorada/SelfDebias: gen_data.py, gen_cont_trip.py,
train_proj.py, create_rec_centroids.py and its diffusers fork's models/unets/new_helper_hclassify.py
and unet_2d_condition.py). No attribute, label or classifier is used. As published:
  data        generations of the model, with h (the UNet's mid-block output) of the conditional and
              the unconditional row at every step, and the CLIP image embedding of each image, plain
              and under two random augmentations (RandomResizedCrop scale 0.7-1, horizontal flip,
              ColorJitter 0.3/0.3/0.3/0.1);
  projection  an MLP [flattened h ; 128-d step embedding] -> 2048 -> ReLU -> dropout 0.2 -> CLIP
              width, L2-normalised, trained to point at both augmented embeddings (loss
              -(cos(z, clip1) + cos(z, clip2)) / 0.1), Adam lr 1e-4, 10 epochs, batches of 64;
  modes       per step and per row kind (conditional, unconditional), spectral clustering of the
              projected h (nearest-neighbour affinity, 5 neighbours), the number of clusters 2..8
              chosen by silhouette; the centroids are the clusters' means, largest cluster first
              (the recursive split below clusters of 200 stops at MAX_DEPTH 1, so it never splits);
  guidance    at every step whose timestep is below 850, three inner steps on h: the projected h's
              cosine similarities to the step's unit centroids, softmax at temperature 8, averaged
              over the batch, KL to uniform for each row kind, summed, times loss_strength 2500;
              h <- h - (scaling_strength 2600 x 1e4) x grad (gen_debiased.py's face settings).

Unpublished details or choices here, each a parameter with its default:
  - the generations (`train_images` per training prompt, 8, of `train_suite`'s `split`): the authors
    generate 1,500-2,000 images of one prompt per domain; here the run's own model, sampling settings
    and seeds apart from the benchmark's, over the training occupations, as balancingact's heads;
  - the CLIP (`clip_model`, "auto"): synthclip on the embedded worlds, else CLIP ViT-B/32 (the authors');
  - rows: the released guidance splits the UNet batch as sample[1::2] (conditional) and sample[0::2]
    (unconditional), which matches diffusers' [unconditional; conditional] batch only for one image;
    here the two halves are used, and the distribution is taken over each prompt's images within a
    batch (as balancingact does);
  - target: uniform, as the released guidance code (the README's "depth-weighted" target weighs
    every mode alike once the recursion does not split);
  - the spectral clustering's random state is fixed (0) so the modes are reproducible, and the MLP's
    initialisation, dropout and batch order are seeded by `seed`.
"""

from __future__ import annotations

import json
import warnings
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from fairbench.baselines.hspace import cache_folder, generate_guided, generations_with_h, training_units
from fairbench.errors import UserError
from fairbench.io import atomic_save_tensors, atomic_write_json, load_safetensors_file
from fairbench.methods.base import Method, MethodContext, own_clip
from fairbench.models.backend import Conditioning, DiffusersBackend, SamplingParams
from fairbench.registry import Count
from fairbench.units import WorkUnit

LOSS_STRENGTH = 2500.0
SCALING_STRENGTH = 2600.0 * 1e4
TEMPERATURE = 8.0
INNER_STEPS = 3
TIMESTEP_BELOW = 850
CONTRAST_TEMPERATURE = 0.1
CLIP_B32 = "openai/clip-vit-base-patch32"
KINDS = ("uncond", "cond")  # the UNet's row halves under classifier-free guidance, in diffusers' order


class Projector(nn.Module):
    """h and the step's embedding -> a unit vector in the CLIP image space (HToCLIPJointContrast)."""

    def __init__(self, h_dim: int, steps: int, clip_dim: int, hidden: int = 2048, t_dim: int = 128) -> None:
        super().__init__()
        self.t_embed = nn.Embedding(steps, t_dim)
        self.mlp = nn.Sequential(nn.Linear(h_dim + t_dim, hidden), nn.ReLU(), nn.Dropout(0.2), nn.Linear(hidden, clip_dim))

    def forward(self, h: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.mlp(torch.cat([h.flatten(1), self.t_embed(t)], dim=-1)), dim=-1)


def contrast_loss(z: torch.Tensor, clip1: torch.Tensor, clip2: torch.Tensor,
                  temperature: float = CONTRAST_TEMPERATURE) -> torch.Tensor:
    """The authors' `nt_xent_loss`: -(cos(z, clip1) + cos(z, clip2)).mean() / temperature."""
    return -(F.cosine_similarity(z, clip1, dim=-1) + F.cosine_similarity(z, clip2, dim=-1)).mean() / temperature


def choose_k(vectors: np.ndarray, k_min: int = 2, k_max: int = 8, neighbours: int = 5, seed: int = 0) -> tuple[int, np.ndarray]:
    """The number of spectral clusters with the best silhouette, and its labels."""
    from sklearn.cluster import SpectralClustering
    from sklearn.metrics import silhouette_score

    best: tuple[float, int, np.ndarray] | None = None
    for k in range(k_min, min(k_max + 1, len(vectors))):
        with warnings.catch_warnings():  # well-separated modes leave the neighbour graph disconnected, as intended
            warnings.filterwarnings("ignore", message="Graph is not fully connected")
            labels = SpectralClustering(n_clusters=k, affinity="nearest_neighbors", n_neighbors=neighbours,
                                        random_state=seed).fit_predict(vectors)
        if len(set(labels)) < 2:
            continue
        score = float(silhouette_score(vectors, labels))
        if best is None or score > best[0]:
            best = (score, k, labels)
    if best is None:
        return 1, np.zeros(len(vectors), dtype=int)
    return best[1], best[2]


def centroids_of(vectors: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Cluster means, the largest cluster first (ties by label)."""
    ids = sorted(set(labels.tolist()), key=lambda c: (-(labels == c).sum(), c))
    return np.stack([vectors[labels == c].mean(axis=0) for c in ids])


def mode_loss(z: torch.Tensor, centroids: torch.Tensor, temperature: float = TEMPERATURE) -> torch.Tensor:
    """KL(p_bar || uniform), p_bar the batch mean of softmax(cos(z, centroids) / temperature)."""
    sims = F.cosine_similarity(z[:, None, :], F.normalize(centroids, dim=-1)[None], dim=-1)
    p = torch.softmax(sims / temperature, dim=-1).mean(dim=0)
    return (p * (p * p.numel()).log()).sum()


def kind_groups(prompt_ids: list[str], unet_rows: int) -> list[tuple[str, torch.Tensor]]:
    """Rows of the UNet batch per prompt and row kind: with classifier-free guidance (2B rows) each
    prompt's unconditional rows (the first half) and its conditional rows; else its rows, conditional."""
    b = len(prompt_ids)
    out = []
    for pid in dict.fromkeys(prompt_ids):
        rows = torch.tensor([i for i, p in enumerate(prompt_ids) if p == pid])
        out += [("uncond", rows), ("cond", rows + b)] if unet_rows == 2 * b else [("cond", rows)]
    return out


def guide_h(h: torch.Tensor, step: int, projector: Projector, centroids: dict[str, torch.Tensor],
            groups: list[tuple[str, torch.Tensor]], loss_strength: float, scaling: float,
            temperature: float = TEMPERATURE, inner_steps: int = INNER_STEPS) -> torch.Tensor:
    """`inner_steps` steps of h <- h - scaling * grad_h(loss_strength * sum over row groups of the mode KL)."""
    x = h.detach().float()
    t = torch.full((h.shape[0],), step, dtype=torch.long, device=h.device)
    for _ in range(inner_steps):
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            z = projector(x, t)
            loss = sum(mode_loss(z[rows], centroids[kind], temperature) for kind, rows in groups)
            (grad,) = torch.autograd.grad(loss_strength * loss, x)
        x = x - scaling * grad
    return x.detach().to(h.dtype)


class SelfDebias(Method):
    """Discover the modes of h without labels and guide each prompt's batch toward them uniformly."""

    level = "guidance"
    architectures = ("sd", "sdxl")
    source = "Korada et al., Fully Unsupervised Self-Debiasing of Text-to-Image Diffusion Models (WACV 2026; srivardhanakorada/SelfDebias)"

    def __init__(self, loss_strength: float = LOSS_STRENGTH, scaling_strength: float = SCALING_STRENGTH,
                 temperature: float = TEMPERATURE, inner_steps: Count = INNER_STEPS, timestep_below: int = TIMESTEP_BELOW,
                 train_images: Count = 8, train_suite: str = "occupations", split: str = "train",
                 clip_model: str = "auto", hidden: Count = 2048, epochs: Count = 10, lr: float = 1e-4,
                 batch: Count = 64, k_max: Count = 8, seed: int = 0, cache: bool = True) -> None:
        super().__init__()
        numbers = {"loss_strength": loss_strength, "scaling_strength": scaling_strength, "temperature": temperature,
                   "lr": lr}
        if not all(np.isfinite(float(v)) and float(v) > 0 for v in numbers.values()):
            raise UserError(f"selfdebias: {', '.join(numbers)} must be positive numbers")
        ints = {"inner_steps": inner_steps, "train_images": train_images, "hidden": hidden, "epochs": epochs,
                "batch": batch}
        if any(int(v) < 1 for v in ints.values()) or int(k_max) < 2:
            raise UserError(f"selfdebias: {', '.join(ints)} must be >= 1 and k_max >= 2")
        self.loss_strength, self.scaling, self.temperature, self.lr = (float(loss_strength), float(scaling_strength),
                                                                       float(temperature), float(lr))
        self.inner_steps, self.timestep_below = int(inner_steps), int(timestep_below)
        self.train_images, self.hidden, self.epochs, self.batch = int(train_images), int(hidden), int(epochs), int(batch)
        self.k_max, self.seed, self.cache = int(k_max), int(seed), bool(cache)
        self.train_suite, self.split, self.clip_model = train_suite, split, clip_model
        self.args: dict[str, Any] = {"loss_strength": self.loss_strength, "scaling_strength": self.scaling,
                                     "temperature": self.temperature, "inner_steps": self.inner_steps,
                                     "timestep_below": self.timestep_below, "train_images": self.train_images,
                                     "train_suite": train_suite, "split": split, "clip_model": clip_model,
                                     "hidden": self.hidden, "epochs": self.epochs, "lr": self.lr, "batch": self.batch,
                                     "k_max": self.k_max, "seed": self.seed}
        self.projector: Projector | None = None
        self.centroids: list[dict[str, torch.Tensor]] = []  # per step, per row kind
        self.steps: int | None = None

    # preparation ---------------------------------------------------------------------------
    def clip_name(self, backend: DiffusersBackend) -> str:
        """The CLIP whose image embeddings the projection learns to point at."""
        if self.clip_model != "auto":
            return self.clip_model
        return own_clip(backend) or CLIP_B32

    def training_units(self, context: MethodContext) -> list[tuple[str, str, int]]:
        """(prompt id, text, seed) of the unlabelled generations; seeds apart from the benchmark's."""
        return training_units(self.train_suite, self.split, self.train_images, context.seed, "selfdebias",
                              "discover SelfDebias's modes on")

    def collect(self, backend: DiffusersBackend, context: MethodContext, clip: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """h (S, 2 kinds or 1, N, F; float16) and CLIP embeddings (3, N, E: plain, two augmentations)."""
        import torchvision.transforms as T

        hs, embeds = [], []
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            for h, images in generations_with_h(backend, context, self.training_units(context), "selfdebias modes data"):
                n = len(images)
                hs.append(h.reshape(h.shape[0], h.shape[1] // n, n, h.shape[2]))
                augment = T.Compose([T.RandomResizedCrop((images[0].height, images[0].width), scale=(0.7, 1.0)),
                                     T.RandomHorizontalFlip(), T.ColorJitter(0.3, 0.3, 0.3, 0.1)])
                views = [images, [augment(im) for im in images], [augment(im) for im in images]]
                embeds.append(torch.stack([clip.image_features(v) for v in views]))
        return torch.cat(hs, dim=2), torch.cat(embeds, dim=1)

    def train_projector(self, h: torch.Tensor, embeds: torch.Tensor, progress: bool) -> tuple[Projector, float]:
        """The contrastive projection over every (image, row kind, step) sample."""
        steps, kinds, n, dim = h.shape
        torch.manual_seed(self.seed)
        projector = Projector(dim, steps, embeds.shape[-1], self.hidden)
        opt = torch.optim.Adam(projector.parameters(), lr=self.lr)
        order_rng = torch.Generator().manual_seed(self.seed)
        samples = steps * kinds * n
        last = float("nan")
        projector.train()
        for _ in tqdm(range(self.epochs), desc="selfdebias projection", unit="epoch", disable=not progress):
            total = 0.0
            for idx in torch.randperm(samples, generator=order_rng).split(self.batch):
                s, rest = idx // (kinds * n), idx % (kinds * n)
                k, i = rest // n, rest % n
                z = projector(h[s, k, i].float(), s)
                loss = contrast_loss(z, embeds[1, i], embeds[2, i])
                opt.zero_grad()
                loss.backward()
                opt.step()
                total += loss.item() * len(idx)
            last = total / samples
        return projector.eval(), last

    def discover(self, projector: Projector, h: torch.Tensor) -> tuple[list[dict[str, torch.Tensor]], list[dict[str, int]]]:
        """Per step and row kind, the centroids of the projected h's spectral clusters."""
        steps, kinds, n, _ = h.shape
        names = KINDS if kinds == 2 else ("cond",)
        out, sizes = [], []
        with torch.no_grad():
            for s in range(steps):
                out.append({})
                sizes.append({})
                for k, name in enumerate(names):
                    z = projector(h[s, k].float(), torch.full((n,), s)).numpy()
                    _, labels = choose_k(z, k_max=self.k_max, seed=0)
                    out[-1][name] = torch.from_numpy(centroids_of(z, labels)).float()
                    sizes[-1][name] = len(out[-1][name])
        return out, sizes

    def cache_path(self, backend: DiffusersBackend, context: MethodContext, clip: str) -> Any:
        """Cache folder keyed by everything that determines the projection and the modes."""
        return cache_folder("selfdebias", self.args, self.training_units(context), backend, context, clip=clip)

    def prepare(self, backend: DiffusersBackend, suite: Any, context: MethodContext | None = None) -> None:
        """Generate, project and cluster (or load all of it from the cache)."""
        from fairbench.models.dual_encoder import DualEncoder

        if context is None:
            raise UserError("selfdebias discovers its modes with the run's sampling settings; none were given")
        self.steps = (context.params or SamplingParams()).steps
        clip_name = self.clip_name(backend)
        self.args["clip"] = clip_name
        path = self.cache_path(backend, context, clip_name) if self.cache else None
        if path is not None and (path / "modes.json").is_file():  # written last: complete
            self._load(path)
            return
        clip = DualEncoder(clip_name, device=backend.device)
        h, embeds = self.collect(backend, context, clip)
        projector, loss = self.train_projector(h, embeds, context.progress)
        self.projector = projector
        self.centroids, sizes = self.discover(projector, h)
        self.args["modes"] = {"images": int(h.shape[2]), "steps": int(h.shape[0]), "features": int(h.shape[3]),
                              "last_loss": round(loss, 6), "clusters": sizes}
        if path is not None:
            tensors = {f"projector.{k}": v for k, v in projector.state_dict().items()}
            tensors |= {f"centroids.{s}.{kind}": c for s, per in enumerate(self.centroids) for kind, c in per.items()}
            atomic_save_tensors(path / "modes.safetensors", tensors)
            atomic_write_json(path / "modes.json", {"args": {k: v for k, v in self.args.items() if k != "modes"},
                                                    "modes": self.args["modes"]})

    def _load(self, path: Any) -> None:
        tensors = load_safetensors_file(path / "modes.safetensors", "SelfDebias modes")
        info = json.loads((path / "modes.json").read_text())["modes"]
        weights = {k.removeprefix("projector."): v for k, v in tensors.items() if k.startswith("projector.")}
        self.projector = Projector(info["features"], info["steps"], weights["mlp.3.weight"].shape[0],
                                   weights["mlp.0.weight"].shape[0])
        self.projector.load_state_dict(weights)
        self.projector.eval()
        self.centroids = [{kind: tensors[f"centroids.{s}.{kind}"] for kind in KINDS if f"centroids.{s}.{kind}" in tensors}
                          for s in range(info["steps"])]
        self.args["modes"] = info

    # generation ----------------------------------------------------------------------------
    def generate(self, backend: DiffusersBackend, cond: Conditioning, generators: list[torch.Generator],
                 params: SamplingParams, units: list[WorkUnit]) -> tuple[list[Any], list[bool]]:
        """The pipeline's own loop, h guided toward uniform modes at every step below the timestep bound."""
        if self.projector is None:
            raise RuntimeError("SelfDebias.prepare() must run before generation")
        if params.steps != self.steps:
            raise UserError(f"selfdebias's modes were found for {self.steps} steps; this run samples {params.steps}")
        prompt_ids = [u.prompt_id for u in units]
        projector = self.projector.to(backend.device)

        def guide(h: torch.Tensor, step: int, scheduler: Any) -> torch.Tensor:
            # the schedule is read at call time: the pipeline sets it when sampling starts
            if int(scheduler.timesteps[step]) >= self.timestep_below:
                return h
            centroids = {k: c.to(h.device) for k, c in self.centroids[step].items()}
            return guide_h(h, step, projector, centroids, kind_groups(prompt_ids, h.shape[0]),
                           self.loss_strength, self.scaling, self.temperature, self.inner_steps)

        return generate_guided(backend, cond, generators, params, guide)
