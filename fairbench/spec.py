"""A run resolved once: `resolve(cfg)` fills in every default and loads what the run is made of.

After `resolve`, nothing downstream derives an option again: the model's defaults, the dtype and the
extractor (`RunConfig.with_model_defaults`), the loaded suite and its file's hash, the units with
their seeds, and the run directory are all in the spec. The device stays a name until the process
that does the work resolves it (`auto` is that process's accelerator; `pipeline.execute`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fairbench.config import RunConfig
from fairbench.errors import UserError
from fairbench.io import sha256_file
from fairbench.metrics.features import EXTRACTORS
from fairbench.outputs.rundir import run_dir_of
from fairbench.prompts import SUITES, SuiteSpec, load_suite
from fairbench.registry import bind_arguments
from fairbench.units import WorkUnit, make_units

MAX_IMAGES = 1_000_000  # one run's units are built in memory; a larger job is several runs


@dataclass(frozen=True)
class RunSpec:
    """Everything a generated run is: its resolved options, suite, units and directory."""

    config: RunConfig
    suite: SuiteSpec
    suite_file: dict[str, Any]  # name, version and content hash of the suite file (run.json's `suite`)
    units: tuple[WorkUnit, ...]
    run_dir: Path


def suite_file(cfg: RunConfig, suite: SuiteSpec) -> dict[str, Any]:
    """Name, version and content hash of the suite file."""
    path = Path(cfg.suite) if Path(cfg.suite).is_file() else SUITES.get(cfg.suite)
    return {"name": suite.name, "version": suite.version, "file_sha256": sha256_file(path)}


def resolve(cfg: RunConfig) -> RunSpec:
    """The run `cfg` describes, with every default filled in and its units made; refuses an empty or oversized run."""
    cfg = cfg.with_model_defaults()
    # the extractor is built only when FD is computed (a reference, a baseline): its arguments are checked now
    bind_arguments(EXTRACTORS.get(cfg.extractor), cfg.extractor_args, f"feature extractor {cfg.extractor!r}")
    suite = load_suite(cfg.suite)
    n_prompts = len(suite.select(cfg.split, cfg.limit))
    if not n_prompts:
        raise UserError(f"suite {suite.name!r} has no prompts in split {cfg.split!r}")
    if n_prompts * cfg.n > MAX_IMAGES:  # refused before a million units are built
        raise UserError(f"{n_prompts} prompts x --n {cfg.n} is {n_prompts * cfg.n:,} images, more than one run "
                        f"holds ({MAX_IMAGES:,}): split the work with --limit, --split or a smaller --n")
    units = tuple(make_units(suite, cfg.method, cfg.model, cfg.n, cfg.seed, cfg.split, cfg.limit))
    return RunSpec(cfg, suite, suite_file(cfg, suite), units, run_dir_of(cfg))
