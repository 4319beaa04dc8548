"""Regression check: passes on an unchanged run, fails on a bias shift and on a quality drop."""

from __future__ import annotations

import json


from fairbench.cli.main import main
from fairbench.outputs.check import compare, headline


def _metrics(gap=0.5, gap_ci=(0.45, 0.55), faces=950, family=(0.9, 0.88, 0.92), fd=None):
    m = {"n_images": 1000, "n_faces": faces,
         "attributes": {"gender": {"aggregate": {
             "fd": {"value": gap / 2 ** 0.5, "ci_low": gap_ci[0] / 2 ** 0.5, "ci_high": gap_ci[1] / 2 ** 0.5},
             "kl": {"value": 0.1, "ci_low": 0.08, "ci_high": 0.12},
             "bias_gap": {"value": gap, "ci_low": gap_ci[0], "ci_high": gap_ci[1]}}}},
         "alignment": {"family_accuracy": {"value": family[0], "ci_low": family[1], "ci_high": family[2]}}}
    if fd is not None:
        m["quality"] = {"FD_synthface": {"fd": fd}}
    return m


def test_unchanged_run_passes_and_shifts_fail():
    ref = headline(_metrics(fd=2.0))
    assert not any(f.regressed for f in compare(headline(_metrics(fd=2.0)), ref))
    # a small wobble inside the band passes
    assert not any(f.regressed for f in compare(headline(_metrics(gap=0.52, fd=2.1)), ref))
    # bias shift: gap 0.5 -> 0.7 with the same interval width
    bad = [f.name for f in compare(headline(_metrics(gap=0.7, gap_ci=(0.65, 0.75), fd=2.0)), ref) if f.regressed]
    assert bad == ["gender.fd", "gender.bias_gap"]
    # quality drop: FD up 50 %, fewer faces, lower family accuracy
    worse = headline(_metrics(faces=800, family=(0.7, 0.68, 0.72), fd=3.0))
    bad = {f.name for f in compare(worse, ref) if f.regressed}
    assert bad == {"quality.FD_synthface", "face_rate", "alignment.family_accuracy"}
    # improvements are not regressions
    better = headline(_metrics(gap=0.2, gap_ci=(0.15, 0.25), faces=999, family=(0.99, 0.98, 1.0), fd=1.0))
    assert not any(f.regressed for f in compare(better, ref))


def test_check_cli_exit_codes(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text(json.dumps({"spec": {"method": "vanilla"}, "fairbench_version": "x"}))
    (run / "metrics.json").write_text(json.dumps(_metrics()))
    ref = tmp_path / "ref.json"
    assert main(["reference", str(run), "--out", str(ref)]) == 0
    assert main(["check", str(run), "--against", str(ref)]) == 0
    assert "no regression" in capsys.readouterr().out
    shifted = tmp_path / "shifted"
    shifted.mkdir()
    (shifted / "run.json").write_text((run / "run.json").read_text())
    (shifted / "metrics.json").write_text(json.dumps(_metrics(gap=0.8, gap_ci=(0.75, 0.85))))
    assert main(["check", str(shifted), "--against", str(ref)]) == 1
    captured = capsys.readouterr()
    assert "REGRESSION" in captured.out and "gender.bias_gap +0.3000" in captured.err
    assert main(["check", str(shifted), "--against", str(run)]) == 1  # a run directory works as reference too
    assert main(["check", str(run), "--against", str(tmp_path / "nope.json")]) == 2
