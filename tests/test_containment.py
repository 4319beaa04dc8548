"""fairbench never deletes, changes or reads a file outside the run directory it is given, and no
reader accepts a run directory whose files are not what its manifest says.

A file is planted outside the run directory and a manifest row, a symbolic link, a plan or a
prompts file points at it; every command must refuse (exit 2, one line, nothing written) or repair
the run in place, and the planted file must be neither opened (an audit hook sees every open), nor
changed, nor deleted.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import pandas as pd
import pytest

from conftest import SMALL_RUN

from fairbench.cli.main import main

ARGS = SMALL_RUN

_WATCHED: set[str] = set()
_OPENED: list[str] = []


def _audit(event: str, args: tuple) -> None:
    # every open() and os.open() of the process passes here, PIL's and pandas' included
    if event == "open" and _WATCHED and isinstance(args[0], (str, bytes, os.PathLike)):
        real = os.path.realpath(os.fsdecode(args[0]))
        if real in _WATCHED:
            _OPENED.append(real)


sys.addaudithook(_audit)


class Planted:
    """A folder outside every run directory, with one image the commands must never open, change or delete."""

    def __init__(self, root: Path, image: bytes) -> None:
        self.dir = root / "outside"
        self.dir.mkdir()
        self.file = self.dir / "secret.png"
        self.file.write_bytes(image)
        self.before = self._state()

    def _state(self) -> dict[str, tuple[bytes, int]]:
        return {p.relative_to(self.dir).as_posix(): (p.read_bytes(), p.stat().st_mtime_ns)
                for p in sorted(self.dir.rglob("*")) if p.is_file()}

    def __enter__(self) -> "Planted":
        _OPENED.clear()
        _WATCHED.add(os.path.realpath(self.file))
        return self

    def __exit__(self, *exc: object) -> None:
        _WATCHED.clear()

    def untouched(self) -> bool:
        """Nothing in the folder opened, changed, deleted or added."""
        return not _OPENED and self._state() == self.before


def _rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "manifest.jsonl").read_text().splitlines()]


def _write_rows(run: Path, rows: list[dict]) -> None:
    (run / "manifest.jsonl").write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))


def _snapshot(run: Path) -> dict[str, bytes]:
    return {p.relative_to(run).as_posix(): p.read_bytes() for p in sorted(run.rglob("*"))
            if p.is_file() and not p.is_symlink() and p.name != ".fairbench.lock"}


def _one_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> list[Path]:
    base = tmp_path_factory.mktemp("shards")
    out = [base / f"s{i}" for i in range(2)]
    for i, d in enumerate(out):
        assert main([*ARGS, "--shard", f"{i}/2", "--out", str(d)]) == 0
    return out


@pytest.fixture
def shard_copies(shards, tmp_path) -> list[Path]:
    out = []
    for d in shards:
        shutil.copytree(d, tmp_path / d.name)
        out.append(tmp_path / d.name)
    return out


@pytest.fixture
def planted(original, tmp_path) -> Planted:
    """The planted file is a valid image with the sha256 of the run's first image: a row naming it passes
    a checksum check, so only the path check can refuse it."""
    return Planted(tmp_path, (original / _rows(original)[0]["image"]).read_bytes())


def _point_outside(run: Path, target: Path, how: str = "absolute") -> None:
    """Make the run's first manifest row name `target` (absolute, or relative through `..`)."""
    rows = _rows(run)
    rows[0]["image"] = str(target) if how == "absolute" else os.path.relpath(target, run)
    _write_rows(run, rows)


# 1. merge --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["absolute", "dotdot"])
def test_merge_refuses_a_shard_row_outside_the_shard(shard_copies, planted, tmp_path, capsys, how):
    _point_outside(shard_copies[0], planted.file, how)
    out = tmp_path / "merged"
    with planted:
        assert main(["merge", *map(str, shard_copies), "--out", str(out)]) == 2
        assert planted.untouched()
    assert "manifest.jsonl line 1" in _one_line(capsys)
    assert not out.exists()


def test_merge_writes_nothing_outside_out_for_a_dotdot_row(shards, tmp_path, capsys):
    copies = [tmp_path / "d" / d.name for d in shards]
    for d, c in zip(shards, copies):
        shutil.copytree(d, c)
    rows = _rows(copies[0])
    shutil.copyfile(copies[0] / rows[0]["image"], tmp_path / "x.png")  # what the row names, checksum and all
    rows[0]["image"] = "../../x.png"
    _write_rows(copies[0], rows)
    out = tmp_path / "a" / "b" / "merged"
    assert main(["merge", *map(str, copies), "--out", str(out)]) == 2
    assert "manifest.jsonl line 1" in _one_line(capsys)
    assert not (tmp_path / "a").exists()


