"""User mistakes are one line on stderr, exit 2, no traceback, and nothing written."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from fairbench.cli.main import main as fairbench_main
from lab.synthface.cli import main as lab_main


def main(argv: list[str]) -> int:
    """fairbench's command line, or the world-building lab's for argv starting with "synthface"."""
    return lab_main(argv[1:]) if argv[:1] == ["synthface"] else fairbench_main(argv)

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
    # names and numbers of `run`
    "run method typo": lambda t: [*RUN, "--method", "fairmp"],
    "run model typo": lambda t: [*RUN, "--model", "synthfac"],
    "run suite typo": lambda t: [*RUN, "--suite", "ocupations"],
    "run classifier typo": lambda t: [*RUN, "--classifier", "synthfac"],
    "run detector typo": lambda t: [*RUN, "--detector", "mtcn"],
    "run limit 0": lambda t: [*RUN, "--limit", "0"],
    "run n 0": lambda t: ["run", "--n", "0", "--limit", "1"],
    "run steps 0": lambda t: [*RUN, "--steps", "0"],
    "run batch size 0": lambda t: [*RUN, "--batch-size", "0"],
    "run shard 3/2": lambda t: [*RUN, "--shard", "3/2"],
    "run shard not i/N": lambda t: [*RUN, "--shard", "x"],
    "run negative guidance": lambda t: [*RUN, "--guidance-scale", "-1"],
    "run ci-level 2": lambda t: [*RUN, "--ci-level", "2"],
    "run n-boot 0": lambda t: [*RUN, "--n-boot", "0"],
    "run negative seed": lambda t: [*RUN, "--seed", "-1"],
    "run reference missing": lambda t: [*RUN, "--reference", str(t / "nope")],
    "run unknown flag": lambda t: ["run", "--nn", "3"],
    # method and classifier arguments, bound against the constructor's signature
    "method-arg without =": lambda t: [*RUN, "--method-arg", "steps"],
    "method-arg of the wrong type": lambda t: [*RUN, "--method", "fairmap", "--method-arg", "attributes=5"],
    "method-arg name typo": lambda t: [*RUN, "--method", "uce", "--method-arg", "lamda=1"],
    "method-arg bool for a float": lambda t: [*RUN, "--method", "fairmap", "--method-arg", "lr=true"],
    "method-arg for a method without arguments": lambda t: [*RUN, "--method-arg", "a=1"],
    "classifier-arg name typo": lambda t: [*RUN, "--classifier-arg", "weigths=x"],
    "method-arg NaN": lambda t: [*RUN, "--method", "fairmap", "--method-arg", "lr=.nan"],
    "method-arg infinite": lambda t: [*RUN, "--method", "fairmap", "--method-arg", "lambda_fair=.inf"],
    "method-arg negative width": lambda t: [*RUN, "--method", "fairmap", "--method-arg", "hidden=-5"],
    "method-arg steps beyond any budget": lambda t: [*RUN, "--method", "fairmap", "--method-arg", "steps=1000000000000"],
    "method-arg epochs beyond any budget": lambda t: [*RUN, "--method", "itigen", "--method-arg", "epochs=1000000000000"],
    "method-arg no images to learn from": lambda t: [*RUN, "--method", "uce", "--method-arg", "images_per_concept=0"],
    "method-arg no training steps": lambda t: [*RUN, "--method", "finetune", "--method-arg", "max_steps=0"],
    # suite files
    "suite template positional field": lambda t: [*RUN, "--suite", _suite(t, "{0} {occupation}")],
    "suite template unmatched brace": lambda t: [*RUN, "--suite", _suite(t, "a photo of { {occupation}")],
    "suite template attribute access": lambda t: [*RUN, "--suite", _suite(t, "{occupation.__class__.__mro__}")],
    "suite template unknown variable": lambda t: [*RUN, "--suite", _suite(t, "a photo of a {job}")],
    "suite id with a trailing newline": lambda t: [*RUN, "--suite", _suite(t, "a {occupation}", ("nurse\n",))],
    "suite ids that differ in case": lambda t: [*RUN, "--suite", _suite(t, "a {occupation}", ("nurse", "Nurse"))],
    "suite duplicate ids": lambda t: [*RUN, "--suite", _suite(t, "a {occupation}", ("nurse", "nurse"))],
    "suite id that is a path": lambda t: [*RUN, "--suite", _suite(t, "a {occupation}", ("../x",))],
    "suite truncated YAML": lambda t: [*RUN, "--suite", _config(t, b"name: [s\n")],
    "suite file missing": lambda t: [*RUN, "--suite", str(t / "nope.yaml")],
    "suite variable named a": lambda t: [*RUN, "--suite", _config(
        t, b'name: s\ntemplate: "{a} {a}"\nprompts:\n  - id: p\n    vars: {a: nurse}\n')],
    "suite requests a group its attribute lacks": lambda t: [*RUN, "--suite", _config(
        t, b'name: s\ntemplate: "{x}"\nprompts:\n  - id: p\n    vars: {x: nurse}\n    requested: {gender: alien}\n')],
    "suite requests an attribute that is not defined": lambda t: [*RUN, "--suite", _config(
        t, b'name: s\ntemplate: "{x}"\nprompts:\n  - id: p\n    vars: {x: nurse}\n    requested: {mood: calm}\n')],
    # train and synthface
    "train a method with nothing to train": lambda t: ["train", "--method", "vanilla", "--out", str(t / "ck")],
    "train steps 0": lambda t: ["train", "--method", "fairmap", "--method-arg", "steps=0", "--out", str(t / "ck")],
    "train suite typo": lambda t: ["train", "--method", "fairmap", "--suite", "ocupations", "--out", str(t / "ck")],
    "synthface train-classifier steps 0": lambda t: ["synthface", "train-classifier", "--steps", "0",
                                                     "--out", str(t / "c")],
    "synthface install from a missing folder": lambda t: ["synthface", "install", "--model-dir", str(t / "nope")],
    "synthface grid of a missing model": lambda t: ["synthface", "grid", "--model", str(t / "nope"),
                                                    "--out", str(t / "g.png")],
    "synthface subcommand typo": lambda t: ["synthface", "trian"],
    "synthface train lr -1": lambda t: ["synthface", "train", "--lr", "-1", "--out", str(t / "st")],
    "synthface train lr NaN": lambda t: ["synthface", "train", "--lr", "nan", "--out", str(t / "st")],
    "synthface train neutral share 2": lambda t: ["synthface", "train", "--neutral-share", "2", "--out", str(t / "st")],
    "synthface train-clip warmup -1": lambda t: ["synthface", "train-clip", "--warmup", "-1", "--out", str(t / "c")],
    "synthface grid without --out": lambda t: ["synthface", "grid", "--n", "2"],
    "synthface train expression share 1.5": lambda t: ["synthface", "train", "--expressions", "--expression-share",
                                                       "1.5", "--out", str(t / "u")],
    "synthface train-clip from a missing folder": lambda t: ["synthface", "train-clip", "--init-from", str(t / "nope"),
                                                             "--out", str(t / "c")],
    "synthface train-clip negative hard negatives": lambda t: ["synthface", "train-clip", "--hard-negatives", "-1",
                                                               "--out", str(t / "c")],
    "synthface train-clip image tower from a missing classifier": lambda t: [
        "synthface", "train-clip", "--image-init", str(t / "nope"), "--out", str(t / "c")],
    "synthface train-clip unknown classifier body": lambda t: [
        "synthface", "train-clip", "--image-bodies", "body,head", "--out", str(t / "c")],
    "synthface train-clip bodies without a classifier": lambda t: [
        "synthface", "train-clip", "--image-bodies", "body,expression_body", "--out", str(t / "c")],
    "synthface train-clip the default body named without a classifier": lambda t: [
        "synthface", "train-clip", "--image-bodies", "expression_body", "--out", str(t / "c")],
    # plans, references, weights
    "plan is a list": lambda t: ["plan", _config(t, b"[1, 2]")],
    "plan key typo": lambda t: ["plan", _plan(t, models="modles")],
    "plan method typo": lambda t: ["plan", _plan(t, methods="[{method: vanilla}, {method: fairmp}]"), "--dry-run"],
    "plan without methods": lambda t: ["plan", _plan(t, methods="[]")],
    "fetch-inception into a directory": lambda t: ["fetch-inception", str(t)],
    "fetch-inception over another file": lambda t: ["fetch-inception", _config(t, b"not inception")],
    "check against a missing reference": lambda t: ["check", str(t), "--against", str(t / "nope.json")],
}


def _suite(tmp_path: Path, template: str, ids: tuple[str, ...] = ("nurse",)) -> str:
    import json

    items = "".join(f"  - id: {json.dumps(i)}\n    vars: {{occupation: nurse}}\n" for i in ids)
    return _config(tmp_path, f'name: s\ntemplate: "{template}"\nprompts:\n{items}'.encode())


def _plan(tmp_path: Path, models: str = "models", method: str = "vanilla", methods: str | None = None) -> str:
    methods = methods or f"[{{method: {method}}}]"
    return _config(tmp_path, (f"name: p\nout: {tmp_path / 'plan'}\n{models}: [synthface]\n"
                              f"suites: [{{name: t, suite: occupations, n: 1, limit: 1}}]\nmethods: {methods}\n").encode())


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A small finished synthface run, and a copy whose metrics.json is empty."""
    base = tmp_path_factory.mktemp("bad-input")
    assert main([*RUN, "--limit", "2", "--out", str(base / "run")]) == 0
    assert main([*RUN, "--out", str(base / "other")]) == 0  # another --limit: does not pair with "run"
    (base / "broken").mkdir()
    (base / "broken" / "run.json").write_text((base / "run" / "run.json").read_text())
    (base / "broken" / "metrics.json").write_text("{}")
    shutil.copytree(base / "run", base / "thin")  # a metrics.json that lost its aggregates
    metrics = json.loads((base / "thin" / "metrics.json").read_text())
    for res in metrics["attributes"].values():
        del res["aggregate"]
    (base / "thin" / "metrics.json").write_text(json.dumps(metrics))
    shutil.copytree(base / "run", base / "thin-compare")  # a compare.json that lacks what `compare` writes
    (base / "thin-compare" / "compare.json").write_text('{"a": 1}')
    (base / "fake").mkdir()
    for name in ("a.png", "b.png"):
        (base / "fake" / name).write_text("not an image")
    return base


