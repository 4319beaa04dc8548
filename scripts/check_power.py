"""Measure `fairbench check` at the CI size (12 prompts x 8 images): how often it fails real changes
and passes noise.

Changes are injected at the image level, as if the model had drawn them: an image of a prompt is
replaced by a copy of another image of the same prompt (or a face-less image), the manifest's sha256
is updated, and the run is re-labelled with `fairbench classify`. Cases:
- fail: 8 of 96 faces moved toward each prompt's majority gender; 8 toward light skin; 6 images
  without a face; a classifier whose outputs are coin flips (10 draws each);
- pass: the unchanged run; the same run at another batch size; in bfloat16 against the float32
  reference; and, for 10 global seeds, a float32 run against a bfloat16 reference of the same seed.

Usage: python scripts/check_power.py --out DIR [--draws 10] [--seeds 10]
Writes DIR/check_power.json and DIR/check_power.md (and the runs it made under DIR/runs).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import shutil
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pandas as pd
from PIL import Image

from fairbench.cli.main import main
from fairbench.io import read_jsonl, sha256_file, write_jsonl

CI_ARGS = ["--method", "vanilla", "--n", "8", "--limit", "12", "--no-progress"]


def quiet(argv: list[str]) -> int:
    """Run a fairbench command in-process with its output swallowed; return its exit code."""
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        return main(argv)


def make_run(out: Path, *extra: str) -> Path:
    """A CI-size synthface run (resumes when it exists)."""
    assert quiet(["run", *CI_ARGS, "--out", str(out), *extra]) == 0, f"run failed: {out}"
    return out


def replace_images(run: Path, dest: Path, replacements: dict[str, Image.Image | str]) -> Path:
    """Copy `run` to `dest`, put new images at the given unit keys (an image, or the key of an image to
    copy), update their manifest sha256, and re-label the run with `fairbench classify`."""
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(run, dest)
    rows = read_jsonl(dest / "manifest.jsonl")
    by_key = {r["key"]: r for r in rows}
    for key, new in replacements.items():
        target = dest / by_key[key]["image"]
        if isinstance(new, str):
            shutil.copyfile(run / by_key[new]["image"], target)
        else:
            new.save(target)
        by_key[key]["sha256"] = sha256_file(target)
    write_jsonl(dest / "manifest.jsonl", rows)
    assert quiet(["classify", str(dest), "--classifier", "synthface", "--no-progress"]) == 0
    return dest


def toward(labels: pd.DataFrame, attr: str, group: Callable[[pd.DataFrame], str], k: int,
           rng: np.random.Generator) -> dict[str, str]:
    """k units not in their prompt's target group, each to be replaced by an image of that group from its prompt."""
    moves: list[tuple[str, str]] = []
    for pid, sub in labels[labels["face"]].groupby("prompt_id"):
        want = group(sub)
        donors, targets = sub[sub[attr] == want]["key"].tolist(), sub[sub[attr] != want]["key"].tolist()
        if donors:
            moves += [(t, str(rng.choice(donors))) for t in targets]
    pick = rng.choice(len(moves), size=min(k, len(moves)), replace=False)
    return {moves[i][0]: moves[i][1] for i in pick}


def majority_gender(sub: pd.DataFrame) -> str:
    """The prompt's majority gender label (ties: the first in sorted order)."""
    counts = sub["gender"].value_counts()
    return sorted(counts[counts == counts.max()].index)[0]


def faceless(labels: pd.DataFrame, run: Path, k: int, rng: np.random.Generator) -> dict[str, Image.Image]:
    """k units whose image becomes a flat field of its own background colour (no face)."""
    keys = rng.choice(labels["key"].to_numpy(), size=k, replace=False)
    out = {}
    for key in keys:
        with Image.open(run / labels.set_index("key").loc[key, "image"]) as im:
            rgb = im.convert("RGB")
            out[str(key)] = Image.new("RGB", rgb.size, rgb.getpixel((0, 0)))
    return out


