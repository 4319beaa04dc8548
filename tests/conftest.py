"""Shared fixtures: a tiny random SD pipeline built once per session, offline."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def tiny_sd(tmp_path_factory) -> Path:
    """Folder of a tiny random StableDiffusionPipeline (make-tiny-sd)."""
    from fairbench.models.tiny import make_tiny_sd

    out = tmp_path_factory.mktemp("tiny-sd")
    make_tiny_sd(out)
    return out


def run_args(model: Path, out: Path, *extra: str) -> list[str]:
    """Common CLI arguments of a fast tiny-SD run."""
    return ["run", "--model", str(model), "--out", str(out), "--steps", "2", "--no-progress",
            "--n-boot", "50", *extra]