RUN_CASES = {
    "report of metrics without aggregates": lambda b, t: ["report", str(b / "thin")],
    "leaderboard of metrics without aggregates": lambda b, t: ["leaderboard", str(b / "thin"), "--out", str(t / "x.csv")],
    "compare metrics without aggregates": lambda b, t: ["compare", str(b / "thin"), "--baseline", str(b / "run")],
    "report of a compare.json without its fields": lambda b, t: ["report", str(b / "thin-compare")],
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
    "check a reference that is a list": lambda b, t: ["check", str(b / "run"), "--against", _config(t, b"[1, 2]")],
    "check a reference of strings": lambda b, t: ["check", str(b / "run"), "--against",
                                                  _config(t, b'{"schema_version": "x", "metrics": "y"}')],
    "check a reference without higher_is_better": lambda b, t: ["check", str(b / "run"), "--against",
                                                                _config(t, b'{"metrics": {"a": 1}}')],
    "check a reference of broken JSON": lambda b, t: ["check", str(b / "run"), "--against", _config(t, b'{"a":')],
    "check permutations 0": lambda b, t: ["check", str(b / "run"), "--against", str(b / "run"), "--permutations", "0"],
    "run extractor typo": lambda b, t: [*RUN, "--reference", str(b / "run"), "--extractor", "incepton",
                                        "--out", str(t / "o")],
    "run reference of one image": lambda b, t: [*RUN, "--reference", str(b / "run"), "--out", str(t / "o")],
    "merge a missing shard": lambda b, t: ["merge", str(t / "nope"), "--out", str(t / "m")],
    "merge a run that is not a shard": lambda b, t: ["merge", str(b / "run"), "--out", str(t / "m")],
    "merge into one of the shards": lambda b, t: ["merge", str(b / "run"), "--out", str(b / "run")],
    "classify a missing run": lambda b, t: ["classify", str(t / "nope"), "--classifier", "synthface"],
    "classify classifier typo": lambda b, t: ["classify", str(b / "run"), "--classifier", "synthfac"],
    "classify unknown classifier-arg": lambda b, t: ["classify", str(b / "run"), "--classifier", "synthface",
                                                     "--classifier-arg", "x=1"],
    "classify fairface without weights": lambda b, t: ["classify", str(b / "run"), "--classifier", "fairface"],
    "compare with a missing baseline": lambda b, t: ["compare", str(b / "run"), "--baseline", str(t / "nope")],
    "compare runs that do not pair": lambda b, t: ["compare", str(b / "run"), "--baseline", str(b / "other")],
    "compare extractor typo": lambda b, t: ["compare", str(b / "run"), "--baseline", str(b / "run"),
                                            "--extractor", "clipp"],
    "compare a folder that is not a run": lambda b, t: ["compare", str(t), "--baseline", str(b / "run")],
    "reference of a missing run": lambda b, t: ["reference", str(t / "nope"), "--out", str(t / "r.json")],
    "quality without reference or CLIP model": lambda b, t: ["quality", str(b / "run")],
    "quality extractor typo": lambda b, t: ["quality", str(b / "run"), "--reference", str(b / "run"),
                                            "--extractor", "incepton"],
    "quality reference missing": lambda b, t: ["quality", str(b / "run"), "--reference", str(t / "nope")],
    "quality of a missing run": lambda b, t: ["quality", str(t / "nope"), "--reference", str(b / "run")],
    "quality CLIP model not cached": lambda b, t: ["quality", str(b / "run"), "--clip-model", "fairbench-tests/none"],
    "report of a missing run": lambda b, t: ["report", str(t / "nope")],
    "report with a missing baseline": lambda b, t: ["report", str(b / "run"), "--baseline", str(t / "nope")],
    "report of a folder that is not a run": lambda b, t: ["report", str(t)],
    "leaderboard of a missing run": lambda b, t: ["leaderboard", str(t / "nope"), "--out", str(t / "x.csv")],
    "make-tiny-sd over a file": lambda b, t: ["make-tiny-sd", str(b / "run" / "run.json")],
}