@contextlib.contextmanager
def coin_flip_classifier(seed: int) -> Iterator[None]:
    """Make the synthface classifier's outputs coin flips (same name, random one-hot labels)."""
    from fairbench.synthface.labellers import SynthFaceClassifier

    original = SynthFaceClassifier.predict
    rng = np.random.default_rng(seed)

    def predict(self, crops):  # noqa: ANN001
        real = original(self, crops)
        return {k: np.eye(v.shape[1])[rng.integers(0, v.shape[1], size=len(v))] for k, v in real.items()}

    SynthFaceClassifier.predict = predict
    try:
        yield
    finally:
        SynthFaceClassifier.predict = original


def check(run: Path, ref: Path) -> int:
    """Exit code of `fairbench check run --against ref`."""
    return quiet(["check", str(run), "--against", str(ref)])


def injection(kind: str, run: Path, labels: pd.DataFrame, dest: Path, draw: int) -> Path:
    """One injected copy of `run` (see the module docstring)."""
    rng = np.random.default_rng(1000 + draw)
    if kind == "gender toward majority (8)":
        return replace_images(run, dest, toward(labels, "gender", majority_gender, 8, rng))
    if kind == "skin toward light (8)":
        return replace_images(run, dest, toward(labels, "skin_tone", lambda s: "light", 8, rng))
    if kind == "no face (6)":
        return replace_images(run, dest, faceless(labels, run, 6, rng))
    if kind == "coin-flip classifier":
        if dest.exists():
            shutil.rmtree(dest)
        shutil.copytree(run, dest)
        with coin_flip_classifier(draw):
            assert quiet(["classify", str(dest), "--classifier", "synthface", "--no-progress"]) == 0
        return dest
    raise ValueError(kind)


FAIL_CASES = ("gender toward majority (8)", "skin toward light (8)", "no face (6)", "coin-flip classifier")


def measure(out: Path, draws: int, seeds: int) -> dict:
    """Pass and fail counts of every case."""
    runs = out / "runs"
    base = make_run(runs / "f32", "--dtype", "float32")
    ref = out / "reference.json"
    assert quiet(["reference", str(base), "--out", str(ref)]) == 0
    labels = pd.read_parquet(base / "labels.parquet")
    result: dict[str, dict] = {}
    for kind in FAIL_CASES:
        codes = [check(injection(kind, base, labels, runs / "injected", d), ref) for d in range(draws)]
        result[kind] = {"expect": "fail", "fails": codes.count(1), "passes": codes.count(0), "draws": draws,
                        "exit_codes": codes}
    cases = {"unchanged": base,
             "batch size 5": make_run(runs / "f32-b5", "--dtype", "float32", "--batch-size", "5"),
             "bfloat16 vs float32 reference": make_run(runs / "bf16", "--dtype", "bfloat16")}
    for name, run in cases.items():
        code = check(run, ref)
        result[name] = {"expect": "pass", "passes": int(code == 0), "fails": int(code == 1), "draws": 1,
                        "exit_codes": [code]}
    codes = []
    for s in range(1, seeds + 1):
        bf = make_run(runs / f"s{s}-bf16", "--dtype", "bfloat16", "--seed", str(s))
        sref = out / f"reference-s{s}-bf16.json"
        assert quiet(["reference", str(bf), "--out", str(sref)]) == 0
        codes.append(check(make_run(runs / f"s{s}-f32", "--dtype", "float32", "--seed", str(s)), sref))
    result[f"float32 vs bfloat16 reference, {seeds} seeds"] = {
        "expect": "pass", "passes": codes.count(0), "fails": codes.count(1), "draws": seeds, "exit_codes": codes}
    return result


def main_cli() -> None:
    """Command line."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--draws", type=int, default=10)
    ap.add_argument("--seeds", type=int, default=10)
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = measure(out, args.draws, args.seeds)
    (out / "check_power.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = ["| case | expected | fails | passes | draws |", "|---|---|---|---|---|"]
    lines += [f"| {k} | {v['expect']} | {v['fails']} | {v['passes']} | {v['draws']} |" for k, v in result.items()]
    (out / "check_power.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main_cli()
