"""The embedding-distance gap: its formula by hand, its interval against scipy, and the probe of a run's
conditioning against a direct computation and a method built to be equidistant."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import scipy.stats
import torch

from fairbench.cli.main import main
from fairbench.methods import build_method
from fairbench.methods.base import Method
from fairbench.methods.fairmap import token_distance
from fairbench.methods.probe import embedding_probe, probe_attributes
from fairbench.metrics.embedding import distance_spread, embedding_gap
from fairbench.models import load_backend
from fairbench.outputs.leaderboard import build_leaderboard
from fairbench.prompts import attribute, load_suite
from fairbench.units import make_units
from conftest import run_args


def test_distance_spread_by_hand_and_scale_free():
    assert distance_spread(np.array([1.0, 3.0])) == pytest.approx(0.5)  # |1-2| and |3-2| over 2
    assert distance_spread(np.array([2.0, 2.0, 2.0, 2.0])) == 0
    d = np.array([[1.0, 2.0, 6.0], [0.5, 0.5, 2.0]])
    assert np.allclose(distance_spread(d), [(2 + 1 + 3) / 3 / 3, (0.5 + 0.5 + 1) / 3 / 1])  # means 3 and 1
    assert np.allclose(distance_spread(10 * d), distance_spread(d))


def test_embedding_gap_interval_is_scipys_t_interval():
    values = np.array([0.1, 0.3, 0.2, 0.5, 0.4])
    got = embedding_gap(values, 0.9)
    lo, hi = scipy.stats.t.interval(0.9, len(values) - 1, loc=values.mean(), scale=scipy.stats.sem(values))
    assert (got["value"], got["ci_low"], got["ci_high"], got["n_prompts"]) == pytest.approx((0.3, lo, hi, 5))


def test_only_embedding_level_methods_and_vanilla_on_suites_that_name_groups_are_probed():
    occupations, explicit = load_suite("occupations"), load_suite("explicit")
    assert probe_attributes(occupations, build_method("vanilla", None), ["gender", "age2", "family"]) == ["gender", "age2"]
    assert probe_attributes(occupations, build_method("debiasvl", None), ["gender"]) == ["gender"]
    assert probe_attributes(occupations, build_method("hardprompt", None), ["gender"]) == []
    assert probe_attributes(explicit, build_method("vanilla", None), ["gender"]) == []


class _Midpoint(Method):
    """Hands the denoiser the mean of the prompt's two gender variants: equidistant by construction."""

    level = "embedding"

    def __init__(self, backend, suite) -> None:
        super().__init__()
        self.backend, self.prompts, self.suite = backend, {p.id: p for p in suite.prompts}, suite

    def transform_conditioning(self, cond, units, texts):
        rows = [self.backend.encode([self.suite.group_text(self.prompts[u.prompt_id], g.adjective)
                                     for g in attribute("gender").groups], guidance_scale=0.0).prompt_embeds.mean(0)
                for u in units]
        return replace(cond, prompt_embeds=torch.stack(rows))


def test_probe_of_vanilla_equals_a_direct_computation_and_a_midpoint_method_reads_zero(tiny_sd):
    backend, suite = load_backend(str(tiny_sd)), load_suite("occupations")
    units = make_units(suite, "vanilla", "m", 2, 0, "test", 3)
    got = embedding_probe(backend, build_method("vanilla", None), suite, units, ["gender"])["gender"]
    expected = []
    for p in suite.select("test", 3):
        v = backend.encode([suite.text(p)], guidance_scale=0.0).prompt_embeds.float()
        refs = backend.encode([suite.group_text(p, g.adjective) for g in attribute("gender").groups],
                              guidance_scale=0.0).prompt_embeds.float()
        d = token_distance(v, refs).numpy()
        expected.append(abs(d[0] - d[1]) / (d[0] + d[1]))
    assert got["value"] == pytest.approx(np.mean(expected), rel=1e-5) and got["n_prompts"] == 3
    assert got["value"] > 0
    midpoint = embedding_probe(backend, _Midpoint(backend, suite), suite, units, ["gender"])["gender"]
    assert midpoint["value"] == pytest.approx(0, abs=1e-5)


def test_a_run_records_its_probe_and_the_leaderboard_shows_it(tiny_sd, tmp_path):
    out = tmp_path / "run"
    assert main(run_args(tiny_sd, out, "--method", "debiasvl", "--n", "2", "--limit", "2", "--no-baseline")) == 0
    probe = json.loads((out / "run.json").read_text())["embedding_probe"]
    assert set(probe) >= {"gender"} and probe["gender"]["n_prompts"] == 2 and len(probe["gender"]["per_prompt"]) == 2
    df = build_leaderboard([out])
    assert df.loc[df["attribute"] == "gender", "embedding_gap"].iloc[0] == pytest.approx(probe["gender"]["value"])
    text = tmp_path / "text"
    assert main(run_args(tiny_sd, text, "--method", "entigen", "--n", "2", "--limit", "2", "--no-baseline")) == 0
    assert "embedding_probe" not in json.loads((text / "run.json").read_text())
