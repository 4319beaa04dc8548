"""ITI-GEN and FairQueue: the authors' index layout and losses by hand, the token insertion, training
that resumes identically, the queue's switch step and the attention amplification."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from fairbench.baselines.fairqueue import FairQueue, amplified, switch_step
from fairbench.baselines.itigen import (ITIGen, Insertion, combination_vectors, combinations, cosine_loss, direction_loss,
                              index_sets, learning_rate, placeholder, train_tokens)
from fairbench.errors import UserError
from fairbench.methods import MethodContext, build_method
from fairbench.models import load_backend
from fairbench.models.backend import SamplingParams
from fairbench.prompts import load_suite
from fairbench.units import make_units

PARAMS = SamplingParams(steps=5, guidance_scale=7.5)


def _itigen(references, tiny_clip, **kw) -> ITIGen:
    args = {"reference_dir": str(references), "clip_model": str(tiny_clip[0]), "clip_model_2": str(tiny_clip[0]),
            "epochs": 2, "steps_per_epoch": 1, "reference_per_group": 2, "cache": False, **kw}
    return ITIGen(**args)


# the authors' layout and losses -------------------------------------------------------------------
def test_index_sets_reproduce_the_authors_layout_for_2_x_6_x_9():
    # iti_gen/model.py setup_index's docstring: 108 combinations; skin tone's list holds 18 sets
    combos = combinations([2, 6, 9])
    assert len(combos) == 108 and combos[9] == (0, 1, 0) and combos[54] == (1, 0, 0)
    skin = index_sets(combos, 1, 6)
    assert skin.shape == (18, 6)
    assert skin[0].tolist() == [0, 9, 18, 27, 36, 45] and skin[1].tolist() == [1, 10, 19, 28, 37, 46]
    assert skin[8].tolist() == [8, 17, 26, 35, 44, 53] and skin[9].tolist() == [54, 63, 72, 81, 90, 99]
    assert skin[17].tolist() == [62, 71, 80, 89, 98, 107]
    assert index_sets(combos, 0, 2)[:2].tolist() == [[0, 54], [1, 55]]
    assert index_sets(combos, 2, 9)[1].tolist() == list(range(9, 18))


def test_combination_vectors_sum_each_attributes_group_tokens():
    gender, skin = torch.randn(2, 3, 4), torch.randn(4, 3, 4)
    vectors = combination_vectors([gender, skin], combinations([2, 4]))
    assert vectors.shape == (8, 3, 4)
    assert torch.equal(vectors[6], gender[1] + skin[2])


def _unit(v) -> torch.Tensor:
    v = torch.tensor(v, dtype=torch.float32)
    return v / v.norm()


def test_direction_and_consistency_losses_by_hand():
    image = torch.stack([_unit([1, 0, 0]), _unit([1, 1, 0]), _unit([0, 1, 0]), _unit([0, 1, 1])])
    labels = torch.tensor([0, 0, 1, 1])
    text = torch.stack([_unit([1, 0, 1]), _unit([0, 1, 1])])
    base = _unit([0, 0, 1])
    direction, consistency = direction_loss(image, labels, text, base, torch.tensor([[0, 1]]), lam=0.8)
    d_img = (image[:2].mean(0) - image[2:].mean(0)) / (image[:2].mean(0) - image[2:].mean(0)).norm()
    d_txt = (text[0] - text[1]) / (text[0] - text[1]).norm()
    assert direction.item() == pytest.approx(1 - float(d_img @ d_txt), abs=1e-6)
    # both texts are 45 degrees from the base prompt: relu(0.8 - cos 45)
    assert consistency.item() == pytest.approx(0.8 - 2 ** -0.5, abs=1e-6)
    # a text difference along the image difference costs nothing
    aligned = torch.stack([base + d_img, base - d_img])
    assert direction_loss(image, labels, aligned, base, torch.tensor([[0, 1]]))[0].item() == pytest.approx(0, abs=1e-6)


def test_three_groups_divide_the_pair_sum_by_2_pairs_over_k():
    torch.manual_seed(0)
    image = torch.nn.functional.normalize(torch.randn(6, 5), dim=-1)
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    text = torch.nn.functional.normalize(torch.randn(3, 5), dim=-1)
    direction, _ = direction_loss(image, labels, text, text[0], torch.tensor([[0, 1, 2]]))
    by_pair = []
    for i, j in itertools.combinations(range(3), 2):
        di = image[labels == i].mean(0) - image[labels == j].mean(0)
        dt = text[i] - text[j]
        by_pair.append(1 - float(di @ dt / di.norm() / dt.norm()))
    assert direction.item() == pytest.approx(sum(by_pair) / 2, abs=1e-6)  # 2 * 3 pairs / 3 groups


def test_a_group_missing_from_the_batch_makes_the_direction_nan_and_the_cosine_loss_by_hand():
    image = torch.stack([_unit([1, 0]), _unit([1, 1])])
    labels = torch.tensor([0, 0])
    text = torch.stack([_unit([1, 0]), _unit([0, 1])])
    direction, _ = direction_loss(image, labels, text, text[0], torch.tensor([[0, 1]]))
    assert torch.isnan(direction)
    expected = 1 - (1 + 2 ** -0.5) / 2  # group 0's text against its two images; group 1 has none
    assert cosine_loss(image, labels, text, torch.tensor([[0, 1]])).item() == pytest.approx(expected, abs=1e-6)


def test_learning_rate_halves_after_the_tenth_epoch():
    assert [learning_rate(0.01, e) for e in (0, 9, 10, 29)] == [0.01, 0.01, 0.005, 0.005]


# insertion into the pipeline's encoders -----------------------------------------------------------
@pytest.mark.parametrize("arch", ["sd1", "sdxl"])
def test_tokens_equal_to_the_placeholders_own_embeddings_give_the_pipelines_own_encoding(tiny_pipelines, arch):
    backend = load_backend(str(tiny_pipelines[arch]))
    m = ITIGen(attributes="gender", reference_dir="unused")
    m.backend = backend
    m.word = placeholder([t for _, t in m.encoders(backend).values()], 3)
    for part, (encoder, tok) in m.encoders(backend).items():
        own = encoder.get_input_embeddings().weight[tok(m.word, add_special_tokens=False)["input_ids"][0]]
        m.tokens[part] = [own.detach().expand(2, 3, -1).clone()]
    texts = ["a photo of a doctor", "a photo of the face of a nurse"]
    cond, insertions = m.inclusive(texts, [0, 1])
    plain = backend.encode([f"{t} {m.word} {m.word} {m.word}" for t in texts], guidance_scale=0.0)
    assert torch.equal(cond.prompt_embeds, plain.prompt_embeds)
    if arch == "sdxl":
        assert torch.equal(cond.pooled, plain.pooled)
    end = len(backend.tokenizer(texts[0])["input_ids"]) - 1  # where the end token was: after the last word
    assert insertions[0].positions == (end, end + 1, end + 2)
    # other vectors change the prompt rows only after the end of the words (a causal encoder)
    m.tokens = {p: [torch.randn(2, 3, t[0].shape[-1])] for p, t in m.tokens.items()}
    moved, _ = m.inclusive(texts, [0, 1])
    assert torch.equal(moved.prompt_embeds[0, :end], plain.prompt_embeds[0, :end])
    assert not torch.equal(moved.prompt_embeds[0, end:], plain.prompt_embeds[0, end:])


def test_a_prompt_that_leaves_no_room_for_the_tokens_is_refused(tiny_pipelines):
    backend = load_backend(str(tiny_pipelines["sd1"]))
    with pytest.raises(UserError, match="no room"):
        Insertion.of(backend.tokenizer, " ".join(["doctor"] * 74), "*", 3, 77)


def test_missing_reference_folder_is_a_user_error(tiny_pipelines, tiny_clip, tmp_path):
    backend = load_backend(str(tiny_pipelines["sd1"]))
    m = _itigen(tmp_path, tiny_clip)
    with pytest.raises(UserError, match="no reference images"):
        m.prepare(backend, None, None)
    with pytest.raises(UserError, match="reference_dir"):
        ITIGen(clip_model=str(tiny_clip[0])).prepare(backend, None, None)


# training ----------------------------------------------------------------------------------------
def test_training_resumes_from_its_checkpoint_to_the_same_tokens(tiny_pipelines, tiny_clip, references, tmp_path):
    from fairbench.models.dual_encoder import DualEncoder

    backend = load_backend(str(tiny_pipelines["sd1"]))
    m = _itigen(references, tiny_clip, epochs=12, steps_per_epoch=2, reference_per_group=2)
    m.backend, m.word = backend, "*"
    clip = DualEncoder(str(tiny_clip[0]))
    clip.model.requires_grad_(False)
    refs = [m.references(backend, "gender")[0]]
    straight, info = train_tokens(m, clip, refs, tmp_path / "straight")
    assert info["steps"] == 24 and straight[0].shape == (2, 3, 32) and straight[0].abs().sum() > 0
    # interrupted after 11 epochs (before the learning rate's last epoch), then resumed
    m.epochs = 11
    train_tokens(m, clip, refs, tmp_path / "resumed")
    for name in ("tokens.json", "tokens.safetensors"):
        (tmp_path / "resumed" / name).unlink()
    m.epochs = 12
    resumed, _ = train_tokens(m, clip, refs, tmp_path / "resumed")
    assert torch.equal(resumed[0], straight[0])
    again, _ = train_tokens(m, clip, refs, tmp_path / "straight")  # finished: loaded, not retrained
    assert torch.equal(again[0], straight[0])


def test_prepare_trains_once_and_the_cache_serves_fairqueue_the_same_tokens(tiny_pipelines, tiny_clip, references,
                                                                            tmp_path, monkeypatch):
    monkeypatch.setenv("FAIRBENCH_CACHE", str(tmp_path / "cache"))
    backend = load_backend(str(tiny_pipelines["sd1"]))
    a = _itigen(references, tiny_clip, cache=True)
    a.prepare(backend, None, None)
    q = FairQueue(reference_dir=str(references), clip_model=str(tiny_clip[0]), epochs=2, steps_per_epoch=1,
                  reference_per_group=2, queue=0.5)
    q.prepare(backend, None, None)
    assert torch.equal(a.tokens["text_encoder"][0], q.tokens["text_encoder"][0])
    assert len(list((tmp_path / "cache" / "itigen").iterdir())) == 1


# generation --------------------------------------------------------------------------------------
def test_every_combination_gets_the_same_number_of_images(tiny_pipelines):
    m = ITIGen(attributes="gender,skin_tone", reference_dir="unused")
    units = make_units(load_suite("occupations"), "itigen", "m", 16, 0, "test", 1)
    counts = np.bincount([m.combination_of(u) for u in units], minlength=8)
    assert counts.tolist() == [2] * 8


def test_amplified_scales_each_rows_columns_for_every_head():
    probs = torch.rand(2 * 3, 4, 5)  # 2 rows x 3 heads, 4 queries, 5 tokens
    scale = torch.ones(2, 5)
    scale[1, [2, 3]] = 10
    out = amplified(probs, scale, heads=3)
    assert torch.equal(out[:3], probs[:3])
    assert torch.allclose(out[3:, :, 2:4], 10 * probs[3:, :, 2:4]) and torch.equal(out[3:, :, [0, 1, 4]], probs[3:, :, [0, 1, 4]])


def test_switch_step_by_share():
    assert [switch_step(50, 0.2), switch_step(15, 0.2), switch_step(5, 0.4), switch_step(5, 0.0)] == [10, 3, 2, 0]


def test_fairqueue_conditions_the_first_steps_on_the_base_prompt_then_amplifies_the_tokens(tiny_pipelines, tiny_clip,
                                                                                           references, monkeypatch):
    import fairbench.baselines.fairqueue as fq

    backend = load_backend(str(tiny_pipelines["sd1"]))
    q = FairQueue(reference_dir=str(references), clip_model=str(tiny_clip[0]), epochs=2, steps_per_epoch=1,
                  reference_per_group=2, queue=0.4, cache=False)
    q.prepare(backend, None, None)
    units = make_units(load_suite("occupations"), "fairqueue", "m", 2, 0, "test", 1)
    texts = [u.prompt for u in units]
    base = backend.encode(texts, "", PARAMS.guidance_scale)
    inclusive, insertions = q.inclusive(texts, [q.combination_of(u) for u in units])
    seen, amplified_at, scales = [], set(), []

    def record(module, args, kwargs, output):  # a forward hook sees the arguments the UNet was called with
        seen.append(kwargs["encoder_hidden_states"][len(units):].clone())

    def spy(probs, scale, heads):
        amplified_at.add(len(seen))
        scales.append(scale)
        return amplified(probs, scale, heads)

    monkeypatch.setattr(fq, "amplified", spy)
    processors = {n: type(p) for n, p in backend.unet.attn_processors.items()}
    hook = backend.unet.register_forward_hook(record, with_kwargs=True)
    try:
        q.generate(backend, base, [torch.Generator().manual_seed(u.seed) for u in units], PARAMS, units)
    finally:
        hook.remove()
    assert len(seen) == PARAMS.steps
    for step, states in enumerate(seen):
        expected = base.prompt_embeds if step < 2 else inclusive.prompt_embeds
        assert torch.equal(states, expected.to(states)), step
    assert amplified_at == {2, 3, 4}  # switch_step(5, 0.4) == 2
    scale = scales[0]
    assert scale[:len(units)].eq(1).all()  # the unconditional rows hold no inclusive token
    assert scale[len(units), list(insertions[0].positions)].eq(10).all() and scale[len(units)].sum() == 77 - 3 + 30
    assert {n: type(p) for n, p in backend.unet.attn_processors.items()} == processors  # restored
    assert not any("get_attention_scores" in vars(m) for m in backend.unet.modules())


def test_bad_fairqueue_arguments_are_user_errors():
    for args in ({"queue": 1.5}, {"amplify": 0}, {"amplify": "inf"}, {"amplify_tokens": "first"}, {"epochs": 0},
                 {"lr": "nan"}):
        with pytest.raises(UserError):
            build_method("fairqueue", args)


def test_itigen_deterministic_on_the_tiny_pipeline(tiny_pipelines, tiny_clip, references):
    from fairbench.generation.engine import generate_batch

    suite = load_suite("occupations")
    units = make_units(suite, "itigen", "m", 2, 0, "test", 2)
    outs = []
    for _ in range(2):
        backend = load_backend(str(tiny_pipelines["sd1"]))
        m = _itigen(references, tiny_clip)
        m.prepare(backend, suite, MethodContext(suite, "test", 2, PARAMS))
        _, images, _ = generate_batch(backend, m, units, PARAMS)
        outs.append(np.stack([np.asarray(im) for im in images]))
    assert np.array_equal(outs[0], outs[1])
