"""Baselines: each method's core mathematics checked independently, and determinism on the tiny pipeline."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fairbench.baselines.balancingact import BalancingAct, StepHeads, distribution_loss, fit_heads, guided_h, row_groups
from fairbench.baselines.debiasvl import DebiasVL, calibrated_projection
from fairbench.baselines.entigen import Entigen, intervention_text
from fairbench.baselines.fairdiffusion import FairDiffusion, edit_signs, sega_guidance
from fairbench.baselines.fairimagen import FairImagen, cross_groups, fair_pca, fit, noise_draw
from fairbench.baselines.hardprompt import HardPrompt, sample_groups
from fairbench.baselines.uce import UCE, closed_form_edit, cross_attention_projections, debias_target
from fairbench.classifiers.base import AttributeClassifier
from fairbench.errors import UserError
from fairbench.faces.base import Detection
from fairbench.generation.engine import generate_batch
from fairbench.methods import METHODS, MethodContext, build_method
from fairbench.models import load_backend
from fairbench.models.backend import Conditioning, SamplingParams
from fairbench.prompts import load_suite
from fairbench.units import make_units

PARAMS = SamplingParams(steps=3, guidance_scale=7.5)


def _cond(prompt_embeds: torch.Tensor) -> Conditioning:
    """A conditioning of token states only (no guidance)."""
    return Conditioning(prompt_embeds, None)


@pytest.fixture(scope="module")
def suite():
    return load_suite("occupations")


def _pixels(backend, method, units):
    _, images, _ = generate_batch(backend, method, units, PARAMS)
    return np.stack([np.asarray(im) for im in images])


# registry ---------------------------------------------------------------------------------------
def test_baselines_registered_with_level_and_source():
    levels = {e.name: e.meta["level"] for e in METHODS}
    names = ("entigen", "hardprompt", "debiasvl", "fairimagen", "itigen", "fairqueue", "fairdiffusion", "balancingact",
             "selfdebias", "uce", "finetune")
    assert {k: levels[k] for k in names} == {
        "entigen": "text", "hardprompt": "text", "debiasvl": "embedding", "fairimagen": "embedding",
        "itigen": "embedding", "fairqueue": "guidance", "fairdiffusion": "guidance", "balancingact": "guidance",
        "selfdebias": "guidance", "uce": "weights", "finetune": "weights"}
    assert all(METHODS.entry(n).meta["source"] for n in names)


def test_bad_method_arguments_are_user_errors():
    with pytest.raises(UserError):
        build_method("debiasvl", {"lam": "abc"})
    with pytest.raises(UserError):
        build_method("hardprompt", {"attributes": "gendr"})
    with pytest.raises(UserError):
        build_method("uce", {"edit_text": "nonsense"})
    with pytest.raises(UserError):
        build_method("fairimagen", {"keep": "1.5"})


# text level -------------------------------------------------------------------------------------
def test_entigen_intervention_text():
    assert intervention_text("nurse", ["gender"]) == "if all individuals can be a nurse irrespective of their gender"
    assert intervention_text("engineer", ["gender", "skin_tone"]) == (
        "if all individuals can be an engineer irrespective of their gender and skin color")


def test_entigen_rewrites_every_prompt(suite):
    m = Entigen()
    m.prepare(None, suite)
    unit = make_units(suite, "entigen", "m", 1, 0, "test", 1)[0]
    assert m.rewrite_prompt(unit) == unit.prompt + " if all individuals can be " + unit.prompt.split(" of the face of ")[1] + \
        " irrespective of their gender"


def test_hardprompt_names_a_uniform_group_and_leaves_explicit_prompts(suite):
    m = HardPrompt("gender,skin_tone")
    m.prepare(None, suite)
    units = make_units(suite, "hardprompt", "m", 400, 0, "test", 2)
    texts = [m.rewrite_prompt(u) for u in units]
    assert texts[0].startswith("a photo of the face of ") and texts[0] != units[0].prompt
    assert texts == [m.rewrite_prompt(u) for u in units]  # deterministic per unit
    female = np.mean([" female " in t for t in texts])
    dark = np.mean([" dark-skinned " in t for t in texts])
    assert abs(female - 0.5) < 4 * np.sqrt(0.25 / 800) and abs(dark - 0.25) < 4 * np.sqrt(0.1875 / 800)
    groups = np.array([sample_groups(u.seed, ["gender", "skin_tone"]) for u in units])
    assert set(groups[:, 0]) == {0, 1} and set(groups[:, 1]) == {0, 1, 2, 3}
    explicit = load_suite("explicit")
    m.prepare(None, explicit)  # no group template needed: every explicit prompt names its group
    e_units = make_units(explicit, "hardprompt", "m", 2, 0, "test", 4)
    assert [m.rewrite_prompt(u) for u in e_units] == [u.prompt for u in e_units]


# embedding level --------------------------------------------------------------------------------
def test_debiasvl_projection_matches_direct_matrix_computation():
    rng = np.random.default_rng(0)
    diffs = rng.normal(size=(6, 5))
    expected = np.linalg.inv(500 * sum(np.outer(d, d) for d in diffs) / 6 + np.eye(5))
    got = calibrated_projection(torch.tensor(diffs), 500.0).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-12)
    # one unit direction d: P d = d / (1 + lam), directions orthogonal to d untouched
    d = np.array([[0.6, 0.8, 0.0]])
    p = calibrated_projection(torch.tensor(d), 9.0).numpy()
    np.testing.assert_allclose(p @ d[0], d[0] / 10, atol=1e-12)
    np.testing.assert_allclose(p @ np.array([0.8, -0.6, 0.0]), [0.8, -0.6, 0.0], atol=1e-12)


def test_debiasvl_applies_p_to_every_prompt_token(tiny_sd, suite):
    backend = load_backend(str(tiny_sd))
    m = DebiasVL()
    m.prepare(backend, suite)
    diffs, pooled = m.pair_differences(backend)
    assert pooled is None and m.pooled_projection is None  # SD 1.x has no pooled embedding
    n_train = len(suite.select("train"))
    assert diffs.shape == (n_train, backend.encode(["x"], guidance_scale=0).prompt_embeds.shape[-1])
    cond = backend.encode(["a photo of the face of a nurse"], "", 7.5)
    out = m.transform_conditioning(cond, [], ["a photo of the face of a nurse"])
    p = calibrated_projection(diffs, 500.0).float()
    torch.testing.assert_close(out.prompt_embeds, cond.prompt_embeds @ p.T)
    assert torch.equal(out.negative_prompt_embeds, cond.negative_prompt_embeds)


def _fairpca_by_eigendecomposition(x, labels, dim):
    """Top-dim eigenvectors of (I - QQ^T) X^T X (I - QQ^T), Q an orthonormal basis of the group
    mean-difference rows: FairPCA written without a null-space basis."""
    z = np.eye(labels.max() + 1)[labels]
    zx = (z - z.mean(axis=0)).T @ x
    u, s, _ = np.linalg.svd(zx.T, full_matrices=False)
    q = u[:, s > 1e-10 * s[0]]
    perp = np.eye(x.shape[1]) - q @ q.T
    vals, vecs = np.linalg.eigh(perp @ x.T @ x @ perp)
    top = vecs[:, np.argsort(vals)[::-1][:dim]]
    return top @ top.T


def test_fairpca_projection_matches_a_direct_eigendecomposition():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(30, 7)) + np.repeat(np.eye(3, 7) * 2, 10, axis=0)  # three shifted groups
    labels = np.repeat(np.arange(3), 10)
    for dim in (1, 3, 5):
        projection, directions = fair_pca(x, labels, dim)
        np.testing.assert_allclose(projection, _fairpca_by_eigendecomposition(x, labels, dim), atol=1e-10)
        np.testing.assert_allclose(projection @ projection, projection, atol=1e-10)  # an orthogonal projection
        assert np.trace(projection) == pytest.approx(dim)
        # after the projection every group has the same mean: no group information left in the means
        means = np.stack([(x[labels == g] @ projection).mean(axis=0) for g in range(3)])
        np.testing.assert_allclose(means - means.mean(axis=0), 0, atol=1e-10)
        np.testing.assert_allclose(np.linalg.norm(directions, axis=1), 1)
        np.testing.assert_allclose(directions @ projection, 0, atol=1e-10)


def test_fairimagen_noise_step_by_hand():
    rng = np.random.default_rng(1)
    groups = [rng.normal(size=(4, 5)) + 3 * np.eye(5)[0], rng.normal(size=(6, 5)) - 3 * np.eye(5)[0]]
    m = FairImagen(noise=0.6, hdim=3)
    m.tokens = fit(groups, 3, 1.0)
    units = make_units(load_suite("occupations"), "fairimagen", "m", 2, 0, "test", 1)
    cond = _cond(torch.tensor(rng.normal(size=(2, 3, 5)), dtype=torch.float32))
    out = m.transform_conditioning(cond, units, ["x", "y"]).prompt_embeds
    projection = torch.tensor(fair_pca(np.concatenate(groups), np.repeat([0, 1], [4, 6]), 3)[0], dtype=torch.float32)
    for row, u in enumerate(units):
        g, i = noise_draw(u.seed, [4, 6])
        n_g = m.tokens.directions[g].double().numpy()
        step = 0.36 * float(groups[g][i] @ n_g) * n_g  # the authors' scale enters twice
        expected = cond.prompt_embeds[row] @ projection + torch.tensor(step, dtype=torch.float32)
        torch.testing.assert_close(out[row], expected, atol=1e-5, rtol=1e-5)
    # the draw is the image's own: the same unit gets the same step in a batch of one
    alone = m.transform_conditioning(_cond(cond.prompt_embeds[1:]), units[1:], ["y"]).prompt_embeds
    torch.testing.assert_close(alone[0], out[1])
    # no noise: the projection alone
    m.noise = 0.0
    torch.testing.assert_close(m.transform_conditioning(cond, units, ["x", "y"]).prompt_embeds,
                               cond.prompt_embeds @ projection, atol=1e-5, rtol=1e-5)


def test_fairimagen_cross_mode_groups_every_combination():
    a = [np.full((2, 3), 1.0), np.full((2, 3), 2.0)]
    b = [np.full((1, 3), 10.0), np.full((1, 3), 20.0), np.full((1, 3), 30.0)]
    combos = cross_groups([a, b])
    assert len(combos) == 6 and all(c.shape == (3, 3) for c in combos)
    assert combos[4][:, 0].tolist() == [2.0, 2.0, 20.0]  # (group 1 of a, group 1 of b)
    assert [len(c) for c in cross_groups([a])] == [2, 2]


def test_fairimagen_fits_on_the_tiny_pipeline_and_equalises_group_means(tiny_sd, suite):
    backend = load_backend(str(tiny_sd))
    m = FairImagen(attributes="gender,skin_tone")
    m.prepare(backend, suite)
    tokens, pooled = m.group_embeddings(backend)
    assert pooled is None and m.pooled is None  # SD 1.x has no pooled embedding
    width = backend.encode(["x"], guidance_scale=0).prompt_embeds.shape[-1]
    assert m.tokens.projection.shape == (width, width) and len(m.tokens.coordinates) == 2 * 4
    assert torch.trace(m.tokens.projection).item() == pytest.approx(round(width * 1800 / 2048), abs=1e-3)
    for groups in tokens:  # each attribute's group means agree after the projection
        means = torch.stack([torch.tensor(g).float().mean(0) @ m.tokens.projection for g in groups])
        assert (means - means.mean(0)).abs().max() < 1e-3 * means.abs().max()


def test_balancingact_distribution_gradient_matches_its_closed_form():
    rng = np.random.default_rng(3)
    n, f, k, temp, loss_s, scale = 5, 6, 3, 8.0, 500.0, 600.0
    h = rng.normal(size=(n, f))
    w, b = rng.normal(size=(k, f)), rng.normal(size=k)
    target = np.array([0.5, 0.3, 0.2])
    heads = StepHeads(2, f, k)
    with torch.no_grad():
        heads.weight[1] = torch.tensor(w, dtype=torch.float32)
        heads.bias[1] = torch.tensor(b, dtype=torch.float32)
    # by hand: z = W h + b, p_i = softmax(z_i / T), p_bar = mean p_i, L = sum_k p_bar_k log(p_bar_k / t_k);
    # dL/dz_ij = p_ij (g_j - sum_k p_ik g_k) / (n T) with g_k = log(p_bar_k / t_k) + 1; dL/dh_i = W^T dL/dz_i
    z = h @ w.T + b
    p = np.exp(z / temp) / np.exp(z / temp).sum(axis=1, keepdims=True)
    g = np.log(p.mean(axis=0) / target) + 1
    dz = p * (g - (p * g).sum(axis=1, keepdims=True)) / (n * temp)
    expected = h - scale * loss_s * dz @ w
    got = guided_h(torch.tensor(h, dtype=torch.float32), 1, [heads], [torch.tensor(target, dtype=torch.float32)],
                   [torch.arange(n)], temp, loss_s, scale)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-4, atol=1e-4)
    kl = float((p.mean(axis=0) * np.log(p.mean(axis=0) / target)).sum())
    assert distribution_loss(torch.tensor(z, dtype=torch.float32), torch.tensor(target), temp).item() == pytest.approx(kl, rel=1e-5)
    # a balanced batch is a fixed point: the guidance leaves it where it is
    flat = torch.zeros(4, f)
    assert torch.equal(guided_h(flat, 1, [StepHeads(2, f, 2)], [torch.tensor([0.5, 0.5])], [torch.arange(4)],
                                temp, loss_s, scale), flat)


def test_balancingact_rows_per_prompt_include_the_unconditional_twins():
    assert [g.tolist() for g in row_groups(["a", "a", "b"], 6)] == [[0, 1, 3, 4], [2, 5]]
    assert [g.tolist() for g in row_groups(["a", "b", "a"], 3)] == [[0, 2], [1]]


def test_balancingact_heads_learn_a_separable_label():
    torch.manual_seed(0)
    labels = torch.arange(40) % 2
    feats = torch.randn(3, 40, 4) + 3 * labels[None, :, None].float()  # every step separable
    heads = fit_heads(feats, labels, 2, epochs=200, lr=0.05)
    for s in range(3):
        assert (heads(feats[s], s).argmax(dim=1) == labels).float().mean() == 1.0


def test_balancingact_trains_heads_and_guides_on_the_tiny_pipeline(tiny_sd, tiny_clip, suite, monkeypatch, tmp_path):
    monkeypatch.setenv("FAIRBENCH_CACHE", str(tmp_path / "cache"))
    backend = load_backend(str(tiny_sd))
    ctx = MethodContext(suite, "test", 2, PARAMS, None, None, 0, 4)
    outs = []
    for _ in range(2):  # trained, then loaded from the cache: the same images
        m = BalancingAct(train_images=1, head_epochs=5, labeller_model=str(tiny_clip[0]), split="test")
        m.prepare(backend, suite, ctx)
        assert m.heads[0].weight.shape[:2] == (PARAMS.steps, 2) and m.args["heads"]["images"] == 31
        units = make_units(suite, "balancingact", "m", 2, 0, "test", 2)
        outs.append(_pixels(backend, m, units))
    assert np.array_equal(outs[0], outs[1])
    assert (tmp_path / "cache").is_dir()
    vanilla = _pixels(backend, build_method("vanilla", None), make_units(suite, "balancingact", "m", 2, 0, "test", 2))
    assert not np.array_equal(outs[0], vanilla)  # the guidance moved the images


# guidance level ---------------------------------------------------------------------------------
def test_sega_guidance_step_by_hand():
    u = torch.zeros(1, 1, 2, 2)
    t = torch.ones(1, 1, 2, 2)
    edits = torch.tensor([[1.0, 2.0, 3.0, 4.0], [0.0, 0.0, 0.0, 8.0]]).view(2, 1, 1, 2, 2)
    signs = torch.tensor([[1.0], [-1.0]])
    mom = torch.zeros(1, 1, 2, 2)
    # threshold 0.5: concept 0 keeps |psi| >= quantile(2,4,6,8; 0.5) = 5 -> (0,0,6,8); concept 1 keeps 16 only (-16)
    out, mom1 = sega_guidance(u, t, edits, signs, mom, 3.0, 2.0, 0.5, 0.5, 0.6, warm=False)
    torch.testing.assert_close(out, 3.0 * t)  # before warm-up: plain classifier-free guidance
    edit = torch.tensor([0.0, 0.0, 6.0, 8.0 - 16.0]).view(1, 1, 2, 2)
    torch.testing.assert_close(mom1, 0.4 * edit)
    out2, mom2 = sega_guidance(u, t, edits, signs, mom1, 3.0, 2.0, 0.5, 0.5, 0.6, warm=True)
    edit2 = edit + 0.5 * mom1
    torch.testing.assert_close(out2, 3.0 * t + edit2)
    torch.testing.assert_close(mom2, 0.6 * mom1 + 0.4 * edit2)


def test_edit_signs_one_target_per_attribute():
    s = edit_signs(list(range(200)), [2, 4])
    assert s.shape == (6, 200)
    assert torch.all((s[:2] == 1).sum(0) == 1) and torch.all((s[2:] == 1).sum(0) == 1)
    assert 0.35 < (s[0] == 1).float().mean() < 0.65
    # default "binary": the other group of the 2-group attribute reversed (as published), none of the 4
    assert torch.equal(s[:2], 2 * (s[:2] == 1).float() - 1) and torch.all((s[2:] == 1) | (s[2:] == 0))
    every = edit_signs(list(range(200)), [2, 4], reverse="all")
    assert torch.equal(every, 2 * (s == 1).float() - 1)  # same targets, every other group reversed
    assert torch.equal(edit_signs(list(range(200)), [2, 4], reverse="none"), (s == 1).float())


def test_fairdiffusion_rejects_an_unknown_reverse_mode():
    with pytest.raises(UserError, match="reverse must be one of binary, all, none"):
        FairDiffusion(reverse="no")


def test_fairdiffusion_without_edit_scale_equals_vanilla(tiny_sd, suite):
    backend = load_backend(str(tiny_sd))
    units = make_units(suite, "x", "m", 2, 0, "test", 2)
    vanilla = _pixels(backend, build_method("vanilla"), units)
    m = FairDiffusion(edit_guidance_scale=0.0)
    m.prepare(backend, suite)
    assert np.array_equal(_pixels(backend, m, units), vanilla)
    m = FairDiffusion(edit_warmup_steps=1)
    m.prepare(backend, suite, MethodContext(suite, params=SamplingParams(steps=3, guidance_scale=7.5)))
    edited = _pixels(backend, m, units)
    assert not np.array_equal(edited, vanilla)
    assert backend.unet.forward.__self__ is backend.unet  # the wrapper is removed after the batch


# weights level ----------------------------------------------------------------------------------
def test_uce_closed_form_solves_regularised_least_squares():
    rng = np.random.default_rng(1)
    w_old = rng.normal(size=(4, 6))
    c_e, v_e, c_p = rng.normal(size=(3, 6)), rng.normal(size=(3, 4)), rng.normal(size=(2, 6))
    lam, e, p = 0.5, 1.0, 0.7
    a = np.vstack([np.sqrt(e) * c_e, np.sqrt(p) * c_p, np.sqrt(lam) * np.eye(6)])
    b = np.vstack([np.sqrt(e) * v_e, np.sqrt(p) * c_p @ w_old.T, np.sqrt(lam) * w_old.T])
    expected = np.linalg.lstsq(a, b, rcond=None)[0].T
    got = closed_form_edit(*(torch.tensor(x) for x in (w_old, c_e, v_e, c_p)), lam, e, p).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-10)


def test_uce_debias_target_by_hand():
    o = torch.tensor([[3.0, 4.0]])  # ||o|| = 5
    groups = torch.tensor([[[0.0, 2.0]], [[1.0, 0.0]]])  # normalised: (0, 1) and (1, 0)
    alpha = torch.tensor([0.1, -0.2])
    torch.testing.assert_close(debias_target(o, groups, alpha), torch.tensor([[3.0 - 1.0, 4.0 + 0.5]]))


class _AllFaces:
    def detect(self, images):
        return [Detection(box=(0, 0, im.width, im.height), confidence=1.0, n_faces=1) for im in images]


class _AllMale(AttributeClassifier):
    name, crop_margin, attributes = "all-male", 0.0, ("gender",)

    def predict(self, crops):
        return {"gender": np.tile([1.0, 0.0], (len(crops), 1))}


def test_uce_loop_edits_value_projections_until_max_iterations(tiny_sd, suite):
    backend = load_backend(str(tiny_sd))
    before = [l.weight.detach().clone() for l in cross_attention_projections(backend.unet, keys=True)]
    m = UCE(max_iterations=2, images_per_concept=2, cache=False)
    ctx = MethodContext(suite, "test", 2, SamplingParams(steps=2, guidance_scale=7.5), _AllFaces(), _AllMale(), 0, 4)
    m.prepare(backend, suite, ctx)
    m.apply_to_model(backend)
    after = cross_attention_projections(backend.unet, keys=True)
    n = len(after) // 2
    assert all(not torch.equal(b, a.weight) for b, a in zip(before[:n], after[:n]))  # to_v edited
    assert all(torch.equal(b, a.weight) for b, a in zip(before[n:], after[n:]))  # to_k untouched
    assert [h["round"] for h in m.args["history"]] == [0, 1, 2]


def test_uce_without_labellers_is_a_user_error(tiny_sd, suite):
    with pytest.raises(UserError):
        UCE().prepare(None, suite, None)


# determinism ------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["entigen", "hardprompt", "debiasvl", "fairimagen", "fairdiffusion"])
def test_method_deterministic_on_tiny_pipeline(tiny_sd, suite, name):
    units = make_units(suite, name, "m", 2, 0, "test", 2)
    runs = []
    for _ in range(2):
        backend = load_backend(str(tiny_sd))
        m = build_method(name, {"edit_warmup_steps": 1} if name == "fairdiffusion" else None)
        m.prepare(backend, suite, MethodContext(suite, "test", 2, PARAMS))
        m.apply_to_model(backend)
        runs.append(_pixels(backend, m, units))
    assert np.array_equal(runs[0], runs[1])


def test_uce_deterministic_on_tiny_pipeline(tiny_sd, suite):
    outs = []
    for _ in range(2):
        backend = load_backend(str(tiny_sd))
        m = UCE(max_iterations=1, images_per_concept=2, cache=False)
        m.prepare(backend, suite, MethodContext(suite, "test", 2, SamplingParams(steps=2), _AllFaces(), _AllMale(), 0, 4))
        m.apply_to_model(backend)
        outs.append(torch.cat([l.weight.flatten() for l in cross_attention_projections(backend.unet)]))
    assert torch.equal(outs[0], outs[1])


def test_uce_edit_is_cached_by_spec_and_reloaded(tiny_sd, suite, tmp_path, monkeypatch):
    monkeypatch.setenv("FAIRBENCH_CACHE", str(tmp_path / "cache"))
    weights = []
    for _ in range(2):
        backend = load_backend(str(tiny_sd))
        m = UCE(max_iterations=1, images_per_concept=2, concepts_suite="occupations", concepts_split="test")
        ctx = MethodContext(load_suite("explicit"), "test", 2, SamplingParams(steps=2), _AllFaces(), _AllMale(), 0, 4)
        m.prepare(backend, suite, ctx)
        assert len(m.context.prompts()) == len(suite.select("test"))  # the concepts suite, not the run's
        m.apply_to_model(backend)
        weights.append(torch.cat([l.weight.flatten() for l in cross_attention_projections(backend.unet)]))
    assert "loaded_from_cache" in m.args and torch.equal(weights[0], weights[1])
