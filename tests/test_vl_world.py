"""The vision-language world: labelled-expression data, synthclip (training, resume, shipping form, loss),
the classifier's expression head, and the registered names that load offline."""

from __future__ import annotations

import json
import tempfile

import numpy as np
import pytest
import torch

from lab.synthface.captions import CaptionTable, caption
from fairbench.synthface.population import sample_labels, subjects


def test_the_text_only_worlds_data_is_unchanged_by_labelled_expressions():
    """Labels, caption table and a fresh-named batch of the text-only world, hashed before expressions existed."""
    import hashlib

    from fairbench.synthface.population import render_set
    from lab.synthface.captions import sample_fresh_named

    h = hashlib.sha256()
    lab = sample_labels(1000, 0)
    for k in sorted(lab):
        h.update(lab[k].astype(np.int64).tobytes())
    table = CaptionTable.build(3)
    h.update("\n".join(table.texts).encode())
    h.update(table.index[..., 0].astype(np.int64).tobytes())
    rows, images = sample_fresh_named(table, render_set(8, 0, 3), np.arange(8), np.random.default_rng(0), 7, 0.3, 3)
    h.update(rows.astype(np.int64).tobytes())
    h.update(images.tobytes())
    assert h.hexdigest() == "b5f806284d05e192768eb92e76dbce27f4e0f2a11a75341a5a29be742b7a64ed"


def test_labelled_expression_data_follows_the_designed_skews():
    lab = sample_labels(120_000, 0, expressions=True)
    subs = subjects(expressions=True)
    assert len(subs) == 153 + 12
    for o in range(153, 165):  # each emotion descriptor: its expression always, its designed shares
        rows = lab["occupation"] == o
        assert (lab["expression"][rows] == subs[o].expression).all()
        assert abs(lab["gender"][rows].mean() - subs[o].female) < 0.06
        assert abs((lab["skin"][rows] == 0).mean() - subs[o].skin[0]) < 0.06
    free = lab["occupation"] < 153
    assert np.abs(np.bincount(lab["expression"][free], minlength=5) / free.sum() - 0.2).max() < 0.01  # uniform
    assert len(np.unique(lab["family"][~free])) == 11  # a descriptor's family is drawn per render


def test_captions_name_the_expression_first_and_descriptors_stay_neutral():
    assert caption("nurse", (), 0, 0, 0, 1) == "a photo of the face of a smiling nurse"
    assert caption("nurse", ("gender",), 1, 0, 0, 0) == "a photo of the face of a calm female nurse"
    table = CaptionTable.build(2, expressions=True)
    assert table.index.shape[-1] == 6 and table.neutral_only.sum() == 12
    assert {table.texts[r] for r in table.index[2:].ravel()} >= {"a photo of the face of a sad person"}
    sad = [s.text for s in subjects(2, True)].index("sad person")
    assert {table.texts[r] for r in table.index[sad].ravel()} == {"a photo of the face of a sad person"}
    plain = CaptionTable.build(2)
    assert plain.index.shape[-1] == 1 and set(plain.texts) < set(table.texts)


def test_contrastive_loss_matches_a_hand_computation():
    from lab.synthface.clip_train import contrastive_loss

    img = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]), dim=-1)
    txt = torch.nn.functional.normalize(torch.tensor([[1.0, 0.2], [0.1, 1.0]]), dim=-1)
    rows = np.array([7, 9, 7])  # images 0 and 2 share caption 7 (first distinct caption)
    logits = (2.0 * img @ txt.T).numpy()

    def log_softmax(v):
        return v - np.log(np.exp(v).sum())

    i2t = -np.mean([log_softmax(logits[0])[0], log_softmax(logits[1])[1], log_softmax(logits[2])[0]])
    col0, col1 = log_softmax(logits[:, 0]), log_softmax(logits[:, 1])
    t2i = -np.mean([(col0[0] + col0[2]) / 2, col1[1]])
    got = contrastive_loss(img, txt, rows, torch.tensor(2.0)).item()
    assert got == pytest.approx((i2t + t2i) / 2, rel=1e-6)


@pytest.fixture(scope="module")
def tiny_clip_run(tmp_path_factory):
    from lab.synthface.clip_train import ClipTrainConfig, train_clip

    out = tmp_path_factory.mktemp("clip")
    cfg = ClipTrainConfig(steps=4, batch_size=8, n_renders=48, n_occupations=2, checkpoint_every=2, warmup=2)
    assert train_clip(out / "whole", cfg, progress=False) == 4
    return out, cfg