def test_merge_checks_shard_images_against_their_sha256(shard_copies, tmp_path, capsys):
    image = shard_copies[0] / _rows(shard_copies[0])[-1]["image"]
    image.write_bytes(image.read_bytes()[:50])
    assert main(["merge", *map(str, shard_copies), "--out", str(tmp_path / "merged")]) == 2
    assert str(image) in _one_line(capsys)
    assert not (tmp_path / "merged").exists()


def test_merge_refuses_an_out_that_holds_another_run_or_other_files(shards, original, tmp_path, capsys):
    other = tmp_path / "other"
    shutil.copytree(original, other)
    (other / "images" / "stray.txt").write_text("mine")
    before = _snapshot(other)
    assert main(["merge", *map(str, shards), "--out", str(other)]) == 2
    assert "holds another run" in _one_line(capsys)
    assert _snapshot(other) == before
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    assert main(["merge", *map(str, shards), "--out", str(mine)]) == 2
    assert "not a fairbench run" in _one_line(capsys)
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"]


def test_merge_of_clean_shards_equals_the_unsharded_run_and_repeats(shards, original, tmp_path):
    out = tmp_path / "merged"
    for _ in range(2):  # a repeated merge into its own folder is allowed, and changes nothing
        assert main(["merge", *map(str, shards), "--out", str(out)]) == 0
        assert (out / "manifest.jsonl").read_text() == (original / "manifest.jsonl").read_text()
    assert {k: v for k, v in _snapshot(out).items() if k.startswith("images/")} == \
        {k: v for k, v in _snapshot(original).items() if k.startswith("images/")}


# 2. stale temp files ---------------------------------------------------------------------------------


def test_run_into_a_folder_of_user_files_is_refused_and_touches_none_of_them(original, tmp_path, capsys):
    out = tmp_path / "d"
    (out / "sub").mkdir(parents=True)
    mine = {out / ".notes.tmp": b"notes", out / "sub" / ".draft.tmp": b"draft",
            out / ".run.json.abcdefgh.tmp": b"looks like ours, but the folder held no run"}
    for p, data in mine.items():
        p.write_bytes(data)
    _OPENED.clear()
    _WATCHED.update(os.path.realpath(p) for p in mine)
    try:
        assert main([*ARGS, "--out", str(out)]) == 2
        assert not _OPENED
    finally:
        _WATCHED.clear()
    assert "is a folder of other files" in _one_line(capsys)
    assert all(p.read_bytes() == data for p, data in mine.items())
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*")) == [".notes.tmp", ".run.json.abcdefgh.tmp",
                                                                            "sub", "sub/.draft.tmp"]


def test_resume_removes_only_the_temp_files_fairbench_names(copy):
    pid = sorted(p.name for p in (copy / "images").iterdir())[0]
    ours = [copy / ".metrics.json.a1b2c3d4.tmp", copy / "images" / pid / ".00001.png.zz_9yy8x.tmp"]
    theirs = [copy / ".notes.tmp", copy / "images" / pid / ".draft.tmp", copy / ".mine.txt.a1b2c3d4.tmp",
              copy / "sub" / ".run.json.a1b2c3d4.tmp"]
    (copy / "sub").mkdir()
    for p in ours + theirs:
        p.write_bytes(b"x")
    assert main([*ARGS, "--out", str(copy)]) == 0
    assert not any(p.exists() for p in ours)
    assert all(p.read_bytes() == b"x" for p in theirs)


# 3. check hashes the files -----------------------------------------------------------------------------


def _tamper(run: Path, how: str) -> Path:
    rows = _rows(run)
    image, other = run / rows[0]["image"], run / rows[1]["image"]
    if how == "swapped":
        shutil.copyfile(other, image)
    elif how == "truncated":
        image.write_bytes(image.read_bytes()[:40])
    elif how == "garbage":
        image.write_bytes(b"not a png")
    elif how == "deleted":
        image.unlink()
    elif how == "replaced":  # another valid image of the same size
        from PIL import Image

        Image.new("RGB", Image.open(other).size, "red").save(image)
    return image


