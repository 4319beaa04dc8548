"""A run's identity, defined once: every setting's tier, what each reader does with a difference in it, and
the readers (resume, merge, compare, check, the leaderboard, the vanilla baseline) all reading that one table."""

from __future__ import annotations

import json

import pytest

from conftest import run_args
from fairbench.cli.main import main
from fairbench.config import POLICY, RECORDED_TIERS, TIERS, RunConfig, identity_fields
from fairbench.generation import merge
from fairbench.outputs import check, compare
from fairbench.outputs.rundir import RunRecord
from fairbench.runner import baseline_config

EXPECTED_TIERS = {
    "units": {"model", "suite", "split", "limit", "n", "seed", "shard"},
    "method": {"method", "method_args"},
    "sampling": {"steps", "guidance_scale", "height", "width", "negative_prompt", "scheduler"},
    "precision": {"dtype"},
    "batching": {"batch_size", "batch_invariant"},
    "labelling": {"classifier", "classifier_args", "detector", "face_margin"},
    "scoring": {"low_confidence", "n_boot", "ci_level", "reference", "extractor", "extractor_args", "clip_model"},
    "runtime": {"device", "out", "baseline", "baseline_out", "progress"},
}
# tier -> (resume, merge, compare, check); "-" accepts the difference
EXPECTED_POLICY = {
    "units": ("refuse", "refuse", "refuse", "refuse"),
    "method": ("refuse", "refuse", "-", "refuse"),
    "sampling": ("refuse", "refuse", "refuse", "flag"),
    "precision": ("refuse", "refuse", "refuse", "flag"),
    "batching": ("refuse", "refuse", "note", "flag"),
    "labelling": ("-", "refuse", "refuse", "refuse"),
    "scoring": ("-", "-", "-", "-"),
    "runtime": ("-", "-", "-", "-"),
}


def test_every_setting_has_its_tier():
    assert set(TIERS) == set(RunConfig.model_fields)
    assert {t: {k for k, v in TIERS.items() if v == t} for t in EXPECTED_TIERS} == EXPECTED_TIERS
    assert RECORDED_TIERS == {"suite_sha256": "units", "model_fingerprint": "units"}


def test_every_reader_acts_on_every_tier_as_the_table_says():
    readers = ("resume", "merge", "compare", "check")
    assert {t: tuple(POLICY[r].get(t, "-") for r in readers) for t in EXPECTED_TIERS} == EXPECTED_POLICY


def test_the_readers_use_the_table():
    cfg = RunConfig(batch_size=4)
    assert set(cfg.identity()) == set(identity_fields("resume"))
    assert set(RunConfig(batch_invariant=True).identity()) == set(identity_fields("resume")) - {"batch_size"}
    assert set(check.REFUSED) == set(identity_fields("check", recorded=True))
    assert set(check.FLAGGED) == EXPECTED_TIERS["sampling"] | EXPECTED_TIERS["precision"] | EXPECTED_TIERS["batching"]
    assert set(compare.MUST_MATCH) == set(identity_fields("compare", recorded=True))
    assert set(compare.NOTED) == EXPECTED_TIERS["batching"]
    spec = {k: None for k in TIERS} | {"method": "m", "model": "x", "n_boot": 10, "shard": "0/2"}
    assert set(merge._settings(RunRecord.model_construct(spec=spec))) == set(identity_fields("merge")) - {"shard"}


def test_the_vanilla_baseline_differs_from_its_method_run_only_in_the_method_tier_and_outputs(tmp_path):
    cfg = RunConfig(method="fairmap", method_args={"lam": 1}, n=3, steps=7, n_boot=50, out=str(tmp_path / "m"))
    base = baseline_config(cfg)
    changed = {k for k in TIERS if getattr(base, k) != getattr(cfg, k)}
    assert changed == {"method", "method_args", "out", "baseline"}  # the vanilla run has no baseline of its own
    assert (base.method, base.method_args) == ("vanilla", {})


@pytest.mark.parametrize("setting", ["--n-boot", "--ci-level"])
def test_shards_that_differ_only_in_scoring_merge_and_resume(tiny_sd, tmp_path, setting):
    # scoring settings decide numbers, not images: merge and resume accept them, as the table says
    value = {"--n-boot": ("200", "300"), "--ci-level": ("0.9", "0.95")}[setting]
    shards = []
    for i in range(2):
        d = tmp_path / f"s{i}"
        assert main(run_args(tiny_sd, d, "--n", "1", "--limit", "2", "--steps", "2", "--shard", f"{i}/2",
                             setting, value[i])) == 0
        shards.append(d)
    assert main(["merge", *map(str, shards), "--out", str(tmp_path / "merged"), "--no-progress"]) == 0
    assert main(run_args(tiny_sd, shards[0], "--n", "1", "--limit", "2", "--steps", "2", "--shard", "0/2",
                         setting, value[1])) == 0  # resumed under another scoring setting


def test_shards_that_differ_in_labelling_do_not_merge(tiny_sd, tmp_path, capsys):
    shards = []
    for i in range(2):
        d = tmp_path / f"s{i}"
        assert main(run_args(tiny_sd, d, "--n", "1", "--limit", "2", "--steps", "2", "--shard", f"{i}/2")) == 0
        shards.append(d)
    record = json.loads((shards[1] / "run.json").read_text())
    record["spec"]["face_margin"] = 0.2  # as if labelled with another crop margin
    (shards[1] / "run.json").write_text(json.dumps(record))
    assert main(["merge", *map(str, shards), "--out", str(tmp_path / "merged"), "--no-progress"]) == 2
    assert "face_margin" in capsys.readouterr().err
    assert not (tmp_path / "merged").exists()


def test_the_leaderboard_joins_explicit_runs_on_the_method_tier_and_the_model():
    from fairbench.outputs.leaderboard import method_identity

    spec = {k: None for k in TIERS} | {"method": "itigen", "method_args": {"a": 1}, "model": "w", "n": 5, "seed": 3}
    other = dict(spec, n=40, suite="explicit", seed=0)
    def record(spec: dict) -> RunRecord:
        return RunRecord.model_construct(spec=spec)

    assert method_identity(record(spec)) == method_identity(record(other))
    assert method_identity(record(spec)) != method_identity(record(dict(spec, method_args={"a": 2})))
    assert json.loads(method_identity(record(spec))) == {"method": "itigen", "method_args": {"a": 1}, "model": "w"}
