"""The paired regression check at the CI size (12 prompts x 8 images) on real synthface runs.

Changes are injected at the image level and re-labelled with `fairbench classify`, with the helpers
of scripts/check_power.py (which measures the same cases over more draws and seeds).
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fairbench.cli.main import main

REPO = Path(__file__).resolve().parents[1]

_spec = importlib.util.spec_from_file_location("check_power", REPO / "scripts" / "check_power.py")
power = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(power)


@pytest.fixture(scope="module")
def ci_run(tmp_path_factory) -> tuple[Path, Path]:
    """A float32 CI-size run and its reference."""
    base = tmp_path_factory.mktemp("check")
    run = power.make_run(base / "f32", "--dtype", "float32")
    ref = base / "reference.json"
    assert main(["reference", str(run), "--out", str(ref)]) == 0
    return run, ref


def test_reference_is_small_and_keeps_what_pairing_needs(ci_run):
    run, ref = ci_run
    doc = json.loads(ref.read_text())
    assert ref.stat().st_size < 20_000
    assert doc["schema_version"] == 2 and len(doc["units"]["key"]) == 96 and len(doc["units"]["sha256"]) == 96
    assert list(doc["groups"]) == ["gender", "skin_tone", "age2"]
    assert doc["settings"]["n"] == 8 and doc["settings"]["limit"] == 12 and doc["settings"]["model_fingerprint"]


def test_unchanged_run_passes_in_exact_mode(ci_run, capsys):
    run, ref = ci_run
    assert main(["check", str(run), "--against", str(ref)]) == 0
    assert "exact: all 96 images byte-identical" in capsys.readouterr().out
    assert main(["check", str(run), "--against", str(run)]) == 0  # a run directory is a reference too


@pytest.mark.parametrize("kind", power.FAIL_CASES)
def test_injected_changes_fail(ci_run, tmp_path, kind, capsys):
    run, ref = ci_run
    labels = pd.read_parquet(run / "labels.parquet")
    for draw in range(2):
        injected = power.injection(kind, run, labels, tmp_path / f"d{draw}", draw)
        capsys.readouterr()
        assert main(["check", str(injected), "--against", str(ref)]) == 1, kind
        assert "REGRESSION" in capsys.readouterr().out


def _minority_gender(sub: pd.DataFrame) -> str:
    """The prompt's rarer gender label; prompts with a tie get a name no image has (left alone)."""
    counts = sub["gender"].value_counts().reindex(["male", "female"], fill_value=0)
    return "none" if counts["male"] == counts["female"] else str(counts.idxmin())


def test_a_fairer_result_is_also_a_regression(ci_run, tmp_path):
    run, ref = ci_run
    labels = pd.read_parquet(run / "labels.parquet")
    moves = power.toward(labels, "gender", _minority_gender, 8, np.random.default_rng(0))
    injected = power.replace_images(run, tmp_path / "fairer", moves)
    gap = lambda d: json.loads((d / "metrics.json").read_text())["attributes"]["gender"]["aggregate"]["bias_gap"]["value"]
    assert gap(injected) < gap(run)
    assert main(["check", str(injected), "--against", str(ref)]) == 1


def _bfloat16_run(run: Path, out: Path) -> Path:
    """The CI run in bfloat16: generated where the CPU computes bfloat16 natively; elsewhere (where it runs
    about 27 times slower than float32) the float32 run recorded as bfloat16, which tests the flag but
    not the noise (the batch-size run carries real numerical noise either way)."""
    from fairbench.models import native_bfloat16

    if native_bfloat16("cpu"):
        return power.make_run(out, "--dtype", "bfloat16")
    shutil.copytree(run, out)
    record = json.loads((out / "run.json").read_text())
    record["spec"]["dtype"] = "bfloat16"
    (out / "run.json").write_text(json.dumps(record))
    return out


def test_noise_passes_and_is_flagged(ci_run, tmp_path, capsys):
    run, ref = ci_run
    b5 = power.make_run(tmp_path / "b5", "--dtype", "float32", "--batch-size", "5")
    bf = _bfloat16_run(run, tmp_path / "bf16")
    for other, flag in ((b5, "batch_size"), (bf, "dtype")):
        capsys.readouterr()
        assert main(["check", str(other), "--against", str(ref)]) == 0
        out = capsys.readouterr().out
        assert f"flagged: {flag}" in out and "no regression" in out


def test_runs_that_do_not_pair_are_refused(ci_run, tmp_path, capsys):
    run, ref = ci_run
    other = power.make_run(tmp_path / "n4", "--dtype", "float32", "--n", "4")
    capsys.readouterr()
    assert main(["check", str(other), "--against", str(ref)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "n: 8 in" in err[0]
    # another weights fingerprint, seed or suite is refused the same way
    doc = json.loads(ref.read_text())
    for key, value in (("model_fingerprint", "0" * 64), ("seed", 7), ("suite", "descriptors")):
        bad = tmp_path / f"{key}.json"
        bad.write_text(json.dumps({**doc, "settings": {**doc["settings"], key: value}}))
        assert main(["check", str(run), "--against", str(bad)]) == 2
        assert key in capsys.readouterr().err


@pytest.mark.parametrize("content", ["[]", '{"schema_version": 1, "metrics": {}}', '{"schema_version": 2}',
                                     '{"schema_version": 2, "settings": {}, "prompt_ids": [], "groups": {"gender": ["a"]},'
                                     ' "units": {"key": ["x"], "prompt_id": ["p"], "seed": [1], "sha256": ["s"],'
                                     ' "face": ["yes"], "gender": ["a"]}}', "not json"])
def test_malformed_references_are_one_line_errors(ci_run, tmp_path, capsys, content):
    run, _ = ci_run
    bad = tmp_path / "bad.json"
    bad.write_text(content)
    assert main(["check", str(run), "--against", str(bad)]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_check_options_are_validated(ci_run, capsys):
    run, ref = ci_run
    assert main(["check", str(run), "--against", str(ref), "--alpha", "1.5"]) == 2
    assert main(["check", str(run), "--against", str(ref), "--permutations", "5"]) == 2


def test_an_internal_error_has_its_own_exit_code(ci_run, monkeypatch, capsys):
    run, ref = ci_run
    import fairbench.outputs.check as check

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(check, "check_run", broken)
    assert main(["check", str(run), "--against", str(ref)]) == 3
    err = capsys.readouterr().err
    assert "Traceback" in err and "internal error" in err


def test_the_committed_ci_reference_pairs_with_the_ci_run(ci_run):
    run, _ = ci_run
    shutil.copy(REPO / "results" / "ci_reference.json", run.parent / "committed.json")
    assert main(["check", str(run), "--against", str(run.parent / "committed.json")]) == 0