@pytest.mark.parametrize("how", ["swapped", "truncated", "garbage", "deleted", "replaced"])
def test_check_and_report_refuse_tampered_images(original, copy, tmp_path, capsys, how):
    ref = tmp_path / "ref.json"
    assert main(["reference", str(original), "--out", str(ref)]) == 0
    image = _tamper(copy, how)
    capsys.readouterr()
    assert main(["check", str(copy), "--against", str(ref)]) == 2
    line = _one_line(capsys)
    assert str(image) in line and "sha256" in line
    assert main(["check", str(original), "--against", str(copy)]) == 2  # a tampered run is no reference either
    assert str(image) in _one_line(capsys)
    before = _snapshot(copy)
    assert main(["report", str(copy)]) == 2
    assert str(image) in _one_line(capsys)
    assert _snapshot(copy) == before and not (copy / "figures").exists()


# 4. rows that alias another unit's image or point outside ----------------------------------------------


def test_resume_repairs_rows_that_alias_or_point_outside_without_reading_them(original, copy, planted):
    rows = _rows(copy)
    rows[1]["image"] = rows[2]["image"]  # another unit's file, with that file's checksum
    rows[1]["sha256"] = rows[2]["sha256"]
    rows[0]["image"] = str(planted.file)  # outside, with the right checksum
    _write_rows(copy, rows)
    with planted:
        assert main([*ARGS, "--out", str(copy)]) == 0
        assert planted.untouched()
    assert json.loads((copy / "run.json").read_text())["generation"]["generated_now"] == 2
    assert (copy / "manifest.jsonl").read_text() == (original / "manifest.jsonl").read_text()
    assert pd.read_parquet(copy / "labels.parquet").equals(pd.read_parquet(original / "labels.parquet"))


def test_resume_remakes_rows_that_are_no_manifest_rows(original, copy):
    rows = _rows(copy)
    rows[0]["bogus"] = 1  # a key fairbench never writes
    rows[1]["seed"] = str(rows[1]["seed"])  # a seed that is no number
    _write_rows(copy, rows)
    assert main([*ARGS, "--out", str(copy)]) == 0
    assert json.loads((copy / "run.json").read_text())["generation"]["generated_now"] == 2
    assert (copy / "manifest.jsonl").read_text() == (original / "manifest.jsonl").read_text()
    assert pd.read_parquet(copy / "labels.parquet").equals(pd.read_parquet(original / "labels.parquet"))
    assert not (copy / ".fairbench.lock").exists()  # the lock goes with the process that held it


def test_resume_replaces_an_image_that_is_a_link_outside_and_never_writes_through_it(original, copy, planted):
    image = copy / _rows(copy)[0]["image"]
    image.unlink()
    image.symlink_to(planted.file)
    with planted:
        assert main([*ARGS, "--out", str(copy)]) == 0
        assert planted.untouched()
    assert not image.is_symlink() and image.read_bytes() == (original / _rows(original)[0]["image"]).read_bytes()


def test_a_symlinked_images_folder_is_refused_before_anything_is_written(copy, planted, capsys):
    folder = copy / "images" / _rows(copy)[0]["prompt_id"]
    for p in folder.iterdir():
        shutil.move(p, planted.dir / p.name)
    folder.rmdir()
    folder.symlink_to(planted.dir, target_is_directory=True)
    planted.before = planted._state()
    before = _snapshot(copy)
    with planted:
        assert main([*ARGS, "--out", str(copy)]) == 2
        assert planted.untouched()
    assert "symbolic link" in _one_line(capsys)
    assert _snapshot(copy) == before


@pytest.mark.parametrize("how", ["absolute", "dotdot", "alias"])
def test_readers_refuse_rows_that_are_not_their_units_own_image(original, copy, planted, tmp_path, capsys, how):
    rows = _rows(copy)
    if how == "alias":
        rows[0]["image"], rows[0]["sha256"] = rows[1]["image"], rows[1]["sha256"]
        _write_rows(copy, rows)
    else:
        _point_outside(copy, planted.file, how)
    before = _snapshot(copy)
    commands = [["classify", str(copy), "--classifier", "synthface", "--no-progress"],
                ["check", str(copy), "--against", str(original)],
                ["check", str(original), "--against", str(copy)],
                ["reference", str(copy), "--out", str(tmp_path / "ref.json")],
                ["report", str(copy)],
                ["compare", str(copy), "--baseline", str(original)],
                ["compare", str(original), "--baseline", str(copy)],
                ["quality", str(copy), "--reference", str(original), "--extractor", "synthface"],
                ["quality", str(original), "--reference", str(copy), "--extractor", "synthface"]]
    original_state = _snapshot(original)
    for command in commands:
        with planted:
            assert main(command) == 2, command
            assert planted.untouched(), command
        assert "manifest.jsonl line 1" in _one_line(capsys), command
    assert _snapshot(copy) == before and _snapshot(original) == original_state
    assert not (tmp_path / "ref.json").exists()


