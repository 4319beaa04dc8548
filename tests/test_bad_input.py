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
    "check alpha out of range": lambda t: ["check", str(t), "--against", str(t), "--alpha", "-1"],
    "compare n-boot zero": lambda t: ["compare", str(t), "--baseline", str(t), "--n-boot", "0"],
    "plan not found": lambda t: ["plan", str(t / "nope.yaml")],
}


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
