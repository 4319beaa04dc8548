"""synthface: renderer determinism and labels, training data skew, a short resumable training run."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from lab.synthface.captions import CaptionTable, caption
from fairbench.synthface.population import occupations, sample_labels
from fairbench.synthface.families import family_names, family_of, load_families
from fairbench.synthface.render import MONK, MONK_OF_GROUP, SKIN_GROUPS, FaceSpec, render_face, render_negative


def test_every_occupation_has_one_family():
    fam = family_of()
    assert len(fam) == 153 and {o for o, _ in occupations()} == set(fam)
    assert len(family_names()) == 11


def test_render_is_deterministic_and_varied():
    spec = FaceSpec("female", "dark", "young", "healthcare")
    a, b = render_face(spec, 7), render_face(spec, 7)
    assert a.shape == (32, 32, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b)
    assert not np.array_equal(a, render_face(spec, 8))  # pose, hair, lighting vary with the seed
    assert np.array_equal(render_negative(3), render_negative(3))


def _face_luminance(img: np.ndarray) -> float:
    # the median over the face centre is skin (eyes, nose and mouth are a minority of its pixels)
    return float(np.median(img[13:21, 11:21].astype(float).mean(-1)))


def test_skin_tone_label_matches_pixels():
    # same seed (same pose and lighting), four skin groups: the face centre darkens group by group,
    # and the groups' Monk luminance ranges do not overlap (MST 1-3 > 4-5 > 6-7 > 8-10)
    for seed in range(25):
        lums = [_face_luminance(render_face(FaceSpec("male", g, "young", "office"), seed)) for g in SKIN_GROUPS]
        assert all(a > b + 5 for a, b in zip(lums, lums[1:])), (seed, lums)
    ranges = [[np.mean(MONK[i]) for i in MONK_OF_GROUP[g]] for g in range(4)]
    assert all(min(a) > max(b) for a, b in zip(ranges, ranges[1:]))


def test_gender_presentation_long_hair_reaches_the_shoulders():
    # long hair falls beside the neck for female presentation; male hair stops above the ears
    def hair_beside_neck(gender: str, seed: int) -> float:
        spec = FaceSpec(gender, "light", "young", "healthcare")  # plain light background
        img = render_face(spec, seed).astype(float)
        bg = np.asarray(load_families()["healthcare"].look.background, dtype=float)
        return float(np.abs(img[16:20, 8:10] - bg).sum(-1).mean())  # beside the jaw, below the ears

    female = np.mean([hair_beside_neck("female", s) for s in range(30)])
    male = np.mean([hair_beside_neck("male", s) for s in range(30)])
    assert female > male + 20


def test_training_skew_follows_sd15_shares():
    occs = occupations()
    lab = sample_labels(200_000, 0)
    observed = np.bincount(lab["occupation"], weights=lab["gender"], minlength=153) / np.bincount(lab["occupation"],
                                                                                                    minlength=153)
    expected = np.array([f for _, f in occs])
    assert np.abs(observed - expected).max() < 0.06
    assert np.corrcoef(observed, expected)[0, 1] > 0.99


def test_captions_use_attribute_words():
    assert caption("nurse", (), 0, 0, 0) == "a photo of the face of a nurse"
    assert caption("nurse", ("gender",), 1, 0, 0) == "a photo of the face of a female nurse"
    assert caption("accountant", ("age", "gender", "skin"), 0, 3, 1) == \
        "a photo of the face of an old male dark-skinned accountant"
    table = CaptionTable.build(2)
    assert table.texts[0] == "" and len(set(table.texts)) == len(table.texts)


def test_short_training_run_resumes_to_the_same_weights(tmp_path):
    from lab.synthface.train import TrainConfig, train_unet

    cfg = TrainConfig(steps=4, batch_size=4, n_renders=32, n_occupations=2, checkpoint_every=2, warmup=2,
                      balanced_renders=16)
    straight = tmp_path / "straight"
    assert train_unet(straight, cfg, progress=False) == 4
    paused = tmp_path / "paused"
    assert train_unet(paused, cfg, max_minutes=0, progress=False) == 1  # stops (and checkpoints) after one step
    assert train_unet(paused, cfg, progress=False) == 4
    a = load_file(straight / "final" / "unet" / "diffusion_pytorch_model.safetensors")
    b = load_file(paused / "final" / "unet" / "diffusion_pytorch_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    initial = load_file(paused / "checkpoint" / "unet.safetensors")
    assert any(not torch.equal(initial[k], a[k]) for k in a)  # EMA differs from the raw weights


def test_a_paused_training_run_refuses_other_settings(tmp_path):
    from fairbench.errors import UserError
    from lab.synthface.train import TrainConfig, train_unet

    cfg = TrainConfig(steps=3, batch_size=2, n_renders=8, n_occupations=1)
    assert train_unet(tmp_path, cfg, max_minutes=0, progress=False) == 1
    with pytest.raises(UserError, match=r"other settings \(steps 3 -> 6\)"):
        train_unet(tmp_path, TrainConfig(**{**cfg.__dict__, "steps": 6}), progress=False)
    assert json.loads((tmp_path / "train_config.json").read_text())["steps"] == 3
    assert train_unet(tmp_path, cfg, progress=False) == 3


def test_exported_folder_loads_as_a_backend(tmp_path):
    from fairbench.models import load_backend, model_defaults
    from fairbench.models.backend import SamplingParams
    from lab.synthface.train import TrainConfig, train_unet

    train_unet(tmp_path, TrainConfig(steps=1, batch_size=2, n_renders=8, n_occupations=1), progress=False)
    folder = str(tmp_path / "final")
    assert model_defaults(folder)["classifier"] == "synthface"
    backend = load_backend(folder)
    cond = backend.encode(["a photo of the face of a nurse"] * 2, guidance_scale=2.0)
    assert cond.prompt_embeds.shape == (2, 24, 384)
    gens = [torch.Generator().manual_seed(s) for s in (0, 1)]
    images, nsfw = backend.generate(cond, gens, SamplingParams(steps=3, guidance_scale=2.0))
    assert [im.size for im in images] == [(32, 32), (32, 32)] and nsfw == [False, False]


def test_group_naming_captions_take_balanced_images():
    from lab.synthface.captions import NEUTRAL, sample_caption_rows
    from fairbench.synthface.population import RenderSet
    from fairbench.prompts import render_template

    skewed, balanced = sample_labels(300, 0, 3), sample_labels(20_000, 1, 3, balanced=True)
    assert abs(balanced["gender"].mean() - 0.5) < 0.02
    assert np.all(np.abs(np.bincount(balanced["skin"], minlength=4) / 20_000 - 0.25) < 0.02)
    both = {k: np.concatenate([skewed[k], balanced[k]]) for k in skewed}
    rs = RenderSet(images=np.zeros((len(both["gender"]), 1, 1, 3), np.uint8), **both)
    table = CaptionTable.build(3)
    rows, idx = sample_caption_rows(table, rs, np.arange(300), np.random.default_rng(0), 0.3,
                                    balanced=np.arange(300, len(both["gender"])))
    neutral = {render_template(NEUTRAL, occupation=o) for o, _ in occupations(3)}
    texts = [table.texts[r] for r in rows]
    named = np.array([t != "" and t not in neutral for t in texts])
    assert named.any() and (~named).any()
    assert np.all(idx[named] >= 300) and np.all(idx[~named] < 300)


def test_growing_the_text_pathway_starts_from_the_same_function(tmp_path):
    from fairbench.synthface.pipeline import make_unet
    from lab.synthface.train import init_weights

    torch.manual_seed(0)
    small = make_unet(transformer_layers=1)
    small.save_pretrained(tmp_path / "small")
    grown = make_unet(transformer_layers=3)
    init_weights(grown, tmp_path / "small")
    x, cond, t = torch.randn(2, 3, 32, 32), torch.randn(2, 24, 384), torch.tensor([10, 900])
    with torch.no_grad():
        assert torch.allclose(grown(x, t, encoder_hidden_states=cond).sample,
                              small(x, t, encoder_hidden_states=cond).sample, atol=1e-6)
    new = grown.down_blocks[2].attentions[0].transformer_blocks[2]
    assert not torch.equal(new.attn2.to_k.weight, torch.zeros_like(new.attn2.to_k.weight))  # only outputs zeroed
    assert sum(p.numel() for p in grown.parameters()) > 1.5 * sum(p.numel() for p in small.parameters())
    grown.save_pretrained(tmp_path / "grown")
    try:  # a folder with blocks this configuration lacks is refused
        init_weights(make_unet(transformer_layers=1), tmp_path / "grown")
    except ValueError as e:
        assert "grow from" in str(e)
    else:
        raise AssertionError("shrinking was accepted")


def test_text_pathway_has_its_own_learning_rate_group_and_timesteps_can_lean_to_high_noise():
    from fairbench.synthface.population import render_set
    from fairbench.synthface.pipeline import make_unet
    from lab.synthface.train import TrainConfig, _batch, param_groups

    unet = make_unet(transformer_layers=2)
    rest, text = param_groups(unet, 10.0)
    names = {id(p): n for n, p in unet.named_parameters()}
    text_names = {names[id(p)] for p in text["params"]}
    assert text["lr_scale"] == 10.0 and rest["lr_scale"] == 1.0
    assert len(rest["params"]) + len(text["params"]) == len(list(unet.parameters()))
    assert all(".attn2." in n or ".transformer_blocks.1." in n for n in text_names)
    assert "mid_block.attentions.0.transformer_blocks.0.attn2.to_k.weight" in text_names
    assert "mid_block.attentions.0.transformer_blocks.1.ff.net.2.weight" in text_names
    assert "mid_block.attentions.0.transformer_blocks.0.attn1.to_q.weight" not in text_names

    rs = render_set(16, 0, 2)
    table = CaptionTable.build(2)
    emb = torch.zeros(len(table.texts), 24, 384)
    t_uniform = torch.cat([_batch(s, TrainConfig(batch_size=64), rs, emb, table, 1000)[2] for s in range(20)])
    t_high = torch.cat([_batch(s, TrainConfig(batch_size=64, timestep_power=0.5), rs, emb, table, 1000)[2]
                        for s in range(20)])
    assert t_high.max() <= 999 and t_high.min() >= 0
    # u**0.5 has mean 2/3 (uniform: 1/2); the same draws, so every t moves up or stays
    assert abs(t_uniform.float().mean() / 1000 - 0.5) < 0.03 and abs(t_high.float().mean() / 1000 - 2 / 3) < 0.03
    assert torch.all(t_high >= t_uniform)


def test_fresh_named_captions_name_uniform_groups_and_keep_neutral_images():
    from fairbench.synthface.population import RenderSet, render_labels
    from lab.synthface.captions import sample_fresh_named

    lab = sample_labels(400, 0, 4)
    rs = RenderSet(images=render_labels(lab, np.arange(400)), **lab)
    table = CaptionTable.build(4)
    idx = np.flatnonzero(rs.occupation == 3)  # air conditioning installer: SD 1.5 drew no women
    assert rs.gender[idx].sum() == 0
    idx = np.resize(idx, 1500)
    rows, images = sample_fresh_named(table, rs, idx, np.random.default_rng(0), 7, 0.3, 4)
    again = sample_fresh_named(table, rs, idx, np.random.default_rng(0), 7, 0.3, 4)
    assert np.array_equal(rows, again[0]) and np.array_equal(images, again[1])
    texts = [table.texts[r] for r in rows]
    female = np.array([" female " in t for t in texts])
    male = np.array([" male " in t for t in texts])
    assert 0.4 < female.sum() / (female.sum() + male.sum()) < 0.6  # named groups drawn uniformly
    plain = np.array([t == "" or t == "a photo of the face of an air conditioning installer" for t in texts])
    assert plain.any() and np.array_equal(images[plain], rs.images[idx][plain])  # neutral: skewed renders
    assert not np.array_equal(images[female][:5], rs.images[idx][female][:5])  # named: fresh renders


def test_unlabelled_renders_are_unchanged_and_expressions_are_exact():
    """Specs without an expression render exactly what they rendered before expressions were labelled
    (the text-only world's training data stays reproducible); a labelled expression changes the face
    only around the mouth, brows and eyes, from the same random draws."""
    import hashlib

    from fairbench.synthface.render import AGE_GROUPS, EXPRESSIONS, GENDERS, load_families

    fams = list(load_families())
    h = hashlib.sha256()
    for seed in range(60):
        spec = FaceSpec(GENDERS[seed % 2], SKIN_GROUPS[seed % 4], AGE_GROUPS[(seed // 2) % 2], fams[seed % len(fams)])
        h.update(render_face(spec, seed).tobytes())
    for seed in range(20):
        h.update(render_negative(seed).tobytes())
    assert h.hexdigest() == "b42295c62d28bcdee75038d6e7a164fd348cb16aa8158457bb58a50ab50d898f"  # before expressions
    base = FaceSpec("male", "medium-dark", "young", "office")
    faces = {e: render_face(FaceSpec(base.gender, base.skin, base.age, base.family, e), 3) for e in EXPRESSIONS}
    assert len({f.tobytes() for f in faces.values()}) == len(EXPRESSIONS)  # five different faces
    for f in faces.values():  # background, clothing and lighting are the seed's: the lower third agrees
        assert np.abs(f[24:].astype(int) - faces["neutral"][24:].astype(int)).max() <= 40
    with pytest.raises(ValueError, match="unknown expression"):
        FaceSpec("male", "light", "young", "office", "bored")


def test_labelled_expressions_are_drawn_boldly_enough_to_read_at_32_px():
    """Every pair of labelled expressions differs, on average over 48 faces of every gender, skin tone
    and age, in at least 12 pixels by more than 60 (RGB sum). Measured: 14.6 (neutral / sad) to 39.1;
    the first, thin mouths read 5.0 (neutral / smiling), 8.0 and 10.1, and neither a denoiser nor
    synthclip's image tower learned them."""
    import itertools

    from fairbench.synthface.render import AGE_GROUPS, EXPRESSIONS, GENDERS

    fams = list(load_families())
    diff = {pair: [] for pair in itertools.combinations(EXPRESSIONS, 2)}
    for seed in range(48):
        spec = (GENDERS[seed % 2], SKIN_GROUPS[(seed // 2) % 4], AGE_GROUPS[(seed // 8) % 2], fams[seed % 6])
        faces = {e: render_face(FaceSpec(*spec, e), seed).astype(int) for e in EXPRESSIONS}
        for a, b in diff:
            diff[(a, b)].append(int((np.abs(faces[a] - faces[b]).sum(-1) > 60).sum()))
    means = {pair: np.mean(v) for pair, v in diff.items()}
    assert min(means.values()) >= 12, means


def test_the_world_hands_methods_its_group_renders():
    # what itigen and finetune ask of an embedded world (by capability, not by class)
    from fairbench.synthface.pipeline import SynthFacePipeline
    from fairbench.synthface.population import group_renders

    groups, tag = SynthFacePipeline.reference_images("gender", 3, 5)
    direct = group_renders("gender", 3, 5)
    assert tag == "synthface-renders:5:3"  # part of ITI-GEN's cache key: unchanged, so cached tokens stay valid
    assert [len(g) for g in groups] == [3, 3]
    assert all(np.array_equal(np.asarray(im), a) for g, d in zip(groups, direct) for im, a in zip(g, d))
    with pytest.raises(ValueError, match="renders no"):
        SynthFacePipeline.reference_images("expression", 3, 5)
