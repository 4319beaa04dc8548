"""Every method on SD 1.x, SD 2.x and SDXL; text-level methods on any other pipeline; clean refusals."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from fairbench.cli.main import main
from fairbench.models import load_backend
from fairbench.models.backend import Conditioning
from conftest import run_args

# small settings per method: enough to exercise each method's whole path on a tiny pipeline
METHOD_ARGS = {
    "vanilla": [],
    "entigen": [],
    "hardprompt": [],
    "fairmap": ["--method-arg", "steps=20"],
    "debiasvl": [],
    "fairimagen": [],
    "fairdiffusion": ["--method-arg", "edit_warmup_steps=1"],
    "uce": ["--method-arg", "max_iterations=1", "--method-arg", "images_per_concept=2",
            "--method-arg", "concepts_split=test"],
}
UNET_ARCHS = ("sd1", "sd2", "sdxl")


def _images(run: Path) -> dict[str, str]:
    return {r["key"]: r["sha256"] for r in map(json.loads, (run / "manifest.jsonl").read_text().splitlines())}


def _run(model: Path, out: Path, method: str, *extra: str) -> None:
    argv = run_args(model, out, "--method", method, *METHOD_ARGS[method], "--n", "2", "--limit", "2",
                    "--steps", "3", "--no-baseline", *extra)
    assert main(argv) == 0, argv


@pytest.mark.parametrize("arch", UNET_ARCHS)
@pytest.mark.parametrize("method", list(METHOD_ARGS))
def test_every_method_runs_and_resumes_identically(tiny_pipelines, tmp_path, arch, method):
    out = tmp_path / "run"
    _run(tiny_pipelines[arch], out, method)
    first = _images(out)
    assert len(first) == 4
    record = json.loads((out / "run.json").read_text())
    assert record["model"]["architecture"] == ("sdxl" if arch == "sdxl" else "sd")
    if arch == "sd2":
        assert record["model"]["prediction_type"] == "v_prediction"
    victim = out / "images" / "author" / "00001.png"  # a regenerated image equals the one it replaces
    victim.unlink()
    _run(tiny_pipelines[arch], out, method)
    assert json.loads((out / "run.json").read_text())["generation"]["generated_now"] == 1
    assert _images(out) == first


def test_sdxl_vanilla_fixed_seed_same_images_sharded_and_in_another_batch(tiny_pipelines, tmp_path):
    model = tiny_pipelines["sdxl"]
    _run(model, tmp_path / "whole", "vanilla", "--batch-size", "4")
    for i in range(2):
        _run(model, tmp_path / f"s{i}", "vanilla", "--shard", f"{i}/2", "--batch-size", "1")
    assert main(["merge", str(tmp_path / "s0"), str(tmp_path / "s1"), "--out", str(tmp_path / "merged"),
                 "--no-progress"]) == 0
    assert _images(tmp_path / "merged") == _images(tmp_path / "whole")


@pytest.mark.parametrize("method", ["vanilla", "entigen", "hardprompt"])
def test_text_level_methods_run_on_a_transformer_pipeline(tiny_pipelines, tmp_path, method):
    out = tmp_path / "run"
    _run(tiny_pipelines["sd3"], out, method)
    record = json.loads((out / "run.json").read_text())
    assert record["model"]["pipeline"] == "StableDiffusion3Pipeline" and record["model"]["architecture"] == "other"
    assert len(_images(out)) == 4
    first = _images(out)
    shutil.rmtree(out / "images" / "author")
    _run(tiny_pipelines["sd3"], out, method)  # deterministic: the regenerated images are the same
    assert _images(out) == first
    if method == "hardprompt":  # the rewritten prompt reached the pipeline
        rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
        assert all(r["prompt_used"] != r["prompt"] for r in rows)


def test_fairimagen_same_images_in_another_batch_size(tiny_pipelines, tmp_path):
    # the noise is drawn from each image's seed, so batching cannot move it to another image
    for size in ("4", "1"):
        _run(tiny_pipelines["sd1"], tmp_path / size, "fairimagen", "--batch-size", size)
    assert _images(tmp_path / "4") == _images(tmp_path / "1")


# methods that learn from the model's own generations, each with its own tiny CLIP settings; the training
# record's entry and what it must say
LEARNING = {
    # heads on h, labelled by a zero-shot CLIP
    "balancingact": (("labeller_model={clip}", "train_images=1", "head_epochs=3"), "3",
                     "heads", {"images": 31, "steps": 3}),
    # modes of h, embedded by a CLIP; no labels
    "selfdebias": (("clip_model={clip}", "train_images=1", "epochs=1", "hidden=16", "k_max=3"), "3",
                   "modes", {"images": 31, "steps": 3}),
    # LoRA on the text encoder trained through the sampler against a zero-shot CLIP
    "finetune": (("clip_model={clip}", "max_steps=1", "images_per_prompt=2", "batch=2", "rank=4"), "8",
                 "training", {"steps": 1, "prompts": 31}),
}


@pytest.mark.parametrize("method,arch", [("balancingact", "sd1"), ("balancingact", "sdxl"), ("selfdebias", "sd1"),
                                         ("selfdebias", "sdxl"), ("finetune", "sd1"), ("finetune", "sd2")])
def test_learning_methods_run_and_resume_identically(tiny_pipelines, tiny_clip, tmp_path, method, arch):
    args, steps, entry, expected = LEARNING[method]
    out = tmp_path / "run"
    extra = [x for a in (*args, "split=test") for x in ("--method-arg", a.format(clip=tiny_clip[0]))]
    argv = run_args(tiny_pipelines[arch], out, "--method", method, "--n", "2", "--limit", "2", "--steps", steps,
                    "--no-baseline", *extra)
    assert main(argv) == 0
    first = _images(out)
    (out / "images" / "author" / "00001.png").unlink()
    assert main(argv) == 0
    assert _images(out) == first
    record = json.loads((out / "run.json").read_text())["method"]["args"][entry]
    assert {k: record[k] for k in expected} == expected


def test_finetune_refuses_sdxl_in_one_line(tiny_pipelines, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(run_args(tiny_pipelines["sdxl"], out, "--method", "finetune", "--no-baseline")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "method 'finetune'" in err[0] and "StableDiffusionXLPipeline" in err[0]
    assert not out.exists()


@pytest.mark.parametrize("arch", UNET_ARCHS)
@pytest.mark.parametrize("method", ["itigen", "fairqueue"])
def test_itigen_and_fairqueue_run_resume_and_keep_their_images_in_another_batch_size(tiny_pipelines, tiny_clip,
                                                                                     references, tmp_path, arch, method):
    # tokens learned in the tiny CLIP (every tiny encoder is 32 wide, as its text tower) from folder references
    extra = ["--method-arg", f"reference_dir={references}", "--method-arg", f"clip_model={tiny_clip[0]}",
             "--method-arg", f"clip_model_2={tiny_clip[0]}", "--method-arg", "epochs=2", "--method-arg",
             "steps_per_epoch=1", "--method-arg", "reference_per_group=2"]
    out = tmp_path / "run"
    argv = run_args(tiny_pipelines[arch], out, "--method", method, "--n", "2", "--limit", "2", "--steps", "3",
                    "--no-baseline", *extra)
    assert main(argv + ["--batch-size", "4"]) == 0
    first = _images(out)
    (out / "images" / "author" / "00001.png").unlink()
    assert main(argv + ["--batch-size", "4"]) == 0
    assert _images(out) == first
    if arch == "sd1":  # SDXL's UNet rounds its pooled-embedding projection by batch size (vanilla's images too)
        one = tmp_path / "one"
        assert main(run_args(tiny_pipelines[arch], one, "--method", method, "--n", "2", "--limit", "2", "--steps", "3",
                             "--no-baseline", *extra, "--batch-size", "1")) == 0
        assert _images(one) == first
    training = json.loads((out / "run.json").read_text())["method"]["args"]["training"]
    assert set(training) == ({"text_encoder", "text_encoder_2"} if arch == "sdxl" else {"text_encoder"})


@pytest.mark.parametrize("method", ["fairmap", "debiasvl", "fairimagen", "itigen", "fairqueue", "fairdiffusion",
                                    "balancingact", "selfdebias", "uce", "finetune"])
def test_methods_that_need_a_unet_refuse_a_transformer_pipeline_before_generation(tiny_pipelines, tmp_path,
                                                                                   capsys, method):
    out = tmp_path / "run"
    assert main(run_args(tiny_pipelines["sd3"], out, "--method", method, "--no-baseline")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"method {method!r}" in err[0] and "StableDiffusion3Pipeline" in err[0]
    assert "On this pipeline: entigen, hardprompt, vanilla" in err[0]
    assert not out.exists()


def _sdxl_cond(seed: int = 0) -> Conditioning:
    g = torch.Generator().manual_seed(seed)
    pe, ne = torch.randn(2, 77, 64, generator=g), torch.randn(2, 77, 64, generator=g)
    return Conditioning(pe, ne, torch.randn(2, 32, generator=g), torch.randn(2, 32, generator=g))


def test_fairmap_on_sdxl_maps_both_encoders_states_and_leaves_the_pooled_embedding():
    from fairbench.methods.fairmap import FairMapping, MappingNetwork

    m = FairMapping()
    m.net = MappingNetwork(64, depth=1)
    with torch.no_grad():
        for p in m.net.parameters():
            p.add_(0.1)  # a map that moves every coordinate
    cond = _sdxl_cond()
    out = m.transform_conditioning(cond, [], ["a photo of a nurse", "a photo of a male nurse"])
    with torch.no_grad():
        expected = m.net(cond.prompt_embeds[0])
    torch.testing.assert_close(out.prompt_embeds[0], expected)
    assert not torch.allclose(out.prompt_embeds[0, :, :32], cond.prompt_embeds[0, :, :32])  # text_encoder's part
    assert not torch.allclose(out.prompt_embeds[0, :, 32:], cond.prompt_embeds[0, :, 32:])  # text_encoder_2's part
    assert torch.equal(out.prompt_embeds[1], cond.prompt_embeds[1])  # names a group: bypassed
    assert torch.equal(out.pooled, cond.pooled) and torch.equal(out.negative_pooled, cond.negative_pooled)
    assert torch.equal(out.negative_prompt_embeds, cond.negative_prompt_embeds)


def test_debiasvl_on_sdxl_projects_token_states_and_pooled_embedding_each_by_its_own_p(tiny_pipelines):
    from fairbench.baselines.debiasvl import DebiasVL, calibrated_projection

    m = DebiasVL()
    d = torch.zeros(1, 64, dtype=torch.float64)
    d[0, 0], d[0, 40] = 0.6, 0.8  # a direction with a part in each encoder's states
    m.projection = calibrated_projection(d, 9.0).float()
    dp = torch.zeros(1, 32, dtype=torch.float64)
    dp[0, 3] = 1.0
    m.pooled_projection = calibrated_projection(dp, 9.0).float()
    cond = _sdxl_cond()
    out = m.transform_conditioning(cond, [], ["x", "y"])
    torch.testing.assert_close(out.prompt_embeds, cond.prompt_embeds @ m.projection.T)
    moved = (out.prompt_embeds - cond.prompt_embeds).abs().amax(dim=(0, 1))
    assert moved[0] > 0 and moved[40] > 0  # both encoders' parts of the direction shrink
    torch.testing.assert_close(out.pooled[:, 3], cond.pooled[:, 3] / 10)  # 1 / (9 * 1 + 1)
    torch.testing.assert_close(out.pooled[:, :3], cond.pooled[:, :3])
    assert torch.equal(out.negative_pooled, cond.negative_pooled)
    # on a real (tiny) SDXL pipeline both projections are computed, in the two spaces
    backend = load_backend(str(tiny_pipelines["sdxl"]))
    from fairbench.prompts import load_suite

    real = DebiasVL()
    real.prepare(backend, load_suite("occupations"))
    assert real.projection.shape == (64, 64) and real.pooled_projection.shape == (32, 32)


def test_fairimagen_on_sdxl_fits_token_states_and_pooled_embedding_each_in_its_own_space(tiny_pipelines):
    from fairbench.baselines.fairimagen import FairImagen
    from fairbench.prompts import load_suite

    backend = load_backend(str(tiny_pipelines["sdxl"]))
    m = FairImagen(noise=0.0)
    m.prepare(backend, load_suite("occupations"))
    assert m.tokens.projection.shape == (64, 64) and m.pooled.projection.shape == (32, 32)
    cond = _sdxl_cond()
    out = m.transform_conditioning(cond, [None, None], ["x", "y"])  # no noise: the units are not read
    torch.testing.assert_close(out.prompt_embeds, cond.prompt_embeds @ m.tokens.projection)
    torch.testing.assert_close(out.pooled, cond.pooled @ m.pooled.projection)
    assert torch.equal(out.negative_prompt_embeds, cond.negative_prompt_embeds)
    assert torch.equal(out.negative_pooled, cond.negative_pooled)


def test_uce_on_sdxl_edits_every_cross_attention(tiny_pipelines):
    from fairbench.baselines.uce import UCE, cross_attention_projections
    from fairbench.methods.base import MethodContext
    from fairbench.models.backend import SamplingParams
    from fairbench.prompts import load_suite
    from test_baselines import _AllFaces, _AllMale

    backend = load_backend(str(tiny_pipelines["sdxl"]))
    attn2 = [m for n, m in backend.unet.named_modules() if n.endswith("attn2")]
    layers = cross_attention_projections(backend.unet)
    assert len(layers) == len(attn2) == 8  # 2 transformer layers down, 2 in the middle, 2 x 2 up
    assert all(layer.in_features == 64 for layer in layers)  # both encoders' token states
    before = [layer.weight.detach().clone() for layer in layers]
    suite = load_suite("occupations")
    m = UCE(max_iterations=1, images_per_concept=2, cache=False)
    m.prepare(backend, suite, MethodContext(suite, "test", 2, SamplingParams(steps=2, guidance_scale=7.5),
                                            _AllFaces(), _AllMale(), 0, 4))
    m.apply_to_model(backend)
    assert all(not torch.equal(b, layer.weight) for b, layer in zip(before, layers))


def test_fairdiffusion_on_sdxl_guides_through_the_same_loop(tiny_pipelines):
    """Edit scale 0 is vanilla pixel for pixel; with edits on, the editing prompts' pooled embeddings and
    the images' time ids reach the UNet and the images change."""
    import numpy as np

    from fairbench.baselines.fairdiffusion import FairDiffusion
    from fairbench.methods import build_method
    from fairbench.methods.base import MethodContext
    from fairbench.models.backend import SamplingParams
    from fairbench.prompts import load_suite
    from fairbench.units import make_units
    from test_baselines import _pixels

    backend = load_backend(str(tiny_pipelines["sdxl"]))
    suite = load_suite("occupations")
    units = make_units(suite, "x", "m", 2, 0, "test", 2)
    vanilla = _pixels(backend, build_method("vanilla"), units)
    off = FairDiffusion(edit_guidance_scale=0.0)
    off.prepare(backend, suite)
    assert off.edit_pooled is not None and off.edit_pooled.shape[-1] == 32
    assert np.array_equal(_pixels(backend, off, units), vanilla)
    on = FairDiffusion(edit_warmup_steps=1)
    on.prepare(backend, suite, MethodContext(suite, params=SamplingParams(steps=3, guidance_scale=7.5)))
    assert not np.array_equal(_pixels(backend, on, units), vanilla)