def _damaged(b: Path, t: Path, edit) -> str:
    """A copy of the finished run, damaged by `edit(run_dir)`."""
    d = t / "damaged"
    shutil.copytree(b / "run", d)
    edit(d)
    return str(d)


def _edit_json(name: str, change):
    def edit(d: Path) -> None:
        doc = json.loads((d / name).read_text())
        change(doc)
        (d / name).write_text(json.dumps(doc))
    return edit


def _edit_first_row(change):
    def edit(d: Path) -> None:
        lines = (d / "manifest.jsonl").read_text().splitlines(keepends=True)
        row = json.loads(lines[0])
        change(row)
        (d / "manifest.jsonl").write_text(json.dumps(row, sort_keys=True) + "\n" + "".join(lines[1:]))
    return edit


def _martian_labels(d: Path) -> None:
    import pandas as pd

    labels = pd.read_parquet(d / "labels.parquet")
    labels.loc[labels["face"].astype(bool), "gender"] = "martian"
    labels.to_parquet(d / "labels.parquet")


def _reference(b: Path, t: Path, change) -> str:
    assert main(["reference", str(b / "run"), "--out", str(t / "ref.json")]) == 0
    ref = json.loads((t / "ref.json").read_text())
    change(ref)
    (t / "ref.json").write_text(json.dumps(ref))
    return str(t / "ref.json")