# 5. plan paths -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("change", [{"run_name": "../../{method}"}, {"run_name": "ABS/{method}"},
                                    {"methods": [{"method": "vanilla", "label": ".."}]},
                                    {"suites": [{"name": "..", "suite": "occupations", "n": 1, "limit": 1}]}])
def test_plan_paths_stay_inside_out(tmp_path, capsys, change):
    plan = {"name": "p", "out": str(tmp_path / "a" / "b" / "runs"), "models": ["synthface"],
            "suites": [{"name": "s", "suite": "occupations", "n": 1, "limit": 1}],
            "methods": [{"method": "vanilla"}], **change}
    plan["run_name"] = plan.get("run_name", "{method}").replace("ABS", str(tmp_path / "abs"))  # an absolute path
    path = tmp_path / "plan.yaml"
    path.write_text(json.dumps(plan))
    assert main(["plan", str(path), "--no-progress"]) == 2
    _one_line(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plan.yaml"]


# 6. a refused resume leaves run.json as it was ---------------------------------------------------------


def test_a_refused_resume_leaves_the_run_as_it_was(copy, capsys):
    rows = _rows(copy)
    rows[0]["seed"] += 1  # a row of another run
    _write_rows(copy, rows)
    before = _snapshot(copy)
    assert main([*ARGS, "--out", str(copy)]) == 2
    assert "another run" in _one_line(capsys)
    assert _snapshot(copy) == before
    assert json.loads((copy / "run.json").read_text())["status"] == "complete"


# 7. no silent partial work -----------------------------------------------------------------------------


@pytest.mark.parametrize("damage", ["torn", "corrupt", "dropped"])
def test_classify_refuses_a_manifest_that_lost_a_line(copy, capsys, damage):
    text = (copy / "manifest.jsonl").read_text()
    lines = text.splitlines(keepends=True)
    if damage == "torn":
        text = "".join(lines[:-1]) + lines[-1][:30]
    elif damage == "corrupt":
        text = "".join(lines[:2]) + "{not json\n" + "".join(lines[3:])
    else:
        text = "".join(lines[:-1])
    (copy / "manifest.jsonl").write_text(text)
    before = _snapshot(copy)
    assert main(["classify", str(copy), "--classifier", "synthface", "--no-progress"]) == 2
    assert "manifest.jsonl" in _one_line(capsys)
    assert _snapshot(copy) == before


def test_missing_label_rows_are_refused_not_read_as_no_face(original, copy, capsys):
    labels = pd.read_parquet(copy / "labels.parquet")
    labels.iloc[1:].to_parquet(copy / "labels.parquet")
    for command in (["compare", str(copy), "--baseline", str(original)],
                    ["check", str(copy), "--against", str(original)],
                    ["check", str(original), "--against", str(copy)]):
        assert main(command) == 2, command
        line = _one_line(capsys)
        assert "no label row for 1 of the run's 6 images" in line, line


# 8. refused before the work ----------------------------------------------------------------------------


@pytest.mark.parametrize("extra", [["--extractor", "nosuch"], ["--clip-model", "/nonexistent"],
                                   ["--baseline-out", "FILE"], ["--baseline-out", "OUT"]])
def test_run_refuses_bad_options_before_generating(tmp_path, capsys, extra, monkeypatch):
    import fairbench.generation.engine as engine

    def never(*args, **kwargs):
        raise AssertionError("generation started")

    monkeypatch.setattr(engine, "generate_batch", never)
    (tmp_path / "file").write_text("mine")
    out = tmp_path / "deep" / "run"
    extra = [{"FILE": str(tmp_path / "file"), "OUT": str(out)}.get(e, e) for e in extra]
    assert main([*ARGS, "--method", "hardprompt", *extra, "--out", str(out)]) == 2
    _one_line(capsys)
    assert not (tmp_path / "deep").exists() and (tmp_path / "file").read_text() == "mine"


def test_leaderboard_checks_both_outputs_before_writing_either(original, tmp_path, capsys):
    (tmp_path / "afile").write_text("")
    csv = tmp_path / "board.csv"
    assert main(["leaderboard", str(original), "--out", str(csv), "--markdown", str(tmp_path / "afile" / "b.md")]) == 2
    _one_line(capsys)
    assert not csv.exists()


def test_report_leaves_no_empty_figures_folder(copy, capsys):
    assert main(["report", str(copy), "--baseline", str(copy / "nonexistent")]) == 2
    _one_line(capsys)
    assert not (copy / "figures").exists() and not (copy / "report.md").exists()


# 9. limits, NaN, atomic figures ------------------------------------------------------------------------


@pytest.mark.parametrize("extra", [["--n", "99999999999999999999999"], ["--n", "100000", "--split", "all"],
                                   ["--guidance-scale", "inf"], ["--guidance-scale", "nan"], ["--steps", "10000000"]])
def test_absurd_numbers_are_refused_at_once(tmp_path, capsys, extra):
    out = tmp_path / "run"
    assert main([*[a for a in ARGS if a not in ("--limit", "2")], *extra, "--out", str(out)]) == 2
    _one_line(capsys)
    assert not out.exists()


def test_a_figure_is_written_whole_or_not_at_all(original, tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    from fairbench.outputs.plots import plot_shares

    def half_then_fail(self, target, *args, **kwargs):
        if isinstance(target, (str, os.PathLike)):
            Path(target).write_bytes(b"\x89PNG half")
        else:
            target.write(b"\x89PNG half")
        raise OSError("disk full")

    monkeypatch.setattr(Figure, "savefig", half_then_fail)
    (tmp_path / "figures").mkdir()
    res = json.loads((original / "metrics.json").read_text())["attributes"]["gender"]
    with pytest.raises(OSError):
        plot_shares("gender", res, tmp_path / "figures" / "shares.png")
    assert not (tmp_path / "figures" / "shares.png").exists()


# every command, one planted file -----------------------------------------------------------------------


def test_score_never_reads_a_prompts_row_outside_its_image_folder(original, planted, tmp_path, capsys):
    images = tmp_path / "imgs"
    images.mkdir()
    shutil.copyfile(original / _rows(original)[1]["image"], images / "a.png")
    prompts = tmp_path / "prompts.csv"
    prompts.write_text(f"image,prompt_id,prompt\na.png,p,a person\n../outside/secret.png,p,a person\n"
                       f"{planted.file},p,a person\n")
    with planted:
        assert main(["score", str(images), "--prompts", str(prompts), "--out", str(tmp_path / "scored"),
                     "--no-progress"]) == 2
        assert planted.untouched()
    assert "outside" in _one_line(capsys)
    assert not (tmp_path / "scored").exists()


def test_plan_resumes_a_run_whose_row_points_outside_without_reading_it(original, planted, tmp_path):
    runs = tmp_path / "runs"
    shutil.copytree(original, runs / "synthface-vl" / "vanilla-s")
    _point_outside(runs / "synthface-vl" / "vanilla-s", planted.file)
    plan = {"name": "p", "out": str(runs), "models": ["synthface-vl"],
            "suites": [{"name": "s", "suite": "occupations", "n": 3, "limit": 2}],
            "methods": [{"method": "vanilla"}], "options": {"dtype": "float32", "n_boot": 50}}
    (tmp_path / "plan.yaml").write_text(json.dumps(plan))
    with planted:
        assert main(["plan", str(tmp_path / "plan.yaml"), "--no-progress"]) == 0
        assert planted.untouched()
    assert (runs / "synthface-vl" / "vanilla-s" / "manifest.jsonl").read_text() == \
        (original / "manifest.jsonl").read_text()


# a run.json that is not a run record ---------------------------------------------------------------------


@pytest.mark.parametrize("content", [b"{}", b"[]", b"\xff\xfe not utf-8", b'{"spec": []}', b"{not json"])
def test_a_broken_run_json_is_one_line_for_every_reader(original, copy, tmp_path, capsys, content):
    (copy / "run.json").write_bytes(content)
    before = _snapshot(copy)
    commands = [[*ARGS, "--out", str(copy)],
                ["classify", str(copy), "--classifier", "synthface", "--no-progress"],
                ["report", str(copy)], ["check", str(copy), "--against", str(original)],
                ["check", str(original), "--against", str(copy)],
                ["reference", str(copy), "--out", str(tmp_path / "ref.json")],
                ["compare", str(copy), "--baseline", str(original)],
                ["quality", str(original), "--reference", str(copy), "--extractor", "synthface"],
                ["merge", str(copy), "--out", str(tmp_path / "merged")]]
    for command in commands:
        code = main(command)
        line = _one_line(capsys)
        assert code == 2 and "run.json" in line, (command, line)
    assert _snapshot(copy) == before
    assert not (tmp_path / "ref.json").exists() and not (tmp_path / "merged").exists()
