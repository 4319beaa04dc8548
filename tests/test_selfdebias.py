"""SelfDebias: its losses by hand, the mode discovery on separable data, the guidance's direction and
row kinds, and the whole method on the tiny pipeline (cached, deterministic, moving the images)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fairbench.baselines.selfdebias import (Projector, SelfDebias, centroids_of, choose_k, contrast_loss, guide_h, kind_groups,
                                  mode_loss)
from fairbench.errors import UserError
from fairbench.generation.engine import generate_batch
from fairbench.methods import MethodContext, build_method
from fairbench.models import load_backend
from fairbench.models.backend import SamplingParams
from fairbench.prompts import load_suite
from fairbench.units import make_units

PARAMS = SamplingParams(steps=3, guidance_scale=7.5)


def test_contrast_loss_by_hand():
    z = torch.tensor([[1.0, 0.0]])
    clip1, clip2 = torch.tensor([[1.0, 1.0]]), torch.tensor([[0.0, 2.0]])
    assert contrast_loss(z, clip1, clip2).item() == pytest.approx(-(2 ** -0.5 + 0) / 0.1, abs=1e-6)


def test_mode_loss_by_hand():
    z = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    centroids = torch.tensor([[2.0, 0.0], [0.0, 3.0]])  # cosines 1 and 0 for both rows
    p1 = math.exp(1 / 8) / (math.exp(1 / 8) + 1)
    expected = p1 * math.log(2 * p1) + (1 - p1) * math.log(2 * (1 - p1))
    assert mode_loss(z, centroids).item() == pytest.approx(expected, abs=1e-6)
    balanced = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    assert mode_loss(balanced, torch.eye(2)).item() == pytest.approx(0, abs=1e-7)


def test_spectral_modes_on_separable_blobs_largest_first():
    rng = np.random.default_rng(0)
    centres = np.array([[5, 0, 0], [0, 5, 0], [0, 0, 5]], dtype=float)
    sizes = (30, 50, 40)
    points = np.concatenate([c + 0.1 * rng.standard_normal((n, 3)) for c, n in zip(centres, sizes)])
    k, labels = choose_k(points, k_max=6)
    assert k == 3
    cents = centroids_of(points, labels)
    assert np.allclose(cents, centres[[1, 2, 0]], atol=0.1)  # 50, 40, 30 points


def test_kind_groups_split_each_prompt_into_its_unconditional_and_conditional_rows():
    groups = kind_groups(["a", "b", "a"], 6)
    assert [(k, r.tolist()) for k, r in groups] == [("uncond", [0, 2]), ("cond", [3, 5]), ("uncond", [1]), ("cond", [4])]
    assert [(k, r.tolist()) for k, r in kind_groups(["a", "a"], 2)] == [("cond", [0, 1])]


def _projector() -> Projector:
    torch.manual_seed(0)
    return Projector(h_dim=12, steps=2, clip_dim=4, hidden=16).eval()


def test_guidance_lowers_the_mode_loss_and_leaves_rows_outside_its_groups():
    projector = _projector()
    torch.manual_seed(1)
    h = torch.randn(4, 3, 2, 2)
    centroids = {"cond": torch.randn(3, 4), "uncond": torch.randn(2, 4)}
    groups = [("cond", torch.tensor([2, 3]))]
    t = torch.full((4,), 1)

    def loss(x):
        return mode_loss(projector(x, t)[2:], centroids["cond"]).item()

    moved = guide_h(h, 1, projector, centroids, groups, loss_strength=1.0, scaling=0.5, inner_steps=3)
    assert loss(moved) < loss(h)
    assert torch.equal(moved[:2], h[:2])  # rows no group names are not guided


def test_bad_arguments_are_user_errors():
    for args in ({"loss_strength": 0}, {"scaling_strength": "nan"}, {"epochs": 0}, {"k_max": 1}):
        with pytest.raises(UserError):
            build_method("selfdebias", args)


def _method(tiny_clip, **kw) -> SelfDebias:
    return SelfDebias(**{"clip_model": str(tiny_clip[0]), "train_images": 1, "split": "test", "epochs": 1,
                         "hidden": 16, "batch": 32, "k_max": 3, "loss_strength": 1.0, "scaling_strength": 10.0,
                         "timestep_below": 1000, **kw})


def test_selfdebias_discovers_modes_caches_them_and_guides_on_the_tiny_pipeline(tiny_sd, tiny_clip, monkeypatch,
                                                                                tmp_path):
    monkeypatch.setenv("FAIRBENCH_CACHE", str(tmp_path / "cache"))
    suite = load_suite("occupations")
    units = make_units(suite, "selfdebias", "m", 2, 0, "test", 2)
    outs = []
    for _ in range(2):  # discovered, then loaded from the cache: the same images
        backend = load_backend(str(tiny_sd))
        m = _method(tiny_clip)
        m.prepare(backend, suite, MethodContext(suite, "test", 2, PARAMS, None, None, 0, 8))
        modes = m.args["modes"]
        assert modes["images"] == 31 and modes["steps"] == 3 and len(modes["clusters"]) == 3
        assert all(2 <= c[kind] <= 3 for c in modes["clusters"] for kind in ("uncond", "cond"))
        _, images, _ = generate_batch(backend, m, units, PARAMS)
        outs.append(np.stack([np.asarray(im) for im in images]))
    assert np.array_equal(outs[0], outs[1])
    assert len(list((tmp_path / "cache" / "selfdebias").iterdir())) == 1
    _, vanilla, _ = generate_batch(backend, build_method("vanilla", None), units, PARAMS)
    assert not np.array_equal(outs[0], np.stack([np.asarray(im) for im in vanilla]))  # the guidance moved them


def test_selfdebias_deterministic_without_the_cache(tiny_sd, tiny_clip):
    suite = load_suite("occupations")
    units = make_units(suite, "selfdebias", "m", 2, 0, "test", 2)
    outs = []
    for _ in range(2):
        backend = load_backend(str(tiny_sd))
        m = _method(tiny_clip, cache=False)
        m.prepare(backend, suite, MethodContext(suite, "test", 2, PARAMS, None, None, 0, 8))
        _, images, _ = generate_batch(backend, m, units, PARAMS)
        outs.append(np.stack([np.asarray(im) for im in images]))
    assert np.array_equal(outs[0], outs[1])