def _stray_image(d: Path) -> None:
    first = sorted((d / "images").rglob("*.png"))[0]
    shutil.copy(first, first.with_name("99999.png"))


RUN_CASES.update({
    "run with an empty --out": lambda b, t: [*RUN, "--out", ""],
    "run with an empty --scheduler": lambda b, t: [*RUN, "--scheduler", "", "--out", str(t / "o")],
    "report with an empty --baseline": lambda b, t: ["report", str(b / "run"), "--baseline", ""],
    "run seed beyond 63 bits": lambda b, t: [*RUN, "--seed", str(2**64), "--out", str(t / "o")],
    "config value that a flag overrides is still checked": lambda b, t: [
        *RUN, "--config", _config(t, b"n: two\n"), "--out", str(t / "o")],
    "run extractor-arg unknown without a reference": lambda b, t: [*RUN, "--extractor-arg", "bogus=1",
                                                                  "--out", str(t / "o")],
    "report of metrics whose alignment is a string": lambda b, t: ["report", _damaged(
        b, t, _edit_json("metrics.json", lambda m: m.update(alignment="x")))],
    "reference of a manifest row with an unknown key": lambda b, t: ["reference", _damaged(
        b, t, _edit_first_row(lambda r: r.update(bogus=1))), "--out", str(t / "ref.json")],
    "compare of a manifest row whose seed is a string": lambda b, t: ["compare", _damaged(
        b, t, _edit_first_row(lambda r: r.update(seed="x"))), "--baseline", str(b / "run")],
    "reference of labels naming a group the classifier lacks": lambda b, t: [
        "reference", _damaged(b, t, _martian_labels), "--out", str(t / "ref.json")],
    "check a reference with an unknown key": lambda b, t: ["check", str(b / "run"), "--against", _reference(
        b, t, lambda r: r.update(bogus=1))],
    "check a reference with label codes out of range": lambda b, t: ["check", str(b / "run"), "--against", _reference(
        b, t, lambda r: r["units"].update(gender=[7] * len(r["units"]["gender"])))],
    "check a reference whose sha256 is not hex": lambda b, t: ["check", str(b / "run"), "--against", _reference(
        b, t, lambda r: r["units"].update(sha256=["zz"] * len(r["units"]["sha256"])))],
    "check permutations beyond the budget": lambda b, t: ["check", str(b / "run"), "--against", str(b / "run"),
                                                          "--permutations", "1000000000000"],
    "classify a shard": lambda b, t: ["classify", _damaged(b, t, _edit_json(
        "run.json", lambda r: r.update(status="shard generated"))), "--classifier", "synthface"],
    "resume into a run holding a stray image": lambda b, t: [*RUN, "--limit", "2", "--out", _damaged(b, t, _stray_image)],
    "resume into a run whose image is a folder": lambda b, t: [*RUN, "--limit", "2", "--out", _damaged(
        b, t, lambda d: (lambda img: (img.unlink(), img.mkdir()))(sorted((d / "images").rglob("*.png"))[0]))],
    "report of a compare.json that is a folder": lambda b, t: ["report", _damaged(
        b, t, lambda d: (d / "compare.json").mkdir())],
    "plan whose out is a file": lambda b, t: ["plan", _config(t, (
        f"name: p\nout: {b / 'run' / 'run.json'}\nmodels: [synthface-vl]\n"
        "suites: [{name: t, suite: occupations, n: 1, limit: 1}]\nmethods: [{method: vanilla}]\n").encode()),
        "--dry-run"],
    "plan of an unknown model": lambda b, t: ["plan", _config(t, (
        f"name: p\nout: {t / 'plan'}\nmodels: [nope]\nsuites: [{{name: t, suite: occupations, n: 1, limit: 1}}]\n"
        "methods: [{method: vanilla}]\n").encode()), "--dry-run"],
})


