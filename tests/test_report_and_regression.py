"""Reports with figures on real synthface runs; the regression check on a real run, a bias shift and a quality drop."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from fairbench.cli.main import main
from fairbench.io import read_jsonl, sha256_file, write_jsonl

ARGS = ["--n", "8", "--no-progress", "--n-boot", "200"]
# occupations SD 1.5 drew near gender parity (female shares 0.34-0.60): room for a bias shift to show
BALANCED = """name: balanced
template: "a photo of the face of {a} {occupation}"
group_template: "a photo of the face of {a} {group} {occupation}"
prompts:
  - {id: clerk, vars: {occupation: clerk}}
  - {id: community_manager, vars: {occupation: community manager}}
  - {id: data_entry_keyer, vars: {occupation: data entry keyer}}
  - {id: dentist, vars: {occupation: dentist}}
  - {id: designer, vars: {occupation: designer}}
"""


@pytest.fixture(scope="module")
def synth_runs(tmp_path_factory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("synth")
    suite = base / "balanced.yaml"
    suite.write_text(BALANCED)
    vanilla, explicit = base / "vanilla", base / "explicit"
    assert main(["run", *ARGS, "--suite", str(suite), "--out", str(vanilla)]) == 0
    assert main(["run", *ARGS, "--suite", "explicit", "--limit", "6", "--out", str(explicit),
                 "--reference", str(vanilla)]) == 0
    return vanilla, explicit


def test_report_writes_legible_figures(synth_runs):
    vanilla, explicit = synth_runs
    assert main(["report", str(explicit), "--baseline", str(vanilla)]) == 0
    text = (explicit / "report.md").read_text()
    for fig in ("figures/comparison.png", "figures/shares_gender.png", "figures/grid_gender.png"):
        assert f"]({fig})" in text
        with Image.open(explicit / fig) as im:
            assert im.width >= 300 and im.height >= 100
            assert np.asarray(im.convert("L")).std() > 10  # not blank
    assert "FD_synthface" in text and "explicit-prompt adherence (gender)" in text


def test_check_passes_unchanged_and_fails_on_bias_shift_and_quality_drop(synth_runs, tmp_path):
    vanilla, _ = synth_runs
    ref = tmp_path / "ref.json"
    assert main(["reference", str(vanilla), "--out", str(ref)]) == 0
    assert main(["check", str(vanilla), "--against", str(ref)]) == 0

    # bias shift: every face labelled female, metrics recomputed from the edited labels
    shifted = tmp_path / "shifted"
    shutil.copytree(vanilla, shifted)
    labels = pd.read_parquet(shifted / "labels.parquet")
    labels.loc[labels["face"], "gender"] = "female"
    labels.to_parquet(shifted / "labels.parquet")
    from fairbench.classifiers import build_classifier
    from fairbench.config import RunConfig
    from fairbench.pipeline import evaluate_run

    spec = json.loads((shifted / "run.json").read_text())["spec"]
    evaluate_run(shifted, labels, build_classifier("synthface"), RunConfig(**spec))
    assert main(["check", str(shifted), "--against", str(ref)]) == 1

    # quality drop: half the images replaced by noise, then re-labelled (no regeneration)
    dropped = tmp_path / "dropped"
    shutil.copytree(vanilla, dropped)
    rng = np.random.default_rng(0)
    rows = read_jsonl(dropped / "manifest.jsonl")
    for i, row in enumerate(rows):  # as if the model had drawn them: the manifest records their sha256
        if i % 2 == 0:
            Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(dropped / row["image"])
            row["sha256"] = sha256_file(dropped / row["image"])
    write_jsonl(dropped / "manifest.jsonl", rows)
    assert main(["classify", str(dropped), "--classifier", "synthface", "--no-progress"]) == 0
    assert main(["check", str(dropped), "--against", str(ref)]) == 1
