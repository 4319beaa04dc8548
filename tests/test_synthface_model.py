"""The shipped synthface model and classifier: offline loading, classifier quality, default run."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fairbench.cli.main import main
from fairbench.synthface.pipeline import ASSETS


def test_assets_ship_inside_the_package_and_are_small():
    files = [p for p in ASSETS.rglob("*") if p.is_file()]
    names = {p.relative_to(ASSETS).as_posix() for p in files}
    assert {"model_index.json", "unet/config.json", "unet/diffusion_pytorch_model.safetensors",
            "scheduler/scheduler_config.json", "classifier.safetensors", "classifier.json", "MODEL_CARD.md"} <= names
    assert sum(p.stat().st_size for p in files) < 25e6


def test_pipeline_loads_offline_and_is_seed_deterministic():
    import torch

    from fairbench.models import load_backend
    from fairbench.models.backend import SamplingParams

    backend = load_backend("synthface")
    params = SamplingParams(steps=5, guidance_scale=2.0)
    cond = backend.encode(["a photo of the face of a nurse"] * 3, guidance_scale=2.0)
    a, _ = backend.generate(cond, [torch.Generator().manual_seed(s) for s in (1, 2, 3)], params)
    b, _ = backend.generate(cond, [torch.Generator().manual_seed(s) for s in (1, 2, 3)], params)
    assert [np.asarray(x).tobytes() for x in a] == [np.asarray(x).tobytes() for x in b]
    assert np.asarray(a[0]).shape == (32, 32, 3)
    assert not np.array_equal(np.asarray(a[0]), np.asarray(a[1]))


def test_shipped_classifier_on_fresh_renders():
    from lab.synthface.classifier_train import evaluate_classifier
    from fairbench.synthface.classifier import load_classifier

    net, meta = load_classifier(str(ASSETS))
    report = evaluate_classifier(net, 400, 100, seed=4242)  # renders never seen in training
    assert report["gender"]["accuracy"] >= 0.97
    assert report["skin_tone"]["accuracy"] >= 0.93
    assert report["age2"]["accuracy"] >= 0.93
    assert report["family"]["accuracy"] >= 0.95
    assert report["face"]["recall"] >= 0.98 and report["face"]["false_positive_rate"] <= 0.02
    # uniform groups in every occupation: a classifier that guessed gender from occupation cues
    # (female carpenters are rare in the skewed training renders) would fail here
    balanced = evaluate_classifier(net, 400, 100, seed=4243, balanced=True)
    assert balanced["balanced"] and balanced["gender"]["accuracy"] >= 0.97
    assert balanced["skin_tone"]["accuracy"] >= 0.93 and balanced["age2"]["accuracy"] >= 0.93
    assert meta["heldout_balanced"]["gender"]["accuracy"] >= 0.98
    # the shipped confusion matrices are row-stochastic and match the group order
    for head in ("gender", "skin_tone", "age2"):
        c = np.asarray(meta["heldout"][head]["confusion"])
        assert c.shape == (len(meta["groups"][head]),) * 2 and np.allclose(c.sum(1), 1)


def test_default_run_is_synthface_vl_end_to_end(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["run", "--n", "2", "--limit", "3", "--no-progress", "--n-boot", "50"]) == 0
    run_dir = tmp_path / "runs" / "vanilla-synthface-vl-occupations"
    run = json.loads((run_dir / "run.json").read_text())
    assert run["spec"]["model"] == "synthface-vl" and run["spec"]["classifier"] == "synthface"
    assert run["spec"]["steps"] == 15 and run["spec"]["split"] == "test"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert {"gender", "skin_tone", "age2", "gender*skin_tone"} <= set(metrics["attributes"])
    assert metrics["n_images"] == 6 and "family_accuracy" in metrics["alignment"]
    gender = metrics["attributes"]["gender"]
    assert "classifier_corrected_shares" in gender["per_prompt"][0] or metrics["n_faces"] == 0
    assert gender["confusion_uncertainty"]  # the shipped classifier carries its held-out counts
    gap = gender["aggregate"]["bias_gap"]
    assert gap["floor"] == pytest.approx(0.5)  # E|2X/2 - 1|, X ~ Bin(2, 1/2), on every prompt
    assert gap["corrected"]["ci_low"] <= gap["corrected"]["value"] <= gap["corrected"]["ci_high"]
    assert gender["skew_test"]["n_tested"] == 3


def test_a_bfloat16_load_leaves_the_next_float32_load_unchanged():
    # the text encoder is read once per process; each pipeline must get its own copy, or a bfloat16
    # run would round the weights of every later float32 run in the same process (a plan, a test)
    import torch

    from fairbench.models import load_backend

    def first_weight(backend):
        return next(iter(backend.pipe.text_encoder.parameters())).detach().clone()

    fresh = first_weight(load_backend("synthface-vl", dtype="float32"))
    load_backend("synthface-vl", dtype="bfloat16")
    again = first_weight(load_backend("synthface-vl", dtype="float32"))
    assert again.dtype == torch.float32 and torch.equal(fresh, again)


def test_a_few_classifier_training_steps_run_deterministically_and_measure_held_out_renders(tmp_path):
    """The lab's classifier stage: two runs of the same settings give the same weights, and the
    held-out reports (which feed the confusion correction) count every face and face-absent render."""
    from safetensors.torch import load_file

    from lab.synthface.classifier_train import ClassifierTrainConfig, train_classifier

    cfg = ClassifierTrainConfig(n_positive=48, n_negative=16, n_heldout=40, steps=3, batch_size=16)
    meta = train_classifier(tmp_path / "a", cfg, progress=False)
    train_classifier(tmp_path / "b", cfg, progress=False)
    a, b = (load_file(tmp_path / d / "classifier.safetensors") for d in ("a", "b"))
    assert a.keys() == b.keys() and all(np.array_equal(a[k].numpy(), b[k].numpy()) for k in a)
    assert meta["heldout"]["gender"]["n"] == 40 and meta["heldout"]["face"]["n"] == 40 + 10
    assert np.asarray(meta["heldout"]["gender"]["counts"]).sum() == 40
    assert meta["heldout_balanced"]["balanced"] is True
    assert json.loads((tmp_path / "a" / "classifier.json").read_text())["train"]["steps"] == 3
