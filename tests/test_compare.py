"""`fairbench compare`, the paired verdict at the end of `fairbench run`, and `fairbench plan`."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from fairbench.cli.main import main
from fairbench.errors import UserError
from fairbench.outputs.compare import compare_sides
from fairbench.outputs.pairing import Side

SMALL = ["--n", "4", "--limit", "3", "--no-progress", "--n-boot", "200", "--dtype", "float32"]


def _side(name: str, genders: list[str], **settings) -> Side:
    keys = [f"p{i // 4}/{i % 4:05d}" for i in range(len(genders))]
    codes = [{"male": 0, "female": 1}.get(g, -1) for g in genders]
    units = pd.DataFrame({"prompt_id": [k.split("/")[0] for k in keys], "seed": range(len(keys)),
                          "sha256": [f"{name}{i}" for i in range(len(keys))],
                          "face": [0 if c >= 0 else -1 for c in codes], "gender": codes}, index=pd.Index(keys, name="key"))
    base = {"suite": "s", "n": 4, "seed": 0, "model": "m", "dtype": "float32", "classifier": "c", "method": name}
    return Side(name, {**base, **settings}, units, {"gender": ["male", "female"]}, ["p0", "p1"])


def test_compare_golden_on_hand_built_sides():
    # p0: m m m m -> m m f f (gap 1 -> 0); p1: m m m f -> m m m f (unchanged, gap 0.5)
    base = _side("vanilla", ["male"] * 4 + ["male", "male", "male", "female"])
    run = _side("method", ["male", "male", "female", "female", "male", "male", "male", "female"])
    res = compare_sides(run, base, n_boot=500)
    gap = res["attributes"]["gender"]["metrics"]["bias_gap"]
    assert gap["before"] == pytest.approx(0.75) and gap["after"] == pytest.approx(0.25)
    assert gap["change"]["value"] == pytest.approx(-0.5)
    assert gap["change"]["ci_low"] <= -0.5 <= gap["change"]["ci_high"] <= 0.0
    flips = res["attributes"]["gender"]["flips"]
    assert flips["n_flipped"] == 2 and (flips["toward_majority"], flips["away_from_majority"]) == (0, 2)
    assert flips["majority_p_value"] == pytest.approx(0.5)
    assert res["faces"]["lost"] == res["faces"]["gained"] == 0


def test_compare_refuses_sides_that_do_not_pair():
    base = _side("vanilla", ["male"] * 8)
    with pytest.raises(UserError, match=r"do not pair: seed: 0 in vanilla, 1 in method \(and 1 more\)"):
        compare_sides(_side("method", ["male"] * 8, dtype="bfloat16", seed=1), base)
    with pytest.raises(UserError, match="dtype"):
        compare_sides(_side("method", ["male"] * 8, dtype="bfloat16"), base)
    with pytest.raises(UserError, match="do not hold the same units"):
        compare_sides(_side("method", ["male"] * 4), base)


def test_runs_of_another_n_or_seed_compare_prompt_by_prompt_on_corrected_estimates():
    # same two prompts; the method's run has other seeds: no image pairs, so no flips and no plug-in change,
    # only the corrected estimates, paired by prompt, with a note that says why
    base = _side("vanilla", ["male"] * 8)
    run = _side("method", ["male", "female"] * 4, seed=1)
    res = compare_sides(run, base, n_boot=200)
    assert res["mode"] == "prompt-paired" and "different images" in res["notes"][0] and "seed" in res["notes"][0]
    gap = res["attributes"]["gender"]["corrected"]["bias_gap"]
    assert "metrics" not in res["attributes"]["gender"] and "flips" not in res["attributes"]["gender"]
    assert gap["floor_before"] == gap["floor_after"] == pytest.approx(0.375)  # E|2X/4 - 1|, X ~ Bin(4, 1/2)
    assert gap["change"]["value"] == pytest.approx(gap["after"]["value"] - gap["before"]["value"])
    # the change is cut to what a change of the gap can be (-1 to 1), stretched to hold its estimate
    assert gap["change"]["ci_low"] <= gap["change"]["value"] < gap["change"]["ci_high"] <= 1.0
    from fairbench.outputs.compare import verdict_lines

    assert "prompt by prompt over 2 prompts" in verdict_lines(res)[0]


@pytest.fixture(scope="module")
def method_run(tmp_path_factory) -> tuple[Path, Path, str]:
    """hardprompt on synthface with its vanilla baseline made by `fairbench run`."""
    base = tmp_path_factory.mktemp("verdict")
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main(["run", "--method", "hardprompt", *SMALL, "--out", str(base / "hp")]) == 0
    return base / "hp", base / "vanilla-synthface-vl-occupations", buf.getvalue()


def test_run_ends_with_the_paired_verdict(method_run):
    run, vanilla, out = method_run
    assert "paired verdict: hardprompt vs vanilla, paired over 12 images" in out
    assert "gender" in out and "flips" in out and "quality cost: FD_synthface" in out
    res = json.loads((run / "compare.json").read_text())
    assert res["baseline"] == str(vanilla) and res["n_units"] == 12
    assert (run / "tables" / "compare.csv").is_file() and (run / "figures" / "compare.png").is_file()
    assert json.loads((vanilla / "run.json").read_text())["spec"]["method"] == "vanilla"


def test_run_reuses_the_baseline_and_can_skip_it(method_run, tmp_path, capsys):
    run, vanilla, _ = method_run
    assert main(["run", "--method", "hardprompt", *SMALL, "--out", str(run)]) == 0
    assert json.loads((vanilla / "run.json").read_text())["generation"]["generated_now"] == 0  # resumed
    capsys.readouterr()
    assert main(["run", "--method", "hardprompt", *SMALL, "--out", str(tmp_path / "alone"), "--no-baseline"]) == 0
    assert "paired verdict" not in capsys.readouterr().out
    assert not (tmp_path / "alone" / "compare.json").exists()
    assert not (tmp_path / "vanilla-synthface-occupations").exists()


def test_compare_with_itself_is_zero(method_run, capsys):
    _, vanilla, _ = method_run
    assert main(["compare", str(vanilla), "--baseline", str(vanilla)]) == 0
    res = json.loads((vanilla / "compare.json").read_text())
    for attr in res["attributes"].values():
        assert attr["flips"]["n_flipped"] == 0
        for m in attr["metrics"].values():
            assert m["change"]["value"] == 0 and m["change"]["ci_low"] == m["change"]["ci_high"] == 0
        for m in attr["corrected"].values():  # same prompts, same counts: no change, bounded by both biases
            assert m["change"]["value"] == 0 and m["change"]["ci_low"] <= 0 <= m["change"]["ci_high"]
            assert m["before"] == m["after"] and m["floor_before"] == m["floor_after"]
        assert attr["skewed_prompts"]["before"] == attr["skewed_prompts"]["after"]
    assert res["identical_images"] == 12


def test_report_shows_the_comparison(method_run):
    run, _, _ = method_run
    assert main(["report", str(run)]) == 0
    text = (run / "report.md").read_text()
    assert "## Paired comparison with" in text and "figures/compare.png" in text


def test_compare_of_another_n_is_prompt_paired_and_other_settings_are_refused(method_run, tmp_path, capsys):
    run, _, _ = method_run
    other = tmp_path / "n2"
    assert main(["run", "--method", "vanilla", "--n", "2", "--limit", "3", "--no-progress", "--dtype", "float32",
                 "--out", str(other)]) == 0
    capsys.readouterr()
    assert main(["compare", str(run), "--baseline", str(other)]) == 0
    out = capsys.readouterr().out
    assert "verdict: hardprompt vs vanilla, prompt by prompt over 3 prompts (12 and 6 images)" in out
    assert "n: 2 in" in out and "corrected" in out
    assert json.loads((run / "compare.json").read_text())["mode"] == "prompt-paired"
    fewer = tmp_path / "limit2"
    assert main(["run", "--method", "vanilla", "--n", "4", "--limit", "2", "--no-progress", "--dtype", "float32",
                 "--out", str(fewer)]) == 0
    capsys.readouterr()
    assert main(["compare", str(run), "--baseline", str(fewer)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "limit: 2 in" in err[0]


PLAN = """name: tiny plan
out: {out}
run_name: "{{model}}/{{method}}-{{suite}}"
models: [synthface]
attributes: [gender]
leaderboard: {out}/board.csv
markdown: {out}/board.md
options: {{dtype: float32, n_boot: 100}}
suites:
  - {{name: test, suite: occupations, split: test, limit: 2, n: 2}}
