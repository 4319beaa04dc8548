"""Shared fixtures: a tiny random SD pipeline built once per session, offline."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# caches (reference statistics, Fair Mapping and UCE results) go to a temporary folder, never the user's
os.environ["FAIRBENCH_CACHE"] = tempfile.mkdtemp(prefix="fairbench-test-cache-")
atexit.register(shutil.rmtree, os.environ["FAIRBENCH_CACHE"], True)
os.environ["MPLCONFIGDIR"] = os.path.join(os.environ["FAIRBENCH_CACHE"], "matplotlib")  # its font cache
os.environ["XDG_CACHE_HOME"] = os.path.join(os.environ["FAIRBENCH_CACHE"], "xdg")  # onnxruntime's device id
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # One intra-op thread per xdist worker (workers x threads above the core count is far slower than either
    # alone), and the same in the fairbench processes tests start: float32 images depend on the thread count,
    # so a test that compares an in-process run with a subprocess's needs both on one setting.
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session", autouse=True)
def _outside_the_checkout(tmp_path_factory):
    """Run every test from a temporary folder, so a default `runs/...` never lands in the checkout."""
    old = Path.cwd()
    os.chdir(tmp_path_factory.mktemp("cwd"))
    yield
    os.chdir(old)


@pytest.fixture(scope="session")
def tiny_sd(tmp_path_factory) -> Path:
    """Folder of a tiny random StableDiffusionPipeline (make-tiny-sd)."""
    from fairbench.models.tiny import make_tiny_sd

    out = tmp_path_factory.mktemp("tiny-sd")
    make_tiny_sd(out)
    return out


@pytest.fixture(scope="session")
def tiny_pipelines(tmp_path_factory, tiny_sd) -> dict[str, Path]:
    """Folders of tiny random pipelines of every architecture make-tiny-sd writes (sd1 is tiny_sd)."""
    from fairbench.models.tiny import make_tiny_sd

    out = {"sd1": tiny_sd}
    for arch in ("sd2", "sdxl", "sd3"):
        out[arch] = tmp_path_factory.mktemp(f"tiny-{arch}")
        make_tiny_sd(out[arch], arch=arch)
    return out


def run_args(model: Path, out: Path, *extra: str) -> list[str]:
    """Common CLI arguments of a fast tiny-SD run."""
    return ["run", "--model", str(model), "--out", str(out), "--steps", "2", "--no-progress",
            "--n-boot", "50", *extra]


# a small float32 synthface run (2 prompts x 3 images): the run directory the integrity tests tamper with
SMALL_RUN = ["run", "--method", "vanilla", "--n", "3", "--limit", "2", "--no-progress", "--n-boot", "50",
             "--dtype", "float32"]


@pytest.fixture(scope="module")
def original(tmp_path_factory) -> Path:
    """A finished SMALL_RUN, made once per test module; tests change only copies of it."""
    from fairbench.cli.main import main

    run = tmp_path_factory.mktemp("original") / "run"
    assert main([*SMALL_RUN, "--out", str(run)]) == 0
    return run


@pytest.fixture
def copy(original, tmp_path) -> Path:
    """A fresh copy of `original` in the test's own folder."""
    dest = tmp_path / "run"
    shutil.copytree(original, dest)
    return dest


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory):
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    from fairbench.models.tiny import tiny_tokenizer

    tok = tiny_tokenizer()
    torch.manual_seed(0)
    config = CLIPConfig(
        text_config=dict(vocab_size=len(tok), hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=77, bos_token_id=0, eos_token_id=1,
                         pad_token_id=1),
        vision_config=dict(image_size=30, patch_size=6, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                           num_attention_heads=4),
        projection_dim=16,
    )
    model = CLIPModel(config).eval()
    proc = CLIPProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 30},
                                                            crop_size={"height": 30, "width": 30}), tokenizer=tok)
    out = tmp_path_factory.mktemp("clip")
    model.save_pretrained(out)
    proc.save_pretrained(out)
    return out, model, proc


@pytest.fixture(scope="session")
def references(tmp_path_factory):
    """Two random images per gender group, in ITI-GEN's <attribute>/<group>/ layout."""
    root = tmp_path_factory.mktemp("refs")
    rng = np.random.default_rng(0)
    for g, group in enumerate(("male", "female")):
        (root / "gender" / group).mkdir(parents=True)
        for i in range(2):
            pixels = (rng.random((30, 30, 3)) * 127 + 128 * g).astype(np.uint8)
            Image.fromarray(pixels).save(root / "gender" / group / f"{i}.png")
    return root
