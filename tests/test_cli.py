"""The command line: bad input gives one line and exit 2; run outputs, config, report, leaderboard."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from conftest import run_args
from fairbench.cli.main import main


@pytest.fixture(scope="module")
def finished_run(tiny_sd, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "run"
    assert main(run_args(tiny_sd, out, "--n", "2", "--limit", "3")) == 0
    return out


def _bad_cases(tmp: Path, tiny_sd: Path) -> dict[str, tuple[list[str], str]]:
    bad_yaml = tmp / "bad.yaml"
    bad_yaml.write_text("n: [4\nmethod: vanilla\n")
    not_a_dir = tmp / "file.txt"
    not_a_dir.write_text("x")
    empty_model = tmp / "empty-model"
    empty_model.mkdir()
    base = ["--no-progress", "--steps", "1", "--n", "1", "--limit", "1"]
    return {
        "unknown method": (["run", "--method", "fairmpa", "--model", str(tiny_sd), *base], "unknown method 'fairmpa'"),
        "unknown model": (["run", "--model", "sd99", *base], "unknown model 'sd99'"),
        "model folder without pipeline": (["run", "--model", str(empty_model), *base], "no model_index.json"),
        "unknown suite": (["run", "--suite", "occupatons", "--model", str(tiny_sd), *base], "Did you mean occupations"),
        "unknown classifier": (["run", "--classifier", "fairfce", "--model", str(tiny_sd), *base], "unknown classifier"),
        "malformed yaml": (["run", "--config", str(bad_yaml), *base], "malformed YAML"),
        "missing config": (["run", "--config", str(tmp / "nope.yaml"), *base], "config file not found"),
        "missing weights": (["run", "--model", str(tiny_sd), "--classifier", "fairface", "--classifier-arg",
                             f"weights={tmp / 'missing.pt'}", *base], "fairface weights not found"),
        "n zero": (["run", "--model", str(tiny_sd), "--n", "0", "--no-progress"], "invalid value for n"),
        "n negative": (["run", "--model", str(tiny_sd), "--n", "-3", "--no-progress"], "invalid value for n"),
        "unwritable out": (["run", "--model", str(tiny_sd), "--out", str(not_a_dir / "run"), *base], "not writable"),
        "bad shard": (["run", "--model", str(tiny_sd), "--shard", "2/2", *base], "shard must be i/N"),
        "bad method arg": (["run", "--model", str(tiny_sd), "--method-arg", "strength", *base], "KEY=VALUE"),
        "unknown classifier arg": (["run", "--model", str(tiny_sd), "--classifier-arg", "foo=1", *base],
                                   "has no argument"),
        "bad flag": (["run", "--nn", "3"], "unrecognized arguments"),
        "report of missing dir": (["report", str(tmp / "nowhere")], "run directory not found"),
    }


def test_bad_input_one_line_exit_2(tiny_sd, tmp_path, capsys):
    for name, (argv, expected) in _bad_cases(tmp_path, tiny_sd).items():
        code = main(argv)
        err = capsys.readouterr().err.strip()
        assert code == 2, name
        assert err.startswith("error: ") and "\n" not in err, (name, err)
        assert expected in err, (name, err)
        assert "Traceback" not in err


def test_bad_input_in_a_real_process_has_no_traceback(tmp_path):
    res = subprocess.run([sys.executable, "-m", "fairbench", "run", "--method", "nope", "--n", "1"],
                         capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert res.returncode == 2
    assert res.stderr.strip().count("\n") == 0 and "Traceback" not in res.stderr
    assert "unknown method 'nope'" in res.stderr


def test_labels_parquet_has_per_image_rows(finished_run):
    labels = pd.read_parquet(finished_run / "labels.parquet")
    assert len(labels) == 6
    for col in ("key", "prompt_id", "face", "face_confidence", "box_x0", "gender", "p:gender:female",
                "gender_confidence", "gender_low_confidence", "nsfw"):
        assert col in labels.columns, col
    assert not labels["face"].any()  # random weights draw no faces; counted, never regenerated
    metrics = json.loads((finished_run / "metrics.json").read_text())
    assert metrics["no_face_rate"] == 1.0 and metrics["n_images"] == 6


def test_config_file_with_cli_override(tiny_sd, tmp_path):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(f"model: {tiny_sd}\nn: 2\nlimit: 2\nsteps: 1\nseed: 3\nprogress: false\nn_boot: 20\n")
    out = tmp_path / "cfgrun"
    assert main(["run", "--config", str(cfg), "--seed", "0", "--out", str(out)]) == 0
    spec = json.loads((out / "run.json").read_text())["spec"]
    assert spec["seed"] == 0 and spec["n"] == 2 and spec["steps"] == 1  # flag beat YAML; YAML beat defaults


def test_classify_relabels_without_regenerating(finished_run, tmp_path):
    import shutil

    run = tmp_path / "relabel"
    shutil.copytree(finished_run, run)
    before = {p: p.stat().st_mtime_ns for p in (run / "images").rglob("*.png")}
    manifest_before = (run / "manifest.jsonl").read_text()
    assert main(["classify", str(run), "--classifier", "agegender", "--no-progress"]) == 0
    assert {p: p.stat().st_mtime_ns for p in (run / "images").rglob("*.png")} == before
    assert (run / "manifest.jsonl").read_text() == manifest_before
    assert json.loads((run / "run.json").read_text())["classifier"]["name"] == "agegender"


def test_report_and_leaderboard(finished_run, tmp_path):
    assert main(["report", str(finished_run)]) == 0
    text = (finished_run / "report.md").read_text()
    assert "# fairbench report: vanilla" in text and "no-face rate: 100.0%" in text
    out = tmp_path / "lb.csv"
    assert main(["leaderboard", str(finished_run), "--out", str(out)]) == 0
    df = pd.read_csv(out)
    assert set(df["attribute"]) >= {"gender", "age"}
    assert {"schema_version", "method", "n_faces", "no_face_rate", "fd", "fd_ci_low", "fd_ci_high"} <= set(df.columns)
    assert (df["schema_version"] == 3).all()
    assert {"bias_gap_floor", "bias_gap_corrected", "bias_gap_corrected_ci_low", "bias_gap_bias_bound",
            "n_skewed", "n_tested"} <= set(df.columns)
    assert len(df) == df["attribute"].nunique()
    assert main(["leaderboard", str(finished_run), str(finished_run), "--out", str(out)]) == 2  # listed twice


@pytest.mark.parametrize("kind", ["methods", "models", "suites", "classifiers", "detectors", "metrics", "extractors",
                                  "encoders", "attributes"])
def test_ls(kind, capsys):
    assert main(["ls", kind]) == 0
    out = capsys.readouterr().out
    expected = {"methods": "vanilla", "models": "sd15", "suites": "occupations", "classifiers": "fairface",
                "detectors": "mtcnn", "metrics": "kl", "extractors": "inception", "encoders": "clip-b32", "attributes": "race7"}[kind]
    assert expected in out


def test_make_tiny_sd_loads_offline(tmp_path):
    from fairbench.models import load_backend

    assert main(["make-tiny-sd", str(tmp_path / "tiny")]) == 0
    backend = load_backend(str(tmp_path / "tiny"))
    cond = backend.encode(["a photo of the face of a nurse"])
    assert cond.prompt_embeds.shape == (1, 77, 32) and cond.negative_prompt_embeds.shape == (1, 77, 32)
    assert backend.default_resolution() == 32


@pytest.mark.parametrize("arch, pipeline, states, pooled", [("sd2", "StableDiffusionPipeline", 32, None),
                                                            ("sdxl", "StableDiffusionXLPipeline", 64, 32),
                                                            ("sd3", "StableDiffusion3Pipeline", None, None)])
def test_make_tiny_sd_every_architecture_loads_offline(tmp_path, arch, pipeline, states, pooled):
    from fairbench.models import load_backend

    assert main(["make-tiny-sd", str(tmp_path / "tiny"), "--arch", arch]) == 0
    backend = load_backend(str(tmp_path / "tiny"))
    assert type(backend.pipe).__name__ == pipeline
    cond = backend.encode(["a photo of the face of a nurse"])
    if states is None:  # a pipeline fairbench conditions by its prompt only
        assert backend.arch == "other" and cond.prompt_embeds is None and cond.texts == ["a photo of the face of a nurse"]
    else:
        assert cond.prompt_embeds.shape == (1, 77, states)
        assert (cond.pooled is None) == (pooled is None) and (pooled is None or cond.pooled.shape == (1, pooled))
    if arch == "sd2":
        assert backend.pipe.scheduler.config.prediction_type == "v_prediction"
    assert backend.default_resolution() == 32


def _fake_run(d: Path, method: str, args: dict, suite: str, adherence: dict | None = None) -> Path:
    d.mkdir(parents=True)
    (d / "run.json").write_text(json.dumps({
        "spec": {"method": method, "method_args": args, "model": "synthface", "split": "test", "n": 4, "seed": 0},
        "suite": {"name": suite}, "method": {"level": "none"}, "status": "complete"}))
    est = {"value": 0.5, "ci_low": 0.4, "ci_high": 0.6, "floor": 0.375,
           "corrected": {"value": 0.45, "ci_low": 0.2, "ci_high": 0.7, "bias_bound": 0.05}}
    res = {"groups": ["a", "b"], "per_prompt": [], "n_prompts_with_faces": 2, "n_images": 8, "n_faces": 8,
           "no_face_rate": 0.0,
           "aggregate": {"fd": est, "bias_gap": est, "kl": est}, "skew_test": {"n_skewed": 1, "n_tested": 2}}
    metrics = {"schema_version": 2, "attributes": {"gender": res, "skin_tone": res, "age2": res},
               "n_images": 8, "n_faces": 8, "no_face_rate": 0.0,
               "classifier": "synthface", "settings": {"n_boot": 10, "level": 0.95, "seed": 0}}
    if adherence:
        metrics["adherence"] = adherence
    (d / "metrics.json").write_text(json.dumps(metrics))
    return d


def test_leaderboard_joins_explicit_adherence_by_method_identity(tmp_path):
    adh = {"gender": {"value": 0.9, "ci_low": 0.8, "ci_high": 0.95, "n": 40}}
    runs = [_fake_run(tmp_path / "a", "vanilla", {}, "occupations"),
            _fake_run(tmp_path / "b", "hardprompt", {"attributes": "gender"}, "occupations")]
    explicit = [_fake_run(tmp_path / "ea", "vanilla", {}, "explicit", adh),
                _fake_run(tmp_path / "eb", "hardprompt", {"attributes": "gender,skin_tone"}, "explicit", adh)]
    out = tmp_path / "lb.csv"
    md = tmp_path / "lb.md"
    assert main(["leaderboard", *map(str, runs), "--out", str(out), "--attributes", "gender,skin_tone",
                 "--explicit", *map(str, explicit), "--markdown", str(md)]) == 0
    assert "| gender" in md.read_text() and "0.900 [0.800, 0.950]" in md.read_text()
    # corrected first, the plug-in beside it with its floor, and the skewed prompts
    assert "0.450 [0.200, 0.700]" in md.read_text() and "0.500 [0.400, 0.600] (0.375)" in md.read_text()
    assert "1 of 2" in md.read_text()
    df = pd.read_csv(out)
    assert set(df["attribute"]) == {"gender", "skin_tone"} and len(df) == 4
    van, hard = df[df["method"] == "vanilla"], df[df["method"] == "hardprompt"]
    assert (van["adherence:gender"] == 0.9).all() and (van["adherence_run"] == "ea").all()
    assert hard["adherence:gender"].isna().all()  # different method arguments: not paired
    assert main(["leaderboard", str(runs[0]), "--out", str(out), "--explicit", str(runs[1])]) == 2


def test_leaderboard_joins_the_adherence_of_several_suites_and_refuses_one_attribute_twice(tmp_path):
    """The explicit suite's groups and the emotions suite's expressions join one method's rows; two runs
    that both measure gender adherence for one method are refused."""
    run = _fake_run(tmp_path / "a", "vanilla", {}, "occupations")
    explicit = _fake_run(tmp_path / "ea", "vanilla", {}, "explicit",
                         {"gender": {"value": 0.9, "ci_low": 0.8, "ci_high": 0.95, "n": 40}})
    emotions = _fake_run(tmp_path / "em", "vanilla", {}, "emotions",
                         {"expression": {"value": 0.7, "ci_low": 0.6, "ci_high": 0.8, "n": 40}})
    out = tmp_path / "lb.csv"
    assert main(["leaderboard", str(run), "--out", str(out), "--explicit", str(explicit), str(emotions)]) == 0
    df = pd.read_csv(out)
    assert (df["adherence:gender"] == 0.9).all() and (df["adherence:expression"] == 0.7).all()
    assert (df["adherence_run"] == "ea+em").all()
    again = _fake_run(tmp_path / "eb", "vanilla", {}, "explicit",
                      {"gender": {"value": 0.5, "ci_low": 0.4, "ci_high": 0.6, "n": 40}})
    assert main(["leaderboard", str(run), "--out", str(tmp_path / "x.csv"), "--explicit", str(explicit),
                 str(again)]) == 2
    assert not (tmp_path / "x.csv").exists()


def test_writable_check_is_safe_for_concurrent_processes(tmp_path):
    # every process of an `accelerate launch` checks the run folder at the same moment
    from concurrent.futures import ThreadPoolExecutor

    from fairbench.io import ensure_writable_dir

    with ThreadPoolExecutor(8) as pool:
        done = list(pool.map(lambda _: ensure_writable_dir(tmp_path), range(400)))
    assert done == [tmp_path] * 400
    assert list(tmp_path.iterdir()) == []


def test_tables_are_not_wrapped_at_80_columns_in_logs(capsys):
    # CI logs and `> run.log` are no terminal; rich would wrap every table at 80 columns there
    assert main(["ls", "methods"]) == 0
    lines = capsys.readouterr().out.splitlines()
    row = next(line for line in lines if " fairdiffusion " in line)
    assert "guidance" in row and len(row) > 80


def test_atomic_save_tensors_round_trips_and_leaves_no_temp_file(tmp_path):
    import torch
    from safetensors.torch import load_file

    from fairbench.io import atomic_save_tensors

    w = torch.arange(6.0).view(2, 3).t()  # non-contiguous, like a transposed weight
    atomic_save_tensors(tmp_path / "m.safetensors", {"w": w})
    assert torch.equal(load_file(tmp_path / "m.safetensors")["w"], w)
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]


@pytest.mark.parametrize("native", [True, False])
def test_dtype_default_is_the_models_on_this_device(native, tiny_sd, monkeypatch):
    import fairbench.models as models
    from fairbench.config import RunConfig

    monkeypatch.setattr(models, "native_bfloat16", lambda device: native)
    assert RunConfig(model="synthface").with_model_defaults().dtype == ("bfloat16" if native else "float32")
    assert RunConfig(model=str(tiny_sd)).with_model_defaults().dtype == "float32"  # SD: float32 everywhere
    assert RunConfig(model="synthface", dtype="float32").with_model_defaults().dtype == "float32"  # as asked


def test_another_fairbench_package_in_the_way_is_named(monkeypatch, capsys):
    import types

    import fairbench_t2i_cli

    impostor = types.ModuleType("fairbench")
    impostor.__file__ = "/site-packages/fairbench/__init__.py"
    monkeypatch.setitem(sys.modules, "fairbench", impostor)
    assert fairbench_t2i_cli.main() == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not fairbench-t2i" in err[0] and "/site-packages/fairbench" in err[0]


def test_the_distribution_name_is_our_own():
    from importlib.metadata import version

    import fairbench
    from fairbench.outputs.rundir import library_versions

    assert fairbench.DISTRIBUTION == "fairbench-t2i" and version("fairbench-t2i") == fairbench.__version__
    assert library_versions()["fairbench-t2i"] == fairbench.__version__


def test_the_leaderboard_shows_a_reference_inside_the_working_directory_relative_to_it(tmp_path, monkeypatch):
    from fairbench.outputs.leaderboard import run_level_columns

    monkeypatch.chdir(tmp_path)
    quality = lambda ref: {"quality": {"FD_x": {"fd": 1.0, "kid": 0.0, "reference": ref}}}  # noqa: E731
    inside = str(tmp_path / "runs" / "vanilla-test")
    assert run_level_columns(quality(inside))["quality:FD_x:reference"] == str(Path("runs") / "vanilla-test")
    outside = str(tmp_path.parent / "elsewhere")  # kept as recorded: no relative path climbs out of the folder
    assert run_level_columns(quality(outside))["quality:FD_x:reference"] == outside
    assert run_level_columns(quality("runs/v"))["quality:FD_x:reference"] == "runs/v"