@pytest.mark.parametrize("case", list(RUN_CASES))
def test_on_finished_runs_one_line_exit_2_and_nothing_written(finished, tmp_path, capsys, case):
    argv = RUN_CASES[case](finished, tmp_path)
    files = lambda d: sorted(p.relative_to(d) for p in d.rglob("*"))  # a refused command leaves no lock file
    before, runs_before = files(tmp_path), files(finished)
    assert main(argv) == 2, case
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    if "typo" in case:
        assert "Did you mean" in err[0]
    assert files(tmp_path) == before and files(finished) == runs_before


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


@pytest.fixture
def read_only(monkeypatch):
    """Make a folder behave as on a read-only mount: access() denies writing, creating a file fails with EROFS."""
    import errno
    import os
    import tempfile

    frozen: list[Path] = []

    def inside(path) -> bool:
        return any(Path(path).resolve().is_relative_to(f) for f in frozen)

    real_access, real_open, real_mkstemp = os.access, os.open, tempfile.mkstemp
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if mode & os.W_OK and inside(p)
                        else real_access(p, mode, **kw))

    def deny_open(path, flags, *args, **kwargs):
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT) and inside(path):
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real_open(path, flags, *args, **kwargs)

    def deny_mkstemp(*args, dir=None, **kwargs):
        if dir is not None and inside(dir):
            raise OSError(errno.EROFS, "Read-only file system", str(dir))
        return real_mkstemp(*args, dir=dir, **kwargs)

    monkeypatch.setattr(os, "open", deny_open)
    monkeypatch.setattr(tempfile, "mkstemp", deny_mkstemp)
    return lambda path: frozen.append(Path(path).resolve())


