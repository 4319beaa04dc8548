"""Real detection and classification on real photos; FairFace and CLIP loading with tiny weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from fairbench.classifiers import build_classifier
from fairbench.errors import UserError
from fairbench.faces import MTCNNDetector, crop_face


@pytest.fixture(scope="module")
def detector():
    return MTCNNDetector()


@pytest.fixture(scope="module")
def astronaut():
    from skimage import data

    return Image.fromarray(data.astronaut())


def test_astronaut_one_face_classified_female(detector, astronaut):
    (det,) = detector.detect([astronaut])
    assert det is not None and det.n_faces == 1 and det.confidence > 0.99
    x0, y0, x1, y1 = det.box
    assert 150 < x0 < x1 < 300 and 40 < y0 < y1 < 200  # Eileen Collins' face, upper middle of the photo
    assert crop_face(astronaut, det, margin=0.2).width > crop_face(astronaut, det, margin=0.0).width
    clf = build_classifier("agegender")
    probs = clf.predict([crop_face(astronaut, det, margin=clf.crop_margin)])
    assert probs["gender"].shape == (1, 2)
    assert probs["gender"][0].argmax() == 1 and probs["gender"][0, 1] > 0.9  # female
    assert probs["age"][0].sum() == pytest.approx(1.0)
    assert probs["age"][0].argmax() == 3  # 20-29 (the package reports 27)


def _lfw_rgb(img: np.ndarray) -> Image.Image:
    gray = Image.fromarray((img * 255).astype(np.uint8)).resize((100, 100), Image.BICUBIC)
    return gray.convert("RGB")


def test_lfw_subset_detection_rates(detector):
    from skimage import data

    lfw = data.lfw_subset()  # first 100 faces, last 100 non-faces
    found = [d is not None for d in detector.detect([_lfw_rgb(x) for x in lfw])]
    face_rate, nonface_rate = np.mean(found[:100]), np.mean(found[100:])
    assert face_rate >= 0.95, face_rate
    assert nonface_rate <= 0.05, nonface_rate


def test_no_face_in_noise(detector):
    rng = np.random.default_rng(0)
    noise = Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
    assert detector.detect([noise]) == [None]


# ---- FairFace: real architecture, random weights saved locally ----

@pytest.fixture(scope="module")
def fairface_weights(tmp_path_factory):
    from fairbench.classifiers.fairface import build_fairface_net

    torch.manual_seed(0)
    net = build_fairface_net()
    path = tmp_path_factory.mktemp("ff") / "res34_random.pt"
    torch.save(net.state_dict(), path)
    return path, net.eval()


def test_fairface_preprocessing_and_logit_slices(fairface_weights):
    import hashlib

    path, net = fairface_weights
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    clf = build_classifier("fairface", {"weights": str(path), "sha256": sha})
    img = Image.fromarray(np.random.default_rng(1).integers(0, 255, (60, 50, 3), dtype=np.uint8))
    # hand preprocessing: bilinear resize to 224 x 224, scale to [0, 1], ImageNet mean/std
    x = torch.from_numpy(np.asarray(img.resize((224, 224), Image.BILINEAR), dtype=np.float32) / 255.0)
    x = (x - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor([0.229, 0.224, 0.225])
    with torch.no_grad():
        logits = net(x.permute(2, 0, 1)[None]).numpy()[0]
    got = clf.logits([img])[0]
    assert np.abs(got - logits).max() < 0.05  # torchvision's antialiased resize vs PIL's: same op, tiny differences
    probs = clf.predict([img])
    z = got.astype(np.float64)
    assert probs["race7"][0] == pytest.approx(np.exp(z[0:7]) / np.exp(z[0:7]).sum())
    assert probs["gender"][0] == pytest.approx(np.exp(z[7:9]) / np.exp(z[7:9]).sum())
    assert probs["age"][0] == pytest.approx(np.exp(z[9:18]) / np.exp(z[9:18]).sum())
    four = build_classifier("fairface", {"weights": str(path), "races": 4})
    assert four.predict([img])["race4"][0] == pytest.approx(np.exp(z[0:4]) / np.exp(z[0:4]).sum(), abs=1e-6)
    assert clf.describe()["weights_sha256"] == sha


def test_fairface_sha256_mismatch_and_bad_files(fairface_weights, tmp_path):
    path, _ = fairface_weights
    with pytest.raises(UserError, match="sha256 mismatch"):
        build_classifier("fairface", {"weights": str(path), "sha256": "0" * 64})
    with pytest.raises(UserError, match="not found"):
        build_classifier("fairface", {"weights": str(tmp_path / "missing.pt")})
    with pytest.raises(UserError, match="needs its weights"):
        build_classifier("fairface")
    wrong = tmp_path / "wrong.pt"
    torch.save({"fc.weight": torch.zeros(3, 3)}, wrong)
    with pytest.raises(UserError, match="not a FairFace ResNet-34"):
        build_classifier("fairface", {"weights": str(wrong)})


# ---- CLIP: real CLIPModel code path, tiny random weights saved locally ----

def test_clip_probabilities_match_hand_computation(tiny_clip):
    path, model, proc = tiny_clip
    clf = build_classifier("clip", {"model": str(path), "attributes": "gender"})
    assert clf.describe()["texts"] == {"gender": ["a photo of a man", "a photo of a woman"]}
    img = Image.fromarray(np.random.default_rng(2).integers(0, 255, (40, 40, 3), dtype=np.uint8))
    with torch.no_grad():
        px = proc.image_processor([img], return_tensors="pt")["pixel_values"]
        vis = model.visual_projection(model.vision_model(pixel_values=px).pooler_output)
        tok = proc.tokenizer(["a photo of a man", "a photo of a woman"], padding=True, return_tensors="pt")
        txt = model.text_projection(model.text_model(**tok).pooler_output)
    cos = torch.nn.functional.normalize(vis, dim=-1) @ torch.nn.functional.normalize(txt, dim=-1).T
    logits = (model.logit_scale.exp() * cos).detach().numpy().astype(np.float64)[0]
    expected = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    assert clf.predict([img])["gender"][0] == pytest.approx(expected, abs=1e-5)


def test_clip_templates_override_and_errors(tiny_clip, tmp_path):
    path, _, _ = tiny_clip
    tpl = tmp_path / "t.yaml"
    tpl.write_text("gender:\n  female: a portrait of a woman\n")
    clf = build_classifier("clip", {"model": str(path), "attributes": "gender", "templates": str(tpl)})
    assert clf.texts["gender"] == ["a photo of a man", "a portrait of a woman"]
    tpl.write_text("gender:\n  nonbinary: x\n")
    with pytest.raises(UserError, match="unknown groups"):
        build_classifier("clip", {"model": str(path), "attributes": "gender", "templates": str(tpl)})
    with pytest.raises(UserError, match="cannot load vision-language model"):
        build_classifier("clip", {"model": str(tmp_path / "nothing-here")})


def test_synthface_labels_with_one_network_pass_per_image(monkeypatch):
    """On synthface the detector and classifier are one network: label_batch runs it once per image,
    and the labels equal those of separate passes."""
    import fairbench.synthface.labellers as synthface_classifier
    import fairbench.synthface.classifier as net_module
    from fairbench.synthface.labellers import SynthFaceClassifier
    from fairbench.synthface.labellers import SynthFaceDetector
    from fairbench.labels import label_batch
    from fairbench.synthface.render import FaceSpec, render_face, render_negative

    images = [Image.fromarray(render_face(FaceSpec("female", "dark", "young", fam), seed))
              for seed, fam in enumerate(["healthcare", "trades", "office", "food"])]
    images.append(Image.fromarray(render_negative(7)))
    detector, classifier = SynthFaceDetector(), SynthFaceClassifier()
    assert detector.net is classifier.net
    separate_faces = [d is not None for d in detector.detect(images)]
    separate = net_module.predict_all(classifier.net, np.stack([np.asarray(im) for im in images]))
    seen: list[int] = []
    real = net_module.predict_all
    monkeypatch.setattr(net_module, "predict_all", lambda net, arr, **kw: seen.append(len(arr)) or real(net, arr, **kw))
    monkeypatch.setattr(synthface_classifier, "_LAST_BATCH", synthface_classifier.weakref.WeakKeyDictionary())
    records = label_batch(images, detector, classifier, margin=classifier.crop_margin)
    assert seen == [len(images)]  # one pass over the five images; the classifier's crops reuse it
    assert [r["face"] for r in records] == separate_faces and records[-1]["face"] is False
    for r, g in zip(records[:4], separate["gender"][:4]):
        assert r["p:gender:female"] == pytest.approx(float(g[1]), abs=1e-6)


@pytest.fixture(scope="module")
def tiny_dual_encoder(tmp_path_factory):
    """A VisionTextDualEncoderModel (BERT-style text tower with MiniLM's real tokenizer, a tiny ViT image
    tower), random weights, saved the way transformers' from_pretrained reads it."""
    from transformers import (AutoTokenizer, BertConfig, CLIPImageProcessor, CLIPVisionConfig,
                              VisionTextDualEncoderConfig, VisionTextDualEncoderModel, VisionTextDualEncoderProcessor)

    from fairbench.synthface.text import minilm_path

    tok = AutoTokenizer.from_pretrained(minilm_path())
    torch.manual_seed(0)
    config = VisionTextDualEncoderConfig.from_vision_text_configs(
        CLIPVisionConfig(image_size=32, patch_size=8, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                         num_attention_heads=4),
        BertConfig(vocab_size=tok.vocab_size, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                   num_attention_heads=4, max_position_embeddings=128), projection_dim=16)
    model = VisionTextDualEncoderModel(config).eval()
    proc = VisionTextDualEncoderProcessor(CLIPImageProcessor(size={"shortest_edge": 32},
                                                             crop_size={"height": 32, "width": 32}), tok)
    out = tmp_path_factory.mktemp("dual")
    model.save_pretrained(out)
    proc.save_pretrained(out)
    return out, model, proc


