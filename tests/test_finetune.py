"""Shen et al.'s finetuning: the target assignment against independent solvers, ADFT's gradient scale, LoRA's
identity start, the refusal to train against the scoring classifier, and the method on the tiny pipeline
(training resumes identically, the cache, determinism, images moved)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment
from scipy.stats import binom

from fairbench.baselines.finetune import (TEXT_LAYERS, Adapters, Finetune, LoRALinear, dynamic_targets, gradient_coefficients,
                                loss_weights, rank_targets, transport_plan, transport_targets)
from fairbench.errors import UserError
from fairbench.generation.engine import generate_batch
from fairbench.methods import MethodContext, build_method
from fairbench.models import load_backend
from fairbench.models.backend import SamplingParams
from fairbench.prompts import load_suite
from fairbench.units import make_units

PARAMS = SamplingParams(steps=8, guidance_scale=7.5)


@pytest.mark.parametrize("seed", range(5))
def test_transport_plan_is_the_assignment_of_linear_sum_assignment(seed):
    rng = np.random.default_rng(seed)
    n, c = 7, 3
    cost = rng.random((n, c))
    counts = np.array([3.0, 2.0, 2.0])
    plan = transport_plan(cost, counts)
    assert np.allclose(plan.sum(1), 1) and np.allclose(plan.sum(0), counts)
    columns = np.repeat(np.arange(c), counts.astype(int))  # each class's count as that many slots
    rows, cols = linear_sum_assignment(cost[:, columns])
    assert (plan * cost).sum() == pytest.approx(cost[rows, columns[cols]].sum(), abs=1e-9)
    assert np.array_equal(plan.argmax(1)[rows], columns[cols])  # random costs: one optimum


def test_rank_targets_by_hand():
    p1 = np.array([0.9, 0.1, 0.6, 0.3])
    targets, uncertainty = rank_targets(p1)
    assert targets.tolist() == [1, 0, 1, 0]  # ranks 3, 0, 2, 1: the lower half -> 0
    assert uncertainty[1] == pytest.approx(binom.cdf(0, 4, 0.5))  # rank 0, target 0
    assert uncertainty[0] == pytest.approx(1 - binom.cdf(3, 4, 0.5))  # rank 3, target 1
    assert uncertainty[2] == pytest.approx(1 - binom.cdf(2, 4, 0.5))


def test_one_binary_attribute_uses_the_rank_rule_which_is_transport_at_fixed_counts():
    rng = np.random.default_rng(0)
    p1 = rng.random(8)
    probs = np.stack([1 - p1, p1], 1)
    ranked = dynamic_targets([probs], np.random.default_rng(1), threshold=1.0)[:, 0]
    plan = transport_plan(np.sqrt(((probs[:, None, :] - np.eye(2)[None]) ** 2).sum(-1)), np.array([4.0, 4.0]))
    assert np.array_equal(ranked, plan.argmax(1))


def test_transport_targets_send_confident_images_to_their_own_class():
    eye = np.eye(2)
    gender = np.array([eye[0]] * 4 + [eye[1]] * 4)
    skin = np.array([np.eye(4)[i % 4] for i in range(8)])
    targets, uncertainty = transport_targets([gender, skin], np.random.default_rng(0), samples=30)
    assert targets.shape == (8, 2)
    # balanced and confident already: the most likely target is each image's own class
    assert targets[:, 0].tolist() == [0] * 4 + [1] * 4 and targets[:, 1].tolist() == [0, 1, 2, 3] * 2
    assert (uncertainty >= 0).all() and (uncertainty < 1).all()


def test_targets_above_the_uncertainty_threshold_are_dropped():
    probs = np.stack([np.full(6, 0.5), np.full(6, 0.5)], 1)  # ties: every rank is as likely
    kept = dynamic_targets([probs], np.random.default_rng(0), threshold=0.2)
    assert (kept == -1).sum() > 0 and set(kept.ravel()) <= {-1, 0, 1}


def test_loss_weights_follow_the_original_class():
    targets = np.array([[0], [1], [-1]])
    original = np.array([[0], [0], [1]])
    assert loss_weights(targets, original, 0.2).tolist() == [1.0, 0.2, 0.2]


def test_adft_coefficients_by_hand():
    from diffusers import DPMSolverMultistepScheduler

    sched = DPMSolverMultistepScheduler()
    sched.set_timesteps(4)
    t = sched.timesteps.long()
    raw = [math.sqrt(sched.alphas_cumprod[i]) * math.sqrt(1 - sched.alphas_cumprod[i]) / (1 - sched.alphas[i])
           for i in t.tolist()]
    geo = math.prod(raw) ** (1 / len(raw))
    assert np.allclose(gradient_coefficients(sched), np.array(raw) / geo)


def test_lora_starts_as_the_identity_and_merges_exactly():
    torch.manual_seed(0)
    base = torch.nn.Linear(5, 3)
    layer = LoRALinear(base, rank=2, generator=torch.Generator().manual_seed(0))
    x = torch.randn(4, 5)
    assert torch.equal(layer(x), base(x))  # up = 0
    with torch.no_grad():
        layer.up.normal_()
    expected = layer(x)
    parent = torch.nn.Sequential(base)
    adapters = Adapters({"m": parent}, {"m": ("0",)}, rank=2, seed=0)
    weights = {"m.0.down": layer.down.detach(), "m.0.up": layer.up.detach()}
    adapters.merge(weights)
    assert torch.allclose(parent(x), expected, atol=1e-6)


def test_lora_lives_on_its_layers_device_with_the_same_draw():
    # a pipeline on a GPU adapts layers there: adapters left on the CPU broke the first training step
    cpu = LoRALinear(torch.nn.Linear(5, 3), rank=2, generator=torch.Generator().manual_seed(0))
    meta = LoRALinear(torch.nn.Linear(5, 3, device="meta"), rank=2, generator=torch.Generator().manual_seed(0))
    assert meta.down.device.type == meta.up.device.type == "meta"
    again = LoRALinear(torch.nn.Linear(5, 3), rank=2, generator=torch.Generator().manual_seed(0))
    assert torch.equal(cpu.down, again.down)  # the draw stays on the CPU generator, whatever the device


def test_bad_arguments_are_user_errors():
    for args in ({"rank": 0}, {"lr": "nan"}, {"ema_decay": 1}, {"train_text_encoder": False}, {"factor": -1}):
        with pytest.raises(UserError):
            build_method("finetune", args)


def _method(tiny_clip, **kw) -> Finetune:
    return Finetune(**{"clip_model": str(tiny_clip[0]), "max_steps": 2, "images_per_prompt": 4, "batch": 2,
                       "rank": 4, "lr": 1e-2, "split": "test", "checkpoint_every": 1, **kw})


def _images(backend, method, units) -> np.ndarray:
    method.apply_to_model(backend)
    _, images, _ = generate_batch(backend, method, units, PARAMS)
    return np.stack([np.asarray(im) for im in images])


def test_the_scoring_classifier_is_never_the_one_trained_against(tiny_sd, tiny_clip):
    from fairbench.classifiers import build_classifier

    backend = load_backend(str(tiny_sd))
    scorer = build_classifier("clip", {"model": str(tiny_clip[0]), "attributes": "gender"})
    suite = load_suite("occupations")
    with pytest.raises(UserError, match="scoring classifier"):
        _method(tiny_clip).prepare(backend, suite, MethodContext(suite, "test", 2, PARAMS, None, scorer, 0, 8))


def test_zero_steps_of_training_leave_the_images_byte_identical(tiny_sd, tiny_clip):
    suite = load_suite("occupations")
    units = make_units(suite, "finetune", "m", 2, 0, "test", 2)
    backend = load_backend(str(tiny_sd))
    m = _method(tiny_clip, cache=False, use_ema=False, max_steps=1)
    m.prepare(backend, suite, MethodContext(suite, "test", 2, PARAMS, None, None, 0, 8))
    assert any(not torch.equal(v, torch.zeros_like(v)) for k, v in m.weights.items() if k.endswith(".up"))
    fresh = Adapters(m.adapted_parts(backend), {"text_encoder": TEXT_LAYERS}, m.rank, m.seed)
    m.weights = {k: v.detach() for k, v in fresh.parameters().items()}  # the adapters at step 0
    _, vanilla, _ = generate_batch(load_backend(str(tiny_sd)), build_method("vanilla", None), units, PARAMS)
    assert np.array_equal(_images(backend, m, units), np.stack([np.asarray(im) for im in vanilla]))


def test_training_resumes_identically_and_the_cache_is_used(tiny_sd, tiny_clip, monkeypatch, tmp_path):
    import fairbench.baselines.finetune as ft

    monkeypatch.setenv("FAIRBENCH_CACHE", str(tmp_path / "cache"))
    suite = load_suite("occupations")
    context = MethodContext(suite, "test", 2, PARAMS, None, None, 0, 8)
    straight = _method(tiny_clip, cache=False)
    straight.prepare(load_backend(str(tiny_sd)), suite, context)
    # killed after its first step's checkpoint
    real_step, calls = ft.Trainer.step, []

    def dying(self, *args):
        if calls:
            raise KeyboardInterrupt
        calls.append(1)
        return real_step(self, *args)

    monkeypatch.setattr(ft.Trainer, "step", dying)
    with pytest.raises(KeyboardInterrupt):
        _method(tiny_clip).prepare(load_backend(str(tiny_sd)), suite, context)
    folder = next((tmp_path / "cache" / "finetune").iterdir())
    assert json.loads((folder / "state.json").read_text())["steps_done"] == 1
    assert not (folder / "adapters.json").exists()
    monkeypatch.setattr(ft.Trainer, "step", real_step)
    resumed = _method(tiny_clip)
    resumed.prepare(load_backend(str(tiny_sd)), suite, context)
    assert resumed.weights.keys() == straight.weights.keys()
    assert all(torch.equal(resumed.weights[k], straight.weights[k]) for k in straight.weights)
    def untimed(training):
        return {k: ({j: w for j, w in v.items() if j != "seconds"} if k == "last" else v)
                for k, v in training.items() if k != "seconds"}

    assert untimed(resumed.args["training"]) == untimed(straight.args["training"])
    # the finished adapters load from the cache without training
    monkeypatch.setattr(ft.Trainer, "step", lambda *a: (_ for _ in ()).throw(AssertionError("trained again")))
    cached = _method(tiny_clip)
    cached.prepare(load_backend(str(tiny_sd)), suite, context)
    assert all(torch.equal(cached.weights[k], straight.weights[k]) for k in straight.weights)


def test_images_move_and_are_deterministic(tiny_sd, tiny_clip):
    suite = load_suite("occupations")
    units = make_units(suite, "finetune", "m", 2, 0, "test", 2)
    context = MethodContext(suite, "test", 2, PARAMS, None, None, 0, 8)
    methods = [_method(tiny_clip, cache=False) for _ in range(2)]
    backends = [load_backend(str(tiny_sd)) for _ in methods]
    for m, backend in zip(methods, backends):
        m.prepare(backend, suite, context)
    first, second = (_images(b, m, units) for m, b in zip(methods, backends))
    assert np.array_equal(first, second)
    _, vanilla, _ = generate_batch(load_backend(str(tiny_sd)), build_method("vanilla", None), units, PARAMS)
    assert not np.array_equal(first, np.stack([np.asarray(im) for im in vanilla]))


def test_the_ema_follows_the_authors_warm_up(tiny_sd, tiny_clip, monkeypatch):
    # diffusers' EMAModel: the first update copies, the s-th (s >= 2) keeps (s) / (9 + s) of the average
    import fairbench.baselines.finetune as ft

    steps: list[dict[str, torch.Tensor]] = []
    real_step = ft.Trainer.step

    def recording(self, *args):
        out = real_step(self, *args)
        steps.append({k: p.detach().clone() for k, p in self.adapters.parameters().items()})
        return out

    monkeypatch.setattr(ft.Trainer, "step", recording)
    suite = load_suite("occupations")
    m = _method(tiny_clip, cache=False, max_steps=3)
    m.prepare(load_backend(str(tiny_sd)), suite, MethodContext(suite, "test", 2, PARAMS, None, None, 0, 8))
    expected = {k: v.clone() for k, v in steps[0].items()}
    for s, params in enumerate(steps[1:], start=2):
        decay = min(s / (9 + s), 0.996)
        expected = {k: decay * expected[k] + (1 - decay) * params[k] for k in expected}
    assert all(torch.allclose(m.weights[k], expected[k], atol=1e-7) for k in expected)
