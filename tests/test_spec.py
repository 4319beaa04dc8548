"""RunSpec: a run resolved once (defaults, suite with its hash, units, directory)."""

from __future__ import annotations

import hashlib

import pytest

from fairbench.config import build_config
from fairbench.errors import UserError
from fairbench.prompts import SUITES
from fairbench.spec import resolve
from fairbench.units import unit_seed


def test_resolve_fills_every_default_and_makes_the_units_once(tmp_path):
    spec = resolve(build_config(None, limit=3, n=2, seed=7, out=str(tmp_path / "r")))
    cfg = spec.config
    assert None not in (cfg.steps, cfg.guidance_scale, cfg.batch_size, cfg.classifier, cfg.detector, cfg.dtype)
    assert cfg.extractor != "auto"
    assert [u.key for u in spec.units] == [f"{p.id}/{i:05d}" for p in spec.suite.select("test", 3) for i in range(2)]
    assert all(u.seed == unit_seed(7, u.prompt_id, u.sample_idx) for u in spec.units)
    digest = hashlib.sha256(SUITES.get("occupations").read_bytes()).hexdigest()
    assert spec.suite_file == {"name": "occupations", "version": spec.suite.version, "file_sha256": digest}
    assert spec.run_dir == tmp_path / "r"
    assert resolve(spec.config) == spec  # resolving a resolved spec changes nothing


def test_resolve_refuses_an_empty_or_oversized_run_before_any_unit_exists(tmp_path):
    suite = tmp_path / "s.yaml"
    suite.write_text('name: s\ntemplate: "{x}"\nprompts:\n  - id: p\n    vars: {x: nurse}\n    split: train\n')
    with pytest.raises(UserError, match="no prompts in split 'test'"):
        resolve(build_config(None, suite=str(suite), split="test"))
    with pytest.raises(UserError, match="more than one run holds"):
        resolve(build_config(None, n=1_000_000))
