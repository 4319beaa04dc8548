"""`fairbench score`: images made elsewhere, scored exactly like a generated run."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from fairbench.cli.main import main

RUN = ["run", "--n", "2", "--limit", "3", "--no-progress"]


def _write_csv(path: Path, rows: list[dict]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> tuple[Path, Path, Path]:
    """A synthface run; its images copied to a flat folder under other names, with a prompts CSV."""
    base = tmp_path_factory.mktemp("score")
    assert main([*RUN, "--out", str(base / "run")]) == 0
    folder = base / "elsewhere"
    folder.mkdir()
    rows = []
    for r in map(json.loads, (base / "run" / "manifest.jsonl").read_text().splitlines()):
        name = f"{r['prompt_id']}-{r['sample_idx']}.png"
        shutil.copy(base / "run" / r["image"], folder / name)
        rows.append({"image": name, "prompt_id": r["prompt_id"], "prompt": r["prompt"], "sample_idx": r["sample_idx"],
                     "model": "synthface", "method": "vanilla"})
    return base / "run", folder, _write_csv(base / "prompts.csv", rows[::-1])  # any row order


def test_scored_copy_of_a_run_has_identical_metrics(generated, tmp_path):
    run, folder, prompts = generated
    out = tmp_path / "scored"
    assert main(["score", str(folder), "--prompts", str(prompts), "--suite", "occupations", "--out", str(out),
                 "--no-progress"]) == 0
    assert json.loads((out / "metrics.json").read_text()) == json.loads((run / "metrics.json").read_text())
    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    original = [json.loads(line) for line in (run / "manifest.jsonl").read_text().splitlines()]
    assert [r["key"] for r in rows] == [r["key"] for r in original]  # canonical order, whatever the file's
    assert [r["sha256"] for r in rows] == [r["sha256"] for r in original]
    assert {r["source"] for r in rows} == {"external"}
    labels, ref = pd.read_parquet(out / "labels.parquet"), pd.read_parquet(run / "labels.parquet")
    pd.testing.assert_frame_equal(labels.drop(columns="image"), ref.drop(columns="image"))
    # everything built on a run reads a scored run
    assert main(["report", str(out)]) == 0 and "fairbench score" in (out / "report.md").read_text()
    assert main(["leaderboard", str(out), "--out", str(tmp_path / "lb.csv")]) == 0
    assert set(pd.read_csv(tmp_path / "lb.csv")["method"]) == {"vanilla"}
    assert main(["reference", str(out), "--out", str(tmp_path / "ref.json")]) == 0
    assert main(["check", str(out), "--against", str(tmp_path / "ref.json")]) == 0
    assert main(["compare", str(out), "--baseline", str(out)]) == 0


def test_scoring_again_resumes_and_a_changed_image_is_reimported(generated, tmp_path):
    run, folder, prompts = generated
    out = tmp_path / "scored"
    argv = ["score", str(folder), "--prompts", str(prompts), "--suite", "occupations", "--out", str(out),
            "--no-progress"]
    assert main(argv) == 0
    first = (out / "metrics.json").read_text()
    assert main(argv) == 0
    record = json.loads((out / "run.json").read_text())
    assert record["generation"] == {"imported_now": 0, "already_done": 6}
    assert (out / "metrics.json").read_text() == first
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    name = sorted(copy.glob("*.png"))[0]
    Image.new("RGB", (32, 32), (128, 128, 128)).save(name)
    assert main([*argv[:1], str(copy), *argv[2:]]) == 0
    record = json.loads((out / "run.json").read_text())
    assert record["generation"] == {"imported_now": 1, "already_done": 5}
    assert len((out / "manifest.jsonl").read_text().splitlines()) == 6


def test_real_photos_face_rates_and_labels(tmp_path):
    """scikit-image's astronaut and upscaled LFW faces/non-faces: the rates the detector tests expect."""
    from skimage import data

    folder = tmp_path / "photos"
    folder.mkdir()
    Image.fromarray(data.astronaut()).save(folder / "astronaut.png")
    rows = [{"image": "astronaut.png", "prompt_id": "astronaut", "prompt": "a photo of an astronaut"}]
    lfw = data.lfw_subset()  # first 100 faces, last 100 non-faces
    for i in [*range(30), *range(100, 130)]:
        kind = "face" if i < 100 else "nonface"
        gray = Image.fromarray((lfw[i] * 255).astype(np.uint8)).resize((100, 100), Image.BICUBIC)
        gray.convert("RGB").save(folder / f"lfw{i:03d}.png")
        rows.append({"image": f"lfw{i:03d}.png", "prompt_id": f"lfw_{kind}", "prompt": f"lfw {kind}"})
    prompts = _write_csv(tmp_path / "photos.csv", rows)
    out = tmp_path / "scored"
    assert main(["score", str(folder), "--prompts", str(prompts), "--out", str(out), "--no-progress"]) == 0
    labels = pd.read_parquet(out / "labels.parquet")
    rate = labels.groupby("prompt_id")["face"].mean()
    assert rate["astronaut"] == 1.0 and rate["lfw_face"] >= 0.95 and rate["lfw_nonface"] <= 0.05
    astronaut = labels.set_index("prompt_id").loc["astronaut"]
    assert astronaut["gender"] == "female" and astronaut["n_faces"] == 1
    record = json.loads((out / "run.json").read_text())
    assert record["spec"]["classifier"] == "agegender" and record["spec"]["detector"] == "mtcnn"
    assert record["spec"]["model"] == "external"


