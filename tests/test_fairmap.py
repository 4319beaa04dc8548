"""Fair Mapping (reconstruction): identity init, losses on hand-built embeddings, detector, checkpoints."""

from __future__ import annotations

import json
from dataclasses import asdict

import pytest
import torch

from conftest import run_args
from fairbench.cli.main import main
from fairbench.errors import UserError
from fairbench.methods.fairmap import (AttributeMaps, FairMapConfig, FairMapping, KeywordDetector, MappingNetwork,
                                       build_network, fairness_loss, load_checkpoint, save_checkpoint, text_loss,
                                       token_distance, train_and_save, train_map)


@pytest.mark.parametrize("depth", [1, 3])
def test_identity_initialisation_leaves_embeddings_unchanged(depth):
    x = torch.randn(2, 77, 32)
    assert torch.equal(MappingNetwork(32, depth)(x), x) if depth == 1 else torch.allclose(MappingNetwork(32, depth)(x), x)
    assert text_loss(MappingNetwork(32, depth)(x), x) == 0


@pytest.mark.parametrize("depth", [1, 3])
def test_default_initialisation_is_pytorchs_and_not_the_identity(depth):
    torch.manual_seed(0)
    net = MappingNetwork(8, depth, init="default")
    torch.manual_seed(0)
    first = torch.nn.Linear(8, 8)  # the first layer PyTorch would build from the same seed
    layer = net.linear if depth == 1 else net.mlp[0]
    assert torch.equal(layer.weight, first.weight) and torch.equal(layer.bias, first.bias)
    x = torch.randn(2, 5, 8)
    assert not torch.allclose(net(x), x, atol=1e-3)
    if depth > 1:  # a plain MLP: no residual path
        torch.testing.assert_close(net(x), net.mlp(x))
    with pytest.raises(UserError, match="init"):
        MappingNetwork(8, init="xavier")


def _scaled(dim: int, factor: float) -> MappingNetwork:
    net = MappingNetwork(dim)
    with torch.no_grad():
        net.linear.weight.mul_(factor)
    return net


def test_map_groups_maps_the_group_embeddings_and_puts_l_text_on_every_prompt():
    e_n = torch.zeros(1, 1, 2)
    e_g = torch.tensor([[[[1.0, 0.0]], [[0.0, 2.0]]]])  # (P=1, K=2, L=1, D=2)
    cfg = FairMapConfig(steps=1, lambda_fair=10.0, map_groups=True)
    first = train_map(_scaled(2, 2.0), e_n, [e_g], cfg)[0]
    # M = 2I: L_text = (|0|^2 + |e_g0|^2 + |e_g1|^2) / 3 prompts; d = (|2 e_g0|, |2 e_g1|) = (2, 4) -> L_fair 2
    assert first["text"] == pytest.approx(5 / 3) and first["fair"] == pytest.approx(2.0)
    assert first["loss"] == pytest.approx(5 / 3 + 20)
    # group embeddings fixed (the default): L_text on the neutral prompt only; d = (1, 2) -> L_fair 0.5
    fixed = train_map(_scaled(2, 2.0), e_n, [e_g], FairMapConfig(steps=1, lambda_fair=10.0))[0]
    assert fixed["text"] == 0 and fixed["fair"] == pytest.approx(0.5)


def test_per_attribute_maps_train_alone_and_apply_in_turn(tmp_path):
    maps = AttributeMaps(["gender", "skin_tone"], 2)
    with torch.no_grad():
        maps.maps["gender"].linear.weight.mul_(2.0)
        maps.maps["skin_tone"].linear.weight.mul_(3.0)
    x = torch.randn(1, 4, 2)
    torch.testing.assert_close(maps(x), 6 * x)
    maps.active = ["skin_tone"]
    torch.testing.assert_close(maps(x), 3 * x)
    # each map sees only its own attribute's groups: gender's groups are equidistant, skin tone's are not
    e_n = torch.zeros(1, 1, 2)
    gender = torch.tensor([[[[1.0, 0.0]], [[0.0, 1.0]]]])
    skin = torch.tensor([[[[1.0, 0.0]], [[0.0, 3.0]], [[0.0, -1.0]], [[-1.0, 0.0]]]])
    cfg = FairMapConfig(attributes=["gender", "skin_tone"], steps=1, per_attribute=True)
    assert train_map(MappingNetwork(2), e_n, [gender], cfg)[0]["fair"] == 0
    assert train_map(MappingNetwork(2), e_n, [skin], cfg)[0]["fair"] == pytest.approx(3.0)  # d = (1,3,1,1)
    # a per-attribute checkpoint round-trips with every map
    net = build_network(cfg, 2)
    with torch.no_grad():
        net.maps["skin_tone"].linear.bias.fill_(0.5)
    again, _ = load_checkpoint(save_checkpoint(net, {"config": asdict(cfg)}, tmp_path))
    assert isinstance(again, AttributeMaps) and list(again.maps) == ["gender", "skin_tone"]
    torch.testing.assert_close(again(x), net(x))


def test_apply_needs_per_attribute_maps():
    with pytest.raises(UserError, match="per_attribute"):
        FairMapping(attributes="gender,skin_tone", apply="gender")
    assert FairMapping(attributes="gender,skin_tone", per_attribute=True, apply="gender").apply == ["gender"]