methods:
  - {{method: hardprompt, cost: 1, args: {{attributes: gender}}}}
  - {{method: vanilla}}
  - {{method: entigen, cost: 3, per_suite: {{test: {{n: 1}}}}}}
"""


def test_plan_runs_cheapest_first_compares_and_writes_the_leaderboard(tmp_path, capsys):
    plan = tmp_path / "plan.yaml"
    plan.write_text(PLAN.format(out=tmp_path / "runs"))
    assert main(["plan", str(plan), "--dry-run"]) == 0
    order = [line.split("] ")[1].split(" on ")[0] for line in capsys.readouterr().err.splitlines() if line.startswith("[")]
    assert order == ["vanilla", "hardprompt", "entigen"]
    assert not (tmp_path / "runs").exists()  # a dry run writes nothing
    assert main(["plan", str(plan), "--no-progress"]) == 0
    runs = tmp_path / "runs" / "synthface"
    board = pd.read_csv(tmp_path / "runs" / "board.csv")
    assert sorted(board["method"]) == ["entigen", "hardprompt", "vanilla"] and set(board["attribute"]) == {"gender"}
    assert (runs / "hardprompt-test" / "compare.json").is_file()
    # entigen draws 1 image per prompt (per_suite), so its images do not pair with vanilla's 2: compared
    # prompt by prompt on the corrected estimates instead
    assert json.loads((runs / "entigen-test" / "compare.json").read_text())["mode"] == "prompt-paired"
    assert "quality:FD_synthface-classifier" in board.columns  # FD to the shared vanilla run
    assert main(["plan", str(plan), "--no-progress"]) == 0  # resumes: nothing generated again
    assert json.loads((runs / "entigen-test" / "run.json").read_text())["generation"]["generated_now"] == 0


@pytest.mark.parametrize("edit,message", [
    (lambda t: t.replace("{{method: vanilla}}", "{{method: fairmap}}"), "needs a vanilla method"),
    (lambda t: t.replace('"{{model}}/{{method}}-{{suite}}"', '"{{model}}"'), "gives two runs the directory"),
    (lambda t: t.replace('"{{model}}/{{method}}-{{suite}}"', '"{{method.__class__}}"'), "not a variable name"),
    (lambda t: t.replace("n: 2}}", "n: 0}}"), "invalid plan"),
    (lambda t: t.replace("name: tiny plan", "name: tiny plan\nbogus: 1"), "invalid plan"),
])
def test_bad_plans_are_one_line_errors(tmp_path, capsys, edit, message):
    plan = tmp_path / "plan.yaml"
    plan.write_text(edit(PLAN).format(out=tmp_path / "runs"))
    assert main(["plan", str(plan)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
    assert not (tmp_path / "runs").exists()


def test_the_shipped_leaderboard_plan_lists_every_method():
    from fairbench.methods import METHODS
    from fairbench.plan import load_plan

    plan = load_plan("leaderboard")
    # registered methods whose leaderboard runs are not yet measured (README: "Methods and the leaderboard")
    assert {m.method for m in plan.methods} == set(METHODS.names())
    assert plan.leaderboard == "results/leaderboard.csv"


def test_the_fairmap_ablation_plan_trains_in_sample_maps_on_every_occupation():
    from fairbench.plan import cells, load_plan

    todo = cells(load_plan("fairmap_ablation"), progress=False)
    fairmaps = [c for c in todo if c.method.method == "fairmap"]
    assert len(fairmaps) == 2 * 2 * 4  # worlds x protocols x variants
    for c in fairmaps:
        insample = c.suite.name == "insample"
        assert (c.config.split, c.config.n) == (("all", 16) if insample else ("test", 40))
        assert c.config.method_args.get("split", "train") == ("all" if insample else "train")


def test_the_float32_ablation_shares_the_supplements_vanilla_and_default_map():
    from fairbench.plan import cells, load_plan

    supplement = {c.config.out: c.config for c in cells(load_plan("leaderboard_float32"), progress=False)}
    ablation = cells(load_plan("fairmap_ablation_float32"), progress=False)
    vanilla_insample = {c.model: c.config.out for c in ablation if (c.method.name, c.suite.name) == ("vanilla", "insample")}
    for c in ablation:
        assert c.config.dtype == "float32"
        if c.suite.name == "insample":  # the paper's apparent protocol: maps trained on the prompts they are scored on
            assert (c.config.split, c.config.n) == ("all", 16)
            if c.method.method == "fairmap":
                assert c.config.method_args["split"] == "all" and c.config.reference == vanilla_insample[c.model]
        elif c.method.name in ("vanilla", "fairmap"):  # the same run, so it is made once and paired once
            assert supplement[c.config.out] == c.config
        else:
            assert c.config.reference in supplement
    assert len(ablation) == 2 * 2 * 5  # worlds x protocols x (vanilla + 4 variants)
    assert {c.method.name for c in ablation} == {"vanilla", "fairmap", "fairmap-per-attribute", "fairmap-map-groups",
                                                 "fairmap-deep"}
