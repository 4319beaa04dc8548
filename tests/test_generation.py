"""Generation invariants: batch size, shards, crash-resume and multi-process give the same images."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import run_args
from fairbench.cli.main import main


def manifest(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "manifest.jsonl").read_text().splitlines()]


def image_bytes(run_dir: Path) -> dict[str, bytes]:
    return {r["key"]: (run_dir / r["image"]).read_bytes() for r in manifest(run_dir)}


@pytest.fixture(scope="module")
def reference_run(tiny_sd, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ref") / "run"
    assert main(run_args(tiny_sd, out, "--n", "3", "--limit", "5", "--batch-size", "8")) == 0
    return out


def test_full_run_directory(reference_run):
    for name in ("run.json", "manifest.jsonl", "labels.parquet", "metrics.json", "tables/summary.csv",
                 "tables/per_prompt_gender.csv"):
        assert (reference_run / name).is_file(), name
    rows = manifest(reference_run)
    assert len(rows) == 15 and len({r["key"] for r in rows}) == 15
    run = json.loads((reference_run / "run.json").read_text())
    assert run["status"] == "complete" and run["spec"]["n"] == 3
    assert run["model"]["pipeline"] == "StableDiffusionPipeline" and run["versions"]["torch"]
    import hashlib

    for r in rows:  # manifest checksums match the files
        assert hashlib.sha256((reference_run / r["image"]).read_bytes()).hexdigest() == r["sha256"]
    metrics = json.loads((reference_run / "metrics.json").read_text())
    assert metrics["n_images"] == 15
    assert metrics["attributes"]["gender"]["n_images"] == 15


def pixels(run_dir: Path) -> dict[str, np.ndarray]:
    return {r["key"]: np.asarray(Image.open(run_dir / r["image"]), dtype=np.int16) for r in manifest(run_dir)}


def test_batch_invariant_mode_gives_identical_images_for_batch_1_and_8(tiny_sd, tmp_path):
    runs = []
    for bs in ("1", "8"):
        out = tmp_path / f"b{bs}"
        assert main(run_args(tiny_sd, out, "--n", "3", "--limit", "5", "--batch-size", bs, "--batch-invariant")) == 0
        runs.append(out)
    assert image_bytes(runs[0]) == image_bytes(runs[1])


def test_batched_mode_differs_from_batch_1_by_at_most_rounding(tiny_sd, reference_run, tmp_path):
    # batched kernels reduce in batch-shape-dependent order (~1e-6): at most one intensity level
    out = tmp_path / "b1"
    assert main(run_args(tiny_sd, out, "--n", "3", "--limit", "5", "--batch-size", "1")) == 0
    a, b = pixels(out), pixels(reference_run)
    assert a.keys() == b.keys()
    assert max(int(np.abs(a[k] - b[k]).max()) for k in a) <= 1
    # and the images are really different from each other (seeds are per image)
    keys = sorted(a)
    assert int(np.abs(a[keys[0]] - a[keys[1]]).max()) > 10


def test_two_shards_merged_equal_one_run(tiny_sd, reference_run, tmp_path, capsys):
    shards = []
    for i in range(2):
        d = tmp_path / f"s{i}"
        assert main(run_args(tiny_sd, d, "--n", "3", "--limit", "5", "--batch-size", "8", "--shard", f"{i}/2")) == 0
        assert not (d / "metrics.json").exists()
        shards.append(d)
    merged = tmp_path / "merged"
    assert main(["merge", str(shards[0]), str(shards[1]), "--out", str(merged), "--no-progress"]) == 0
    assert image_bytes(merged) == image_bytes(reference_run)
    assert [r["key"] for r in manifest(merged)] == [r["key"] for r in manifest(reference_run)]
    assert (merged / "metrics.json").is_file()

    other = tmp_path / "s1-retrained"
    shutil.copytree(shards[1], other)
    record = json.loads((other / "run.json").read_text())
    record["model"]["weights_fingerprint"] = "f" * 64
    (other / "run.json").write_text(json.dumps(record))
    assert main(["merge", str(shards[0]), str(other), "--out", str(tmp_path / "mixed"), "--no-progress"]) == 2
    assert "generated with different model weights" in capsys.readouterr().err


def test_merge_refuses_incomplete_shard_set(tiny_sd, tmp_path):
    d = tmp_path / "s0"
    assert main(run_args(tiny_sd, d, "--n", "1", "--limit", "2", "--shard", "0/2")) == 0
    assert main(["merge", str(d), "--out", str(tmp_path / "m")]) == 2


def _fairbench_cmd() -> list[str]:
    return [sys.executable, "-m", "fairbench"]


def test_sigkill_midway_then_resume_matches_uninterrupted(tiny_sd, tmp_path):
    common = ["--n", "40", "--limit", "6", "--batch-size", "2", "--steps", "4"]
    clean = tmp_path / "clean"
    assert main(run_args(tiny_sd, clean, *common)) == 0

    crashed = tmp_path / "crashed"
    args = _fairbench_cmd() + run_args(tiny_sd, crashed, *common)
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    path = crashed / "manifest.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline:
        if path.exists() and path.read_text().count("\n") >= 20:
            break
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    n_before = path.read_text().count("\n")
    assert 20 <= n_before < 240, "the kill must land midway through generation"
    assert not (crashed / "metrics.json").exists()

    assert main(run_args(tiny_sd, crashed, *common)) == 0
    assert (crashed / "manifest.jsonl").read_text() == (clean / "manifest.jsonl").read_text()
    assert image_bytes(crashed) == image_bytes(clean)
    assert json.loads((crashed / "metrics.json").read_text()) == json.loads((clean / "metrics.json").read_text())


def test_torn_manifest_line_is_repaired(tiny_sd, tmp_path):
    out = tmp_path / "torn"
    assert main(run_args(tiny_sd, out, "--n", "2", "--limit", "2")) == 0
    good = (out / "manifest.jsonl").read_text()
    lines = good.splitlines(keepends=True)
    # simulate a crash in the middle of writing the last line, after its image was written
    (out / "manifest.jsonl").write_text("".join(lines[:-1]) + lines[-1][:25])
    assert main(run_args(tiny_sd, out, "--n", "2", "--limit", "2")) == 0
    assert (out / "manifest.jsonl").read_text() == good


def test_resume_refuses_a_different_run(tiny_sd, reference_run, tmp_path, capsys):
    out = tmp_path / "copy"
    shutil.copytree(reference_run, out)
    assert main(run_args(tiny_sd, out, "--n", "3", "--limit", "5", "--seed", "7")) == 2
    assert "holds a different run (seed: 0 there, 7 now); pass --seed 0 to resume it" in capsys.readouterr().err


def test_resume_refuses_images_from_other_weights(tiny_sd, reference_run, tmp_path, capsys):
    out = tmp_path / "retrained"
    shutil.copytree(reference_run, out)
    record = json.loads((out / "run.json").read_text())
    assert len(record["model"]["weights_fingerprint"]) == 64
    record["model"]["weights_fingerprint"] = "0" * 64  # as if the model had been retrained since
    (out / "run.json").write_text(json.dumps(record))
    assert main(run_args(tiny_sd, out, "--n", "3", "--limit", "5", "--batch-size", "8")) == 2
    assert "holds images from other weights of this model (fingerprint 000000000000 there" in capsys.readouterr().err


def test_weights_fingerprint_sees_any_tensor_change_and_ignores_precision():
    from fairbench.models.backend import weights_fingerprint

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(64, 512), torch.nn.Linear(512, 4))
    before = weights_fingerprint({"unet": net})
    assert weights_fingerprint({"unet": net.to(torch.bfloat16)}) == before
    net = net.float()
    with torch.no_grad():
        net[1].bias[3] += 0.5  # one value of the smallest tensor
    assert weights_fingerprint({"unet": net}) != before
    assert weights_fingerprint({"text_encoder": net}) != weights_fingerprint({"unet": net})


def test_resume_hint_names_a_flag_only_where_one_value_says_it():
    from fairbench.pipeline import resume_hint

    assert resume_hint("negative_prompt", "blurry, low quality") == (
        "pass --negative-prompt 'blurry, low quality' to resume it, or choose another --out")
    assert resume_hint("method_args", {"lambda_fair": 1.0}) == "choose another --out"
    assert resume_hint("batch_invariant", True) == "choose another --out"
    assert resume_hint("limit", None) == "choose another --out"


@pytest.mark.slow
def test_accelerate_two_processes_match_one(tiny_sd, tmp_path):
    # CPU kernels reduce in a thread-count-dependent order and torchrun gives each worker one
    # thread, so the single-process reference runs with one thread too
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    reference_run = tmp_path / "one"
    res = subprocess.run(_fairbench_cmd() + run_args(tiny_sd, reference_run, "--n", "3", "--limit", "5"), env=env,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    launcher = Path(sys.executable).with_name("accelerate")
    out = tmp_path / "acc"
    cmd = [str(launcher), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
           "--dynamo_backend", "no", "-m", "fairbench"] + run_args(tiny_sd, out, "--n", "3", "--limit", "5")
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    # a failing rank's own one-line error comes before the launcher's long report: keep it in the message
    assert res.returncode == 0, [line for line in res.stderr.splitlines() if "error:" in line] + [res.stderr[-1500:]]
    run = json.loads((out / "run.json").read_text())
    assert run["world_size"] == 2
    assert not list(out.glob("manifest.rank*.jsonl"))
    assert image_bytes(out) == image_bytes(reference_run)
    assert [r["key"] for r in manifest(out)] == [r["key"] for r in manifest(reference_run)]


def test_resume_at_another_dtype_names_the_flag(tiny_sd, reference_run, tmp_path, capsys):
    out = tmp_path / "copy"
    shutil.copytree(reference_run, out)
    assert main(run_args(tiny_sd, out, "--n", "3", "--limit", "5", "--dtype", "bfloat16")) == 2
    assert "(dtype: 'float32' there, 'bfloat16' now); pass --dtype float32 to resume it" in capsys.readouterr().err