def test_fairness_loss_zero_when_equidistant_positive_otherwise():
    v = torch.zeros(1, 2, 3)  # one prompt, 2 tokens, 3 dims
    # groups at distance 1 and 1 from v on every token -> equal distances
    g = torch.zeros(1, 2, 2, 3)
    g[0, 0, :, 0] = 1.0
    g[0, 1, :, 1] = -1.0
    assert fairness_loss(v, g) == 0
    # move group 1 to distance 3: d = (1, 3), mean 2 -> loss (1 - 2)^2 + (3 - 2)^2 = 2
    g[0, 1, :, 1] = -3.0
    assert token_distance(v, g[:, 1]) == pytest.approx(3.0)
    assert fairness_loss(v, g).item() == pytest.approx(2.0)


def test_pooled_distance_compares_token_averages():
    v = torch.zeros(1, 2, 3)
    g = torch.zeros(1, 2, 2, 3)
    # group 0: tokens +1 and -1 on dim 0 -> token average 0 (pooled distance 0, token distance 1)
    g[0, 0, 0, 0], g[0, 0, 1, 0] = 1.0, -1.0
    # group 1: both tokens (0, 3, 4) -> pooled distance 5
    g[0, 1, :, 1], g[0, 1, :, 2] = 3.0, 4.0
    # d = (0, 5), mean 2.5 -> loss 2 * 2.5^2 = 12.5; per token d = (1, 5) -> loss 2 * 2^2 = 8
    assert fairness_loss(v, g, "pooled").item() == pytest.approx(12.5)
    assert fairness_loss(v, g, "token").item() == pytest.approx(8.0)
    with pytest.raises(UserError, match="distance"):
        FairMapConfig(distance="cosine")


def test_detector_bypasses_on_group_words_only():
    det = KeywordDetector(["gender", "skin_tone"])
    assert det.names_group("a photo of the face of a female doctor")
    assert det.names_group("a photo of the face of a Woman who is a pilot")
    assert det.names_group("a photo of the face of a dark-skinned nurse")
    assert not det.names_group("a photo of the face of a doctor")
    assert not det.names_group("a photo of the face of a salesman")  # 'man' only as a whole word
    assert not det.names_group("a photo of the face of a chemist")  # 'he' inside a word
    assert not det.names_group("a photo of the face of a darkroom technician")
    assert KeywordDetector(["gender"]).names_group("the face of a male nurse")


def test_training_reduces_fairness_loss_and_round_trips(tiny_sd, tmp_path):
    from fairbench.models import load_backend
    from fairbench.prompts import load_suite

    backend = load_backend(str(tiny_sd))
    cfg = FairMapConfig(attributes=["gender"], steps=60, lr=1e-2, lambda_fair=1000.0)
    out = train_and_save(backend, load_suite("occupations"), cfg, tmp_path / "ckpt")
    net, meta = load_checkpoint(out)
    hist = meta["training"]["history"]
    assert hist[-1]["fair"] < 0.5 * hist[0]["fair"]
    assert meta["reconstruction"] is True and meta["groups"] == {"gender": ["male", "female"]}
    assert meta["suite"]["split"] == "train" and meta["training"]["n_prompts"] == 122
    x = torch.randn(3, 77, 32)
    again, _ = load_checkpoint(out)
    assert torch.equal(net(x), again(x))


def test_text_encoder_identity_is_the_same_in_float32_and_bfloat16(tiny_sd):
    from fairbench.methods.fairmap import text_encoder_hash
    from fairbench.models import load_backend

    fp32, bf16 = load_backend(str(tiny_sd)), load_backend(str(tiny_sd), dtype="bfloat16")
    assert text_encoder_hash(fp32) == text_encoder_hash(bf16)  # a map trained in one applies in the other
    with torch.no_grad():
        next(fp32.text_encoder.parameters()).add_(1.0)  # another encoder: another identity
    assert text_encoder_hash(fp32) != text_encoder_hash(bf16)


def test_tiny_sd_run_with_fairmap_is_deterministic_and_bypasses(tiny_sd, tmp_path, monkeypatch):
    monkeypatch.setenv("FAIRBENCH_CACHE", str(tmp_path / "cache"))
    runs = []
    for name in ("a", "b"):
        out = tmp_path / name
        args = run_args(tiny_sd, out, "--method", "fairmap", "--method-arg", "steps=20", "--n", "2", "--limit", "2")
        assert main(args) == 0
        runs.append(out)
    rows = [[json.loads(line)["sha256"] for line in (r / "manifest.jsonl").read_text().splitlines()] for r in runs]
    assert rows[0] == rows[1]
    run = json.loads((runs[0] / "run.json").read_text())
    assert run["method"]["level"] == "embedding" and run["method"]["args"]["checkpoint"]
    vanilla = tmp_path / "vanilla"
    assert main(run_args(tiny_sd, vanilla, "--n", "2", "--limit", "2")) == 0
    van = [json.loads(line)["sha256"] for line in (vanilla / "manifest.jsonl").read_text().splitlines()]
    assert van != rows[0]  # the mapping changed the conditioning
    # explicit prompts bypass the map: identical to vanilla
    explicit = [run_args(tiny_sd, tmp_path / f"e{m}", "--suite", "explicit", "--n", "1", "--limit", "2",
                         *(["--method", "fairmap", "--method-arg", "steps=20"] if m == "fm" else [])) for m in ("fm", "v")]
    for a in explicit:
        assert main(a) == 0
    e = [[json.loads(line)["sha256"] for line in (tmp_path / f"e{m}" / "manifest.jsonl").read_text().splitlines()]
         for m in ("fm", "v")]
    assert e[0] == e[1]