def test_a_few_synthclip_steps_run_and_resume_to_the_same_weights(tiny_clip_run):
    from safetensors.torch import load_file

    from lab.synthface.clip_train import ClipTrainConfig, train_clip

    out, cfg = tiny_clip_run
    half = ClipTrainConfig(**{**cfg.__dict__, "steps": 4})
    train_clip(out / "split", ClipTrainConfig(**{**cfg.__dict__, "steps": 4}), max_minutes=0, progress=False)
    assert json.loads((out / "split" / "checkpoint" / "state.json").read_text())["step"] == 1  # stopped early
    assert train_clip(out / "split", half, progress=False) == 4
    a = load_file(out / "whole" / "final" / "synthclip_delta.safetensors")
    b = load_file(out / "split" / "final" / "synthclip_delta.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # what ships: the trained tensors only, not MiniLM's embeddings or frozen lower layers
    assert not any(k.startswith(("text_model.embeddings.", "text_model.encoder.layer.0.")) for k in a)
    assert any(k.startswith("text_model.encoder.layer.5.") for k in a) and "logit_scale" in a
    # nor the folder this machine loaded MiniLM from
    config = json.loads((out / "whole" / "final" / "config.json").read_text())
    assert {config.get("_name_or_path", ""), config["text_config"].get("_name_or_path", ""),
            config["vision_config"].get("_name_or_path", "")} == {""}


def test_a_checkpoint_resumes_only_under_its_own_settings(tiny_clip_run):
    """Every step derives from the settings: a resume under others is refused, and the record is kept."""
    from fairbench.errors import UserError
    from lab.synthface.clip_train import ClipTrainConfig, train_clip

    out, cfg = tiny_clip_run
    record = (out / "whole" / "train_config.json").read_bytes()
    for change in ({"steps": 6}, {"freeze_text": True}, {"seed": 1}):
        with pytest.raises(UserError, match=f"other settings \\({next(iter(change))} "):
            train_clip(out / "whole", ClipTrainConfig(**{**cfg.__dict__, **change}), progress=False)
        assert (out / "whole" / "train_config.json").read_bytes() == record
    assert train_clip(out / "whole", cfg, progress=False) == 4  # the same settings: nothing left to do


def test_a_locked_text_stage_keeps_the_text_side_and_resumes(tiny_clip_run):
    """The second stage (--init-from, --freeze-text): the text encoder is bit-identical, so the denoiser's
    token states and their lean do not move; the pooler, both projections and the image side train; a split
    run equals a whole one."""
    from safetensors.torch import load_file

    from lab.synthface.clip_train import ClipTrainConfig, train_clip
    from fairbench.synthface.synthclip import DELTA

    out, first = tiny_clip_run
    cfg = ClipTrainConfig(**{**first.__dict__, "steps": 3, "init_from": str(out / "whole" / "final"),
                             "freeze_text": True, "hard_negatives": 9, "expression_share": 1.0})
    assert train_clip(out / "stage2", cfg, progress=False) == 3
    train_clip(out / "stage2-split", cfg, max_minutes=0, progress=False)
    assert train_clip(out / "stage2-split", cfg, progress=False) == 3
    before = load_file(out / "whole" / "final" / DELTA)
    after = load_file(out / "stage2" / "final" / DELTA)
    split = load_file(out / "stage2-split" / "final" / DELTA)
    assert all(torch.equal(after[k], split[k]) for k in after)
    encoder = [k for k in after if k.startswith("text_model.encoder.")]
    assert len(encoder) > 40 and all(torch.equal(before[k], after[k]) for k in encoder)
    for prefix in ("text_model.pooler.", "text_projection.", "vision_model.", "visual_projection.", "logit_scale"):
        assert any(not torch.equal(before[k], after[k]) for k in after if k.startswith(prefix)), prefix


def test_a_reseeded_image_tower_stage_keeps_the_text_side(tiny_clip_run):
    """--init-from with --image-init and --freeze-text: the text encoder is the first stage's bit for bit,
    the image tower has the classifier's two bodies side by side (256-d pooled) and trains."""
    from safetensors.torch import load_file

    from lab.synthface.clip_train import ClipTrainConfig, train_clip
    from fairbench.synthface.pipeline import ASSETS
    from fairbench.synthface.synthclip import DELTA

    out, first = tiny_clip_run
    cfg = ClipTrainConfig(**{**first.__dict__, "steps": 2, "init_from": str(out / "whole" / "final"),
                             "freeze_text": True, "image_init": str(ASSETS), "image_bodies": ("body", "expression_body")})
    assert train_clip(out / "reseeded", cfg, progress=False) == 2
    before, after = load_file(out / "whole" / "final" / DELTA), load_file(out / "reseeded" / "final" / DELTA)
    encoder = [k for k in before if k.startswith("text_model.encoder.")]
    assert len(encoder) > 40 and all(torch.equal(before[k], after[k]) for k in encoder)
    assert after["visual_projection.weight"].shape == (256, 2 * 4 * 32)  # the classifier's width, two bodies
    assert any(k.startswith("vision_model.extra_bodies.0.") for k in after)
    config = json.loads((out / "reseeded" / "final" / "config.json").read_text())["vision_config"]
    assert (config["n_bodies"], config["width"]) == (2, 32)


def test_cached_caption_states_give_the_text_towers_features():
    from lab.synthface.clip_train import caption_states, text_features
    from fairbench.synthface.synthclip import build_model, build_processor

    model = build_model()
    tok = build_processor().tokenizer(["a photo of the face of a smiling nurse", "a photo of the face of a person",
                                       "a photo of the face of a sad elderly dark-skinned female nurse"],
                                      padding="max_length", truncation=True, return_tensors="pt")
    cached = caption_states(model, tok)
    assert cached.shape == (3, 384)
    assert model.training  # handed back in training mode
    model.eval()
    with torch.no_grad():
        full = text_features(model, tok, np.array([2, 0]), None)
    assert torch.allclose(text_features(model, tok, np.array([2, 0]), cached), full, atol=1e-6)


def test_hard_negatives_pick_k_counterfactuals_or_all_of_them():
    from lab.synthface.clip_train import _pick

    rows = np.arange(10, 15)
    rng = np.random.default_rng(0)
    assert _pick(rows, 1, np.random.default_rng(3)) == rows[np.random.default_rng(3).integers(5)]
    got = _pick(rows, 3, rng)
    assert len(got) == 3 and len(set(got)) == 3 and set(got) <= set(rows)
    assert list(_pick(rows, 9, rng)) == list(rows) and len(_pick(rows[:0], 4, rng)) == 0


def test_the_expression_share_sets_how_often_a_caption_names_the_expression():
    from fairbench.prompts import attribute
    from fairbench.synthface.population import render_set
    from lab.synthface.captions import sample_caption_rows

    table = CaptionTable.build(3, expressions=True)
    rs = render_set(3000, 0, 3, expressions=True)
    words = [f" {g.adjective} " for g in attribute("expression").groups]
    for share, low, high in ((0.0, 0.0, 0.0), (0.3, 0.25, 0.35), (1.0, 1.0, 1.0)):
        rows, idx = sample_caption_rows(table, rs, np.arange(3000), np.random.default_rng(1), expression_share=share)
        texts = [table.texts[r] for r, o in zip(rows, rs.occupation[idx]) if r and o < 3]  # occupations' captions
        expr = [t for t in texts if any(w in t for w in words)]
        got = len(expr) / len(texts)
        assert low <= got <= high, (share, got)
        for t in expr:  # the expression named is the render's own
            r = table.texts.index(t)
            k = list(rows).index(r)
            assert words[rs.expression[idx[k]]] in t


def test_the_shipped_form_assembles_into_a_from_pretrained_folder_that_equals_the_trained_model(
        tiny_clip_run, tmp_path):
    from transformers import AutoModel

    from fairbench.models.dual_encoder import DualEncoder
    from fairbench.synthface.synthclip import DELTA, synthclip_folder
    from fairbench.synthface.text import load_text_encoder

    out, _ = tiny_clip_run
    folder = synthclip_folder(out / "whole" / "final")
    assert synthclip_folder(out / "whole" / "final") == folder  # built once, keyed by the shipped tensors
    model = AutoModel.from_pretrained(folder)
    from safetensors.torch import load_file

    shipped = load_file(out / "whole" / "final" / DELTA)
    params = model.state_dict()
    assert any(k.endswith("running_var") for k in shipped)  # BatchNorm statistics ship too
    assert all(torch.equal(params[k], t.to(params[k].dtype)) for k, t in shipped.items())
    enc = DualEncoder(folder)
    feats = enc.text_features(["a photo of the face of a nurse", "a photo of the face of a sad person"])
    assert feats.shape == (2, 256) and torch.allclose(feats.norm(dim=-1), torch.ones(2))
    text_model, tok = load_text_encoder(str(out / "whole" / "final"))
    assert torch.equal(dict(text_model.named_parameters())["encoder.layer.5.output.dense.weight"],
                       params["text_model.encoder.layer.5.output.dense.weight"])
    assert tok.model_max_length == 24


def test_the_expression_head_leaves_every_other_head_bit_identical(tmp_path):
    from fairbench.synthface.classifier import load_classifier, predict_all
    from lab.synthface.classifier_train import train_expression_head
    from fairbench.synthface.population import render_set
    from fairbench.synthface.pipeline import ASSETS

    meta = train_expression_head(ASSETS, tmp_path / "clf", steps=3, progress=False, n_renders=64, n_heldout=40)
    old, _ = load_classifier(str(ASSETS))
    new, new_meta = load_classifier(str(tmp_path / "clf"))
    images = render_set(20, 5, expressions=True).images
    a, b = predict_all(old, images), predict_all(new, images)
    assert set(b) == set(a) | {"expression"} and b["expression"].shape == (20, 5)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert new_meta["groups"]["expression"] == ["neutral", "smiling", "sad", "angry", "surprised"]
    assert meta["heldout"]["gender"] == json.loads((ASSETS / "classifier.json").read_text())["heldout"]["gender"]
    assert meta["heldout_expressions"]["expression"]["n"] == 40


def test_image_init_seeds_the_image_tower_with_the_expression_body(tmp_path):
    """--image-init: synthclip's image tower starts as the classifier's expression body, at its width;
    a classifier without an expression head is a user error."""
    from safetensors.torch import save_file

    from fairbench.errors import UserError
    from fairbench.synthface.classifier import load_classifier
    from lab.synthface.classifier_train import train_expression_head
    from lab.synthface.clip_train import init_image_tower
    from fairbench.synthface.pipeline import ASSETS
    from fairbench.synthface.synthclip import build_model

    train_expression_head(ASSETS, tmp_path / "clf", steps=2, progress=False, n_renders=32, n_heldout=20)
    net, meta = load_classifier(str(tmp_path / "clf"))
    model = build_model(vision_width=meta["width"])
    init_image_tower(model, tmp_path / "clf")
    got, want = model.vision_model.body.state_dict(), net.expression_body.state_dict()
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
    x = torch.randn(4, 3, 32, 32)
    model.eval()
    with torch.no_grad():
        assert torch.allclose(model.vision_model(pixel_values=x).pooler_output, net.expression_body(x))
    plain = tmp_path / "plain"  # the classifier as it was before its expression head
    plain.mkdir()
    save_file({k: v for k, v in net.state_dict().items() if not k.startswith("expression_")},
              str(plain / "classifier.safetensors"))
    groups = {k: v for k, v in meta["groups"].items() if k != "expression"}
    (plain / "classifier.json").write_text(json.dumps({**meta, "groups": groups}))
    with pytest.raises(UserError, match="no expression head"):
        init_image_tower(build_model(vision_width=meta["width"]), plain)
    two = build_model(vision_width=meta["width"], vision_bodies=2)  # attributes and expression, side by side
    init_image_tower(two, tmp_path / "clf", ("body", "expression_body"))
    two.eval()
    with torch.no_grad():
        assert torch.allclose(two.vision_model(pixel_values=x).pooler_output,
                              torch.cat([net.body(x), net.expression_body(x)], dim=1))


def test_the_registered_worlds_and_synthclip_load_offline(capsys):
    from fairbench.cli.main import main
    from fairbench.models import load_backend
    from fairbench.models.dual_encoder import DualEncoder
    from fairbench.cache import root as cache_root
    from fairbench.synthface.synthclip import ASSETS, DELTA

    vl, text = load_backend("synthface-vl"), load_backend("synthface")
    clip = DualEncoder("synthclip")
    assert str(cache_root()).startswith(tempfile.gettempdir())  # the assembled folder lands in the test cache
    assert clip.dim == 256 and clip.image_size == 32 and clip.logit_scale > 1
    # the world's text encoder is synthclip's text tower, exactly (not MiniLM's)
    a = dict(vl.pipe.text_encoder.named_parameters())["encoder.layer.5.output.dense.weight"]
    b = dict(clip.model.named_parameters())["text_model.encoder.layer.5.output.dense.weight"]
    assert torch.equal(a, b) and not torch.equal(a, dict(text.pipe.text_encoder.named_parameters())[
        "encoder.layer.5.output.dense.weight"])
    assert vl.fingerprint != text.fingerprint and (ASSETS / DELTA).stat().st_size < 20e6
    assert main(["ls", "models"]) == 0
    listed = capsys.readouterr().out
    assert "synthface-vl" in listed and "vision-language" in listed and "text-only" in listed


def test_clip_frechet_distance_on_synthclip_is_near_zero_for_two_halves_and_grows_with_a_shift():
    from fairbench.metrics.features import build_extractor
    from fairbench.metrics.quality import frechet_distance
    from fairbench.synthface.population import render_set

    ext = build_extractor("clip", {"model": "synthclip"})
    x = torch.from_numpy(render_set(600, 11, expressions=True).images).permute(0, 3, 1, 2).contiguous()
    with torch.no_grad():
        a, b = ext(x[:300]), ext(x[300:])
        fds = [frechet_distance(a, ext((x[300:].float() * f).round().to(torch.uint8))) for f in (0.85, 0.7, 0.5, 0.3)]
    same = frechet_distance(a, b)  # measured 1.55; darkened by 0.85 / 0.7 / 0.5 / 0.3: 2.4 / 11.1 / 39.0 / 61.8
    assert same < fds[0] < fds[1] < fds[2] < fds[3]  # grows with the injected shift
    assert fds[1] > 5 * same and fds[3] > 30 * same  # two halves of one set: sampling noise only


def test_hard_negatives_change_one_named_group_and_only_add_image_to_text_columns():
    from lab.synthface.clip_train import contrastive_loss

    table = CaptionTable.build(2, expressions=True)
    cf = table.counterfactuals()
    row = table.texts.index("a photo of the face of a smiling old female accountant")
    assert {table.texts[r] for r in cf[row]} == {
        "a photo of the face of a smiling old male accountant", "a photo of the face of a smiling young female accountant",
        *(f"a photo of the face of {w} old female accountant" for w in ("a calm", "a sad", "an angry", "a surprised"))}
    assert len(cf[table.texts.index("a photo of the face of a sad person")]) == 0  # descriptors: neutral only
    assert len(cf[table.texts.index("a photo of the face of an accountant")]) == 0
    img = torch.nn.functional.normalize(torch.randn(3, 4), dim=-1)
    txt = torch.nn.functional.normalize(torch.randn(3, 4), dim=-1)
    rows = np.array([4, 9, 4])
    base = contrastive_loss(img, txt[:2], rows, torch.tensor(3.0))
    with_hard = contrastive_loss(img, txt, rows, torch.tensor(3.0))
    assert with_hard > base  # an extra negative column only raises the image-to-text loss


def test_a_leaderboard_over_both_worlds_shows_the_model_column():
    import pandas as pd

    from fairbench.outputs.leaderboard import markdown_table

    row = {"attribute": "gender", "method": "vanilla", "method_level": "none", "n_faces": 10, "n_images": 10,
           "bias_gap": 0.5, "bias_gap_ci_low": 0.4, "bias_gap_ci_high": 0.6}
    one = pd.DataFrame([{**row, "model": "synthface"}, {**row, "model": "synthface", "method": "fairmap"}])
    both = pd.DataFrame([{**row, "model": "synthface"}, {**row, "model": "synthface-vl"}])
    assert "model" not in markdown_table(one, ("bias_gap",)).splitlines()[0]
    table = markdown_table(both, ("bias_gap",)).splitlines()
    assert table[0].split("|")[1].strip() == "model" and "synthface-vl" in table[3]


def test_variants_of_one_method_are_told_apart_by_their_run():
    import pandas as pd

    from fairbench.outputs.leaderboard import markdown_table

    row = {"attribute": "gender", "method": "fairmap", "method_level": "embedding", "n_faces": 10, "n_images": 10,
           "bias_gap": 0.5, "bias_gap_ci_low": 0.4, "bias_gap_ci_high": 0.6, "model": "synthface-vl"}
    ablation = pd.DataFrame([{**row, "run": "fairmap-test"}, {**row, "run": "fairmap-deep-test"}])
    header, _, first, second = markdown_table(ablation, ("bias_gap",)).splitlines()
    assert [c.strip() for c in header.split("|")[1:4]] == ["attribute", "method", "run"]
    assert "fairmap-test" in first and "fairmap-deep-test" in second
    distinct = pd.DataFrame([{**row, "run": "fairmap-test"}, {**row, "method": "vanilla", "run": "vanilla-test"}])
    assert "run" not in markdown_table(distinct, ("bias_gap",)).splitlines()[0]