def test_any_dual_encoder_serves_the_classifier_the_clip_score_and_the_extractor(tiny_dual_encoder, monkeypatch):
    from fairbench.metrics.clipscore import CLIPScorer
    from fairbench.metrics.features import CLIPExtractor
    from fairbench.models import dual_encoder

    path, model, proc = tiny_dual_encoder
    monkeypatch.setattr(dual_encoder, "DUAL_ENCODERS", dual_encoder.Registry("vision-language model"))
    dual_encoder.DUAL_ENCODERS.add("tiny-world-clip", str(path))  # a registered name, as a shipped world's is
    images = [Image.fromarray(np.random.default_rng(i).integers(0, 255, (40, 40, 3), dtype=np.uint8)) for i in range(3)]
    clf = build_classifier("clip", {"model": "tiny-world-clip", "attributes": "gender"})
    got = clf.predict(images)["gender"]
    with torch.no_grad():  # by hand, straight from transformers
        px = proc.image_processor(images, return_tensors="pt")["pixel_values"]
        img = torch.nn.functional.normalize(model.get_image_features(pixel_values=px).pooler_output, dim=-1)
        tok = proc.tokenizer(["a photo of a man", "a photo of a woman"], padding=True, return_tensors="pt")
        txt = torch.nn.functional.normalize(model.get_text_features(**tok).pooler_output, dim=-1)
        want = torch.softmax(model.logit_scale.exp() * img @ txt.T, dim=-1).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    scores, truncated = CLIPScorer("tiny-world-clip").score(images, ["a photo of a man"] * 3)
    np.testing.assert_allclose(scores, 100 * np.clip((img @ txt.T)[:, 0].numpy(), 0, None), rtol=1e-5, atol=1e-4)
    assert truncated == 0
    ext = CLIPExtractor("tiny-world-clip")
    assert ext.input_size == 32 and ext.num_features == 16
    feats = ext(torch.from_numpy(np.stack([np.asarray(im.resize((32, 32))) for im in images])).permute(0, 3, 1, 2))
    assert feats.shape == (3, 16)


def test_a_model_without_image_features_is_refused_in_one_line():
    from fairbench.synthface.text import minilm_path

    with pytest.raises(UserError, match="not a dual encoder"):
        build_classifier("clip", {"model": str(minilm_path()), "attributes": "gender"})
