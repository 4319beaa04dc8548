"""User mistakes are one line on stderr, exit 2, no traceback, and nothing written."""

from __future__ import annotations

from pathlib import Path

import pytest

from fairbench.cli.main import main

RUN = ["run", "--n", "1", "--limit", "1", "--no-progress"]


def _config(tmp_path: Path, body: bytes) -> str:
    path = tmp_path / "cfg.yaml"
    path.write_bytes(body)
    return str(path)


CASES = {
    "device tpu": lambda t: [*RUN, "--device", "tpu"],
    "device cuda without CUDA": lambda t: [*RUN, "--device", "cuda"],
    "classify device tpu": lambda t: ["classify", str(t), "--classifier", "synthface", "--device", "tpu"],
    "train device cuda": lambda t: ["train", "--method", "fairmap", "--device", "cuda", "--out", str(t / "ck")],
    "train unknown method": lambda t: ["train", "--method", "fairmp", "--out", str(t / "ck")],
    "config integer key": lambda t: [*RUN, "--config", _config(t, b"1: 2\n")],
    "config duplicate key": lambda t: [*RUN, "--config", _config(t, b"seed: 1\nseed: 2\n")],
    "config boolean n": lambda t: ["run", "--limit", "1", "--config", _config(t, b"n: true\n")],
    "config invalid utf-8": lambda t: [*RUN, "--config", _config(t, b"n: \xff\n")],
    "config is a directory": lambda t: [*RUN, "--config", str(t)],
    "config method_args not a mapping": lambda t: [*RUN, "--config", _config(t, b"method_args: foo\n"),
                                                   "--method-arg", "a=1"],
    "suite is a directory": lambda t: [*RUN, "--suite", str(t)],
    "synthface height 7": lambda t: [*RUN, "--height", "7"],
    "synthface width 100000": lambda t: [*RUN, "--width", "100000"],
    "check alpha out of range": lambda t: ["check", str(t), "--against", str(t), "--alpha", "-1"],
    "compare n-boot zero": lambda t: ["compare", str(t), "--baseline", str(t), "--n-boot", "0"],
    "plan not found": lambda t: ["plan", str(t / "nope.yaml")],
}


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A small finished synthface run, and a copy whose metrics.json is empty."""
    base = tmp_path_factory.mktemp("bad-input")
    assert main([*RUN, "--limit", "2", "--out", str(base / "run")]) == 0
    (base / "broken").mkdir()
    (base / "broken" / "run.json").write_text((base / "run" / "run.json").read_text())
    (base / "broken" / "metrics.json").write_text("{}")
    (base / "fake").mkdir()
    for name in ("a.png", "b.png"):
        (base / "fake" / name).write_text("not an image")
    return base


RUN_CASES = {
    "report of an empty metrics.json": lambda b, t: ["report", str(b / "broken")],
    "leaderboard of an empty metrics.json": lambda b, t: ["leaderboard", str(b / "broken"), "--out", str(t / "x.csv")],
    "leaderboard lists a run twice": lambda b, t: ["leaderboard", str(b / "run"), str(b / "run"), "--out", str(t / "x.csv")],
    "leaderboard attribute typo": lambda b, t: ["leaderboard", str(b / "run"), "--attributes", "gendr", "--markdown",
                                                str(t / "x.md"), "--out", str(t / "x.csv")],
    "leaderboard out is a directory": lambda b, t: ["leaderboard", str(b / "run"), "--out", str(t)],
    "reference out is a directory": lambda b, t: ["reference", str(b / "run"), "--out", str(t)],
    "quality batch size 0": lambda b, t: ["quality", str(b / "run"), "--reference", str(b / "run"), "--batch-size", "0"],
    "synthface grid n 0": lambda b, t: ["synthface", "grid", "--n", "0", "--out", str(t / "g.png")],
    "synthface train n-renders 0": lambda b, t: ["synthface", "train", "--n-renders", "0", "--out", str(t / "st")],
    "synthface train steps -1": lambda b, t: ["synthface", "train", "--steps", "-1", "--out", str(t / "st")],
    "synthface grid out not an image": lambda b, t: ["synthface", "grid", "--out", str(t / "g.txt")],
    "synthface evaluate-classifier missing dir": lambda b, t: ["synthface", "evaluate-classifier", "--dir", str(t / "nope")],
    "synthface train init-from missing": lambda b, t: ["synthface", "train", "--init-from", str(t / "nope"),
                                                       "--out", str(t / "st")],
    "fairmap steps -5": lambda b, t: [*RUN, "--method", "fairmap", "--method-arg", "steps=-5", "--out", str(t / "o")],
    "make-tiny-sd into a run directory": lambda b, t: ["make-tiny-sd", str(b / "run")],
    "ls kind typo": lambda b, t: ["ls", "methds"],
    "subcommand typo": lambda b, t: ["rnu"],
    "config key typo": lambda b, t: [*RUN, "--config", _config(t, b"sead: 1\n"), "--out", str(t / "o")],
    "scheduler typo": lambda b, t: [*RUN, "--scheduler", "dpmpp", "--out", str(t / "o")],
    "attribute typo": lambda b, t: [*RUN, "--method", "fairmap", "--method-arg", "attributes=gendr", "--out", str(t / "o")],
    "train out is a file": lambda b, t: ["train", "--method", "fairmap", "--out", str(b / "run" / "run.json")],
    "quality reference of non-images": lambda b, t: ["quality", str(b / "run"), "--reference", str(b / "fake")],
    "check a schema-1 reference": lambda b, t: ["check", str(b / "run"), "--against",
                                                _config(t, b'{"schema_version": 1, "metrics": {}}')],
}


@pytest.mark.parametrize("case", list(RUN_CASES))
def test_on_finished_runs_one_line_exit_2_and_nothing_written(finished, tmp_path, capsys, case):
    argv = RUN_CASES[case](finished, tmp_path)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    assert main(argv) == 2, case
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    if "typo" in case:
        assert "Did you mean" in err[0]
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


@pytest.mark.parametrize("case", list(CASES))
def test_one_line_exit_2_and_nothing_written(tmp_path, capsys, case):
    argv = CASES[case](tmp_path)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    out = tmp_path / "out"
    if argv[0] == "run":
        argv += ["--out", str(out)]
    assert main(argv) == 2, case
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "Traceback" not in err[0], err
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


def _model_folder(tmp_path: Path, kind: str, tiny_sd: Path) -> str:
    import shutil

    folder = tmp_path / kind
    if kind == "truncated index":
        folder.mkdir()
        (folder / "model_index.json").write_text('{"_class_name": "Stable')
    elif kind == "index is a list":
        folder.mkdir()
        (folder / "model_index.json").write_text("[1, 2]")
    elif kind == "synthface index without unet":
        from fairbench.synthface.pipeline import ASSETS

        folder.mkdir()
        shutil.copy(ASSETS / "model_index.json", folder)
        shutil.copytree(ASSETS / "scheduler", folder / "scheduler")
    elif kind == "unet stored as .bin":
        import torch
        from safetensors.torch import load_file

        shutil.copytree(tiny_sd, folder)
        weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
        torch.save(load_file(weights), folder / "unet" / "diffusion_pytorch_model.bin")
        weights.unlink()
    elif kind == "hub id not cached":
        return "fairbench-tests/no-such-model"
    return str(folder)


@pytest.mark.parametrize("kind", ["truncated index", "index is a list", "synthface index without unet",
                                  "unet stored as .bin", "hub id not cached"])
def test_broken_model_folders_are_one_line_errors(tiny_sd, tmp_path, capsys, kind):
    model = _model_folder(tmp_path, kind, tiny_sd)
    assert main([*RUN, "--model", model, "--steps", "2", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    assert not (tmp_path / "out").exists()


def _weights(tmp_path: Path, kind: str) -> Path:
    import pickle

    import torch

    path = tmp_path / "weights.pt"
    if kind == "not a state dict":
        torch.save([1, 2, 3], path)
    elif kind == "pickle weights_only refuses":
        path.write_bytes(pickle.dumps(Path("x")))  # an arbitrary object: refused by weights_only
    elif kind == "garbage":
        path.write_bytes(b"garbage")
    return path


@pytest.mark.parametrize("kind", ["not a state dict", "pickle weights_only refuses", "garbage"])
def test_bad_fairface_and_inception_weights_are_one_line_errors(finished, tmp_path, capsys, kind):
    weights = _weights(tmp_path, kind)
    assert main([*RUN, "--classifier", "fairface", "--classifier-arg", f"weights={weights}",
                 "--out", str(tmp_path / "out")]) == 2
    assert main(["quality", str(finished / "run"), "--reference", str(finished / "run"), "--extractor", "inception",
                 "--extractor-arg", f"weights={weights}", "--extractor-arg", "sha256="]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(e.startswith("error: ") for e in err), err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("broken", ["json", "safetensors"])
def test_a_broken_fair_mapping_checkpoint_is_a_one_line_error(tmp_path, capsys, broken):
    ck = tmp_path / "ck"
    ck.mkdir()
    (ck / "mapping.json").write_text("{broken" if broken == "json" else '{"dim": 384, "depth": 2, "config": {}}')
    (ck / "mapping.safetensors").write_bytes(b"garbage")
    assert main([*RUN, "--method", "fairmap", "--method-arg", f"checkpoint={ck}", "--no-baseline",
                 "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "mapping." in err[0], err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("size", ["7", "100000"])
def test_an_impossible_image_size_is_refused_before_generation(tiny_sd, tmp_path, capsys, size):
    assert main([*RUN, "--model", str(tiny_sd), "--steps", "2", "--height", size, "--out", str(tmp_path / "o")]) == 2
    assert "multiple of" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
