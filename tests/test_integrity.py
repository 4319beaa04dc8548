"""A run directory cannot lie: images checked against the manifest, manifests repaired, one writer at a time."""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import SMALL_RUN

from fairbench.cli.main import main

ARGS = SMALL_RUN


def _state(run: Path) -> dict:
    """What must match an uninterrupted run: manifest lines, image bytes, labels and metrics."""
    import pandas as pd

    labels = pd.read_parquet(run / "labels.parquet").drop(columns=[], errors="ignore")
    metrics = json.loads((run / "metrics.json").read_text())
    return {"manifest": (run / "manifest.jsonl").read_text(),
            "images": {p.relative_to(run).as_posix(): p.read_bytes() for p in sorted((run / "images").rglob("*.png"))},
            "labels": labels.to_dict(orient="list"), "metrics": metrics}


def _resume(run: Path) -> None:
    assert main([*ARGS, "--out", str(run)]) == 0


def test_swapped_garbage_and_truncated_images_are_regenerated(original, copy):
    images = sorted((copy / "images").rglob("*.png"))
    shutil.copyfile(images[1], images[0])  # another valid PNG
    images[2].write_bytes(b"not a png")
    images[3].write_bytes(images[3].read_bytes()[:40])
    _resume(copy)
    assert json.loads((copy / "run.json").read_text())["generation"]["generated_now"] == 3
    assert _state(copy) == _state(original)


def test_classify_refuses_an_image_that_differs_from_its_manifest(copy, capsys):
    png = sorted((copy / "images").rglob("*.png"))[0]
    png.write_bytes(b"garbage")
    assert main(["classify", str(copy), "--classifier", "synthface", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and png.name in err[0] and "sha256" in err[0]


def test_regenerated_images_leave_one_manifest_line_each(original, copy):
    sorted((copy / "images").rglob("*.png"))[0].unlink()
    _resume(copy)
    assert _state(copy) == _state(original)
    shutil.rmtree(copy / "images")
    _resume(copy)
    assert len((copy / "manifest.jsonl").read_text().splitlines()) == 6
    assert _state(copy) == _state(original)
    assert main(["classify", str(copy), "--classifier", "synthface", "--no-progress"]) == 0
    assert json.loads((copy / "metrics.json").read_text())["n_images"] == 6


def test_a_corrupt_middle_line_is_repaired(original, copy):
    lines = (copy / "manifest.jsonl").read_text().splitlines(keepends=True)
    lines[2] = '{"key": "broken\n'
    (copy / "manifest.jsonl").write_text("".join(lines))
    _resume(copy)
    assert _state(copy) == _state(original)


def test_rows_of_another_seed_are_refused(copy, capsys):
    (copy / "run.json").unlink()
    assert main([*ARGS, "--out", str(copy), "--seed", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "manifest.jsonl" in err[0] and "another run" in err[0]


def test_stale_temp_files_are_removed_and_files_follow_the_umask(original, copy):
    stale = copy / "images" / sorted(p.name for p in (copy / "images").iterdir())[0] / ".00000.png.k3j9x_2a.tmp"  # as mkstemp names it
    stale.write_bytes(b"half")
    old = os.umask(0o022)
    try:
        _resume(copy)
    finally:
        os.umask(old)
    assert not stale.exists()
    for name in ("metrics.json", "run.json", "labels.parquet", "tables/summary.csv", "manifest.jsonl"):
        assert stat.S_IMODE((copy / name).stat().st_mode) == 0o644, name


def test_merge_into_one_of_its_shards_is_refused(tmp_path, capsys):
    shards = [tmp_path / f"s{i}" for i in range(2)]
    for i, d in enumerate(shards):
        assert main([*ARGS, "--shard", f"{i}/2", "--out", str(d)]) == 0
    before = sorted(p.name for p in (shards[0] / "images").rglob("*.png"))
    assert main(["merge", str(shards[0]), str(shards[1]), "--out", str(shards[0])]) == 2
    assert "one of the shards" in capsys.readouterr().err
    assert sorted(p.name for p in (shards[0] / "images").rglob("*.png")) == before


HOLD = """
import sys, time
from pathlib import Path
from fairbench.io import run_lock
with run_lock(Path(sys.argv[1])):
    print("locked", flush=True)
    time.sleep(60)
"""


def test_a_second_writer_is_refused_and_a_killed_writers_lock_is_taken_over(original, copy):
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(copy)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        second = subprocess.run([sys.executable, "-m", "fairbench", *ARGS, "--out", str(copy)],
                                capture_output=True, text=True, timeout=300)
        assert second.returncode == 2
        lines = second.stderr.strip().splitlines()
        assert len(lines) == 1 and "being written by another fairbench process" in lines[0] and str(holder.pid) in lines[0]
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    time.sleep(0.1)
    _resume(copy)  # the killed process's lock is free
    assert _state(copy) == _state(original)


@pytest.mark.parametrize("bad", [["--method", "fairmp"], ["--classifier", "nope"], ["--model", "no/such-model"],
                                 ["--suite", "nope"], ["--method-arg", "attributes=nope"]])
def test_a_refused_run_leaves_nothing_behind(tmp_path, capsys, bad):
    out = tmp_path / "deep" / "run"
    assert main([*ARGS, *bad, "--out", str(out)]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    assert not (tmp_path / "deep").exists()


def test_a_run_that_made_no_image_does_not_block_its_out(original, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "run.json").write_text(json.dumps({"spec": {"height": 7, "method": "vanilla"}, "status": "generating"}))
    assert main([*ARGS, "--out", str(out)]) == 0
    assert _state(out) == _state(original)


def test_the_manifest_names_the_model_not_a_machine_path(original):
    rows = [json.loads(line) for line in (original / "manifest.jsonl").read_text().splitlines()]
    assert {r["model"] for r in rows} == {"synthface-vl"}
    assert json.loads((original / "run.json").read_text())["model"]["weights_fingerprint"]


def test_killed_at_a_random_point_and_resumed_is_identical(tmp_path):
    """The fast version of scripts/kill_resume.py: one random SIGKILL of the run-and-report job."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("kill_resume", Path(__file__).resolve().parents[1] / "scripts" /
                                                  "kill_resume.py")
    kill_resume = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(kill_resume)
    result = kill_resume.measure(tmp_path, kills=1, seed=3)
    assert result["identical"] == 1 and result["with_temp_files"] == 0, result
