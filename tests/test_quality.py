"""Quality and alignment: golden Frechet distance, KID unbiasedness, CLIP score, caching, Inception loading."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.linalg import sqrtm

from fairbench.errors import UserError
from fairbench.metrics.quality import frechet_distance, kernel_distance


def closed_form_fd(mu1, s1, mu2, s2) -> float:
    covmean = sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean))


def _gaussian(rng, mu, cov, n):
    return torch.from_numpy(rng.multivariate_normal(mu, cov, size=n))


def test_frechet_distance_matches_closed_form_on_sample_moments():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(6, 6))
    b = rng.normal(size=(6, 6))
    x = _gaussian(rng, np.zeros(6), a @ a.T + np.eye(6), 500)
    y = _gaussian(rng, np.ones(6) * 0.5, b @ b.T + np.eye(6), 400)
    xs, ys = x.numpy(), y.numpy()
    expected = closed_form_fd(xs.mean(0), np.cov(xs, rowvar=False), ys.mean(0), np.cov(ys, rowvar=False))
    assert frechet_distance(x, y) == pytest.approx(expected, rel=1e-6)


def test_frechet_distance_between_two_gaussians_population():
    # diagonal covariances: FD = ||mu1 - mu2||^2 + sum (sqrt(s1) - sqrt(s2))^2 = 4 + 4 * (1 - 2)^2 = 8
    rng = np.random.default_rng(1)
    x = _gaussian(rng, np.zeros(4), np.eye(4), 60_000)
    y = _gaussian(rng, np.array([2.0, 0, 0, 0]), 4 * np.eye(4), 60_000)
    assert frechet_distance(x, y) == pytest.approx(8.0, rel=0.02)


def test_frechet_distance_of_a_set_with_itself_is_zero():
    x = torch.from_numpy(np.random.default_rng(2).normal(size=(300, 16)))
    assert abs(frechet_distance(x, x)) < 1e-6


def test_kid_is_unbiased_on_equal_distributions():
    rng = np.random.default_rng(3)
    same = [kernel_distance(torch.from_numpy(rng.normal(size=(100, 8))), torch.from_numpy(rng.normal(size=(100, 8))),
                            subsets=5, subset_size=100, seed=i)[0] for i in range(40)]
    fd_same = [frechet_distance(torch.from_numpy(rng.normal(size=(100, 8))),
                                torch.from_numpy(rng.normal(size=(100, 8)))) for _ in range(10)]
    se = np.std(same, ddof=1) / np.sqrt(len(same))
    assert abs(np.mean(same)) < 3 * se  # mean of the unbiased estimator is 0
    assert np.mean(fd_same) > 0.3  # whereas FD is biased upwards at this sample size
    shifted = kernel_distance(torch.from_numpy(rng.normal(size=(100, 8))),
                              torch.from_numpy(rng.normal(size=(100, 8)) + 1.0), subsets=5, subset_size=100)[0]
    assert shifted > 20 * se


def test_kid_has_no_spread_when_a_subset_holds_every_image():
    from fairbench.outputs.tables import kid_text

    rng = np.random.default_rng(5)
    x, y = torch.from_numpy(rng.normal(size=(50, 8))), torch.from_numpy(rng.normal(size=(50, 8)) + 0.5)
    mean, std = kernel_distance(x, y, subsets=10, subset_size=1000)
    assert std is None  # every subset is the same 50 + 50 images: a spread of 0 would claim certainty
    assert kid_text({"kid": mean, "kid_std": std}) == f"KID {mean:.5f}, no spread: one subset holds all images"
    assert mean == pytest.approx(kernel_distance(x, y, subsets=1, subset_size=50)[0])
    _, std = kernel_distance(torch.cat([x, x + 0.1]), y, subsets=10, subset_size=1000)
    assert std is not None and std > 0  # the larger set is subsampled, so subsets differ


def test_clip_score_equals_hand_computation(tiny_clip):
    from fairbench.metrics.clipscore import CLIPScorer

    path, model, proc = tiny_clip
    scorer = CLIPScorer(str(path))
    rng = np.random.default_rng(4)
    images = [Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)) for _ in range(3)]
    texts = ["a photo of the face of a nurse", "a photo of a cat", "x " * 100]  # the last one is truncated
    scores, truncated = scorer.score(images, texts)
    with torch.no_grad():
        px = proc.image_processor(images, return_tensors="pt")["pixel_values"]
        img = model.visual_projection(model.vision_model(pixel_values=px).pooler_output)
        tok = proc.tokenizer(texts, padding=True, truncation=True, max_length=77, return_tensors="pt")
        txt = model.text_projection(model.text_model(**tok).pooler_output)
    cos = torch.nn.functional.cosine_similarity(img, txt).numpy()
    assert scores == pytest.approx(100 * np.maximum(cos, 0), abs=1e-4)
    assert truncated == 1


def test_clip_score_interval_is_at_the_runs_level(tmp_path, monkeypatch):
    from fairbench.metrics import clipscore

    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    rows = [{"image": "a.png", "prompt": "a nurse"}] * 4
    monkeypatch.setattr(clipscore, "run_rows", lambda run_dir: rows)

    class Fixed:
        model_id, revision, max_tokens = "fixed", None, 77

        def score(self, images, texts):
            return np.array([10.0, 20.0, 30.0, 40.0])[: len(images)], 0

    # by hand: mean 25, sd 12.9099 (ddof 1), se 6.45497; z = 1.64485 at 90 %, 2.57583 at 99 %
    for level, half in ((0.90, 10.61749), (0.99, 16.62691)):
        got = clipscore.clip_score_run(tmp_path, Fixed(), level=level)
        assert got["clip_score"] == 25.0 and got["level"] == level
        assert (got["ci_low"], got["ci_high"]) == pytest.approx((25.0 - half, 25.0 + half), abs=1e-4)


def test_quality_of_a_folder_against_itself_and_cache(tiny_clip, tmp_path, monkeypatch):
    from fairbench.metrics.features import CLIPExtractor
    from fairbench.metrics.quality import quality

    monkeypatch.setenv("FAIRBENCH_CACHE", str(tmp_path / "cache"))
    rng = np.random.default_rng(5)
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(12):
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(folder / f"{i:02d}.png")
    ext = CLIPExtractor(str(tiny_clip[0]))
    first = quality(folder, folder, ext, batch_size=5)
    assert abs(first["fd"]) < 1e-4 and first["n_generated"] == first["n_reference"] == 12
    assert not first["reference_stats_cached"] and first["resize"] == "PIL bicubic" and first["batch_size"] == 5
    second = quality(folder, folder, ext, batch_size=5)
    assert second["reference_stats_cached"] and second["fd"] == pytest.approx(first["fd"], abs=1e-9)
    (folder / "00.png").unlink()  # content changed -> new reference hash -> no stale cache hit
    third = quality(folder, folder, ext, batch_size=5)
    assert not third["reference_stats_cached"] and third["reference_hash"] != first["reference_hash"]


@pytest.fixture(scope="module")
def substitute_inception(tmp_path_factory):
    """A randomly initialised Inception-v3 state dict in torch-fidelity's layout (the real file can't be had)."""
    from unittest import mock

    import torch_fidelity.feature_extractor_inceptionv3 as fe

    with mock.patch.object(fe, "load_state_dict_from_url", return_value={}), \
            mock.patch.object(fe.FeatureExtractorInceptionV3, "load_state_dict", lambda self, sd: None):
        net = fe.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    path = tmp_path_factory.mktemp("inc") / "inception-substitute.pth"
    torch.save(net.state_dict(), path)
    return path


def test_inception_fetch_and_load_with_a_substitute(substitute_inception, tmp_path):
    from fairbench.metrics.features import InceptionExtractor, fetch_inception

    sha = hashlib.sha256(substitute_inception.read_bytes()).hexdigest()
    url = substitute_inception.as_uri()  # the real fetch code, pointed at a local file
    dest = fetch_inception(tmp_path / "w" / "inception.pth", url=url, hash_prefix=sha[:8])
    assert dest.read_bytes() == substitute_inception.read_bytes()
    with pytest.raises(UserError, match="could not fetch"):
        fetch_inception(tmp_path / "w2" / "x.pth", url=url, hash_prefix="00000000")
    with pytest.raises(UserError, match="sha256 mismatch"):
        InceptionExtractor(str(dest))  # the official prefix 6726825d does not match the substitute
    ext = InceptionExtractor(str(dest), sha256=sha)
    feats = ext(torch.randint(0, 255, (2, 3, 299, 299), dtype=torch.uint8))
    assert feats.shape == (2, 2048) and ext.identity.startswith("inception-v3-compat:")
    with pytest.raises(UserError, match="needs its weights"):
        InceptionExtractor()