def _bad(tmp_path: Path, kind: str) -> list[str]:
    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.new("RGB", (32, 32)).save(folder / "a.png")
    Image.new("RGB", (32, 32), (9, 9, 9)).save(folder / "b.png")
    row = {"image": "a.png", "prompt_id": "nurse", "prompt": "a photo of the face of a nurse"}
    rows = [row, {**row, "image": "b.png"}]
    suite: list[str] = []
    if kind == "missing prompts file":
        return ["score", str(folder), "--prompts", str(tmp_path / "nope.csv")]
    if kind == "image folder missing":
        return ["score", str(tmp_path / "nope"), "--prompts", str(_write_csv(tmp_path / "p.csv", rows))]
    if kind == "missing image":
        rows[1]["image"] = "c.png"
    elif kind == "image that does not decode":
        (folder / "b.png").write_bytes(b"\x89PNG not really")
    elif kind == "truncated image":
        data = (folder / "b.png").read_bytes()
        (folder / "b.png").write_bytes(data[: len(data) // 2])
    elif kind == "prompt id not in the suite":
        rows[1]["prompt_id"] = "astronaut"
        suite = ["--suite", "occupations"]
    elif kind == "duplicate image rows":
        rows[1]["image"] = "a.png"
    elif kind == "duplicate sample index":
        rows = [{**r, "sample_idx": "0"} for r in rows]
    elif kind == "missing column":
        rows = [{k: v for k, v in r.items() if k != "prompt_id"} for r in rows]
    elif kind == "image outside the folder":
        Image.new("RGB", (32, 32)).save(tmp_path / "outside.png")
        rows[1]["image"] = "../outside.png"
    elif kind == "two models":
        rows = [{**r, "model": m} for r, m in zip(rows, ("sd15", "sdxl"))]
    elif kind == "unsafe prompt id":
        rows = [{**r, "prompt_id": "../../etc"} for r in rows]
    elif kind == "two texts for one id":
        rows[1]["prompt"] = "another text"
    elif kind == "no prompt text and no suite":
        rows = [{k: v for k, v in r.items() if k != "prompt"} for r in rows]
    elif kind == "sample index not a number":
        rows = [{**r, "sample_idx": i} for r, i in zip(rows, ("0", "x"))]
    elif kind == "prompts file of another format":
        path = tmp_path / "p.txt"
        path.write_text("a.png nurse\n")
        return ["score", str(folder), "--prompts", str(path)]
    elif kind == "broken JSON lines":
        path = tmp_path / "p.jsonl"
        path.write_text('{"image": "a.png", "prompt_id": "nurse"}\n{broken\n')
        return ["score", str(folder), "--prompts", str(path)]
    return ["score", str(folder), "--prompts", str(_write_csv(tmp_path / "p.csv", rows)), *suite]


BAD = ["missing prompts file", "image folder missing", "missing image", "image that does not decode",
       "truncated image", "prompt id not in the suite", "duplicate image rows", "duplicate sample index",
       "missing column", "image outside the folder", "two models", "unsafe prompt id", "two texts for one id",
       "no prompt text and no suite", "sample index not a number", "prompts file of another format",
       "broken JSON lines"]


@pytest.mark.parametrize("kind", BAD)
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys, kind):
    argv = [*_bad(tmp_path, kind), "--out", str(tmp_path / "out"), "--no-progress"]
    assert main(argv) == 2, kind
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    assert not (tmp_path / "out").exists()