READ_ONLY = {
    "classify": lambda r: ["classify", str(r), "--classifier", "synthface"],
    "report": lambda r: ["report", str(r)],
    "quality": lambda r: ["quality", str(r), "--reference", str(r)],
    "compare": lambda r: ["compare", str(r), "--baseline", str(r)],
    "run (resume)": lambda r: [*RUN, "--limit", "2", "--out", str(r)],
}


@pytest.mark.parametrize("command", list(READ_ONLY))
def test_a_read_only_run_directory_is_a_one_line_error_and_unchanged(finished, tmp_path, capsys, read_only, command):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(finished / "run", run)
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    read_only(run)
    assert main(READ_ONLY[command](run)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and str(run) in err[0], err
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before


def test_an_out_that_is_a_link_or_a_folder_of_other_files_or_too_long_a_name_is_refused(tmp_path, capsys):
    outside = tmp_path / "outside"
    outside.mkdir()
    (tmp_path / "link").symlink_to(outside)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("my work")
    for out, says in ((tmp_path / "link", "symbolic link"), (mine, "folder of other files"),
                      (tmp_path / ("x" * 300), "more than a file system allows")):
        assert main([*RUN, "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and says in err[0], err
    assert list(outside.iterdir()) == [] and [p.name for p in mine.iterdir()] == ["thesis.tex"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link", "mine", "outside"]


def _bomb_png(side: int) -> bytes:
    """A PNG header that claims side x side pixels (PIL refuses it by its size, before decoding anything)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    raw = zlib.compress(b"\x00" * (side + 1))  # one row: the size alone makes it a bomb
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", raw) + chunk(b"IEND", b""))


@pytest.mark.parametrize("kind", ["decompression bomb", "NUL in a name", "newline in a name"])
def test_score_refuses_a_bomb_and_control_characters_in_names(tmp_path, capsys, kind):
    images = tmp_path / "imgs"
    images.mkdir()
    if kind == "decompression bomb":
        (images / "a.png").write_bytes(_bomb_png(20_000))  # 400 M pixels: more than twice PIL's limit
        name = "a.png"
    else:
        name = "a\x00.png" if kind == "NUL in a name" else "a\n.png"
    (tmp_path / "p.jsonl").write_text(json.dumps({"image": name, "prompt_id": "nurse", "prompt": "a nurse"}) + "\n")
    before = sorted(tmp_path.rglob("*"))
    assert main(["score", str(images), "--prompts", str(tmp_path / "p.jsonl"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    assert sorted(tmp_path.rglob("*")) == before
