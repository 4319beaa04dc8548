"""`fairbench run` and its siblings: each builds an image source and hands it to the one lifecycle
(fairbench/pipeline.py); `run` also runs the vanilla baseline and the paired comparison.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any

from fairbench.config import RunConfig, tier_fields
from fairbench.errors import UserError
from fairbench.pipeline import RunOutcome, check_resume, check_run_target, execute
from fairbench.outputs.rundir import default_out, run_dir_of
from fairbench.sources import Existing, Generate, Import, Merge, process_info
from fairbench.spec import RunSpec, resolve


def baseline_config(cfg: RunConfig) -> RunConfig:
    """Vanilla with every setting of `cfg` that decides its images, written beside `cfg`'s run.

    Its directory is `--baseline-out`, else runs/vanilla-<model>-<suite> beside the method's run;
    when that holds a vanilla run of other settings, a name suffixed with these settings' hash.
    """
    vanilla = RunConfig(method="vanilla")  # the method tier at its defaults; the method run's own outputs dropped
    base = cfg.model_copy(update={**{k: getattr(vanilla, k) for k in tier_fields("method")}, "out": None,
                                  "reference": None, "clip_model": None, "baseline": False, "baseline_out": None})
    if cfg.baseline_out:
        return base.model_copy(update={"out": cfg.baseline_out})
    parent = run_dir_of(cfg).parent
    out = parent / default_out(base).name
    try:
        check_resume(out, base)
    except UserError:
        digest = hashlib.sha256(json.dumps(base.identity(), sort_keys=True, default=str).encode()).hexdigest()
        out = parent / f"{out.name}-{digest[:8]}"
    return base.model_copy(update={"out": str(out)})


def run(cfg: RunConfig) -> RunOutcome:
    """Run (or resume) a benchmark run; for a method other than vanilla, also its vanilla baseline
    (resumed, never regenerated) and the paired comparison of the two (unless cfg.baseline is off)."""
    spec = resolve(cfg)
    cfg = spec.config
    with_baseline = cfg.baseline and cfg.method != "vanilla" and not cfg.shard
    base = resolve(baseline_config(cfg)) if with_baseline else None
    if base is not None:  # refused before the method's images are made, not after
        if base.run_dir.resolve() == spec.run_dir.resolve():
            raise UserError(f"--baseline-out {base.run_dir} is the method's --out: give the vanilla run its own folder")
        check_run_target(base.run_dir)
        check_resume(base.run_dir, base.config)
    outcome = run_one(spec)
    if base is None:
        return outcome
    if cfg.progress and process_info()[0] == 0:
        print(f"vanilla baseline for the paired verdict: {base.run_dir} (resumed where it exists)", file=sys.stderr)
    base_outcome = run_one(base)
    if outcome.metrics is None or base_outcome.metrics is None:
        return outcome
    from fairbench.outputs.compare import compare_runs

    outcome.baseline_dir = base_outcome.run_dir
    outcome.comparison = compare_runs(outcome.run_dir, base_outcome.run_dir, cfg.extractor)
    return outcome


def run_one(spec: RunSpec) -> RunOutcome:
    """Run (or resume) one resolved benchmark run: generate, label, score."""
    return execute(Generate(spec))


def classify_run(run_dir: Path, classifier_name: str, classifier_args: dict[str, Any], device: str = "auto",
                 progress: bool = True) -> dict[str, Any]:
    """Re-label an existing run with another classifier (no image is regenerated)."""
    metrics = execute(Existing(run_dir, classifier_name, classifier_args, device, progress)).metrics
    assert metrics is not None
    return metrics


def score_run(images_dir: Path, prompts_file: Path, cfg: RunConfig, suite: str | None = None,
              model: str | None = None, method: str | None = None) -> RunOutcome:
    """Import images another system made (checked first, all of them), then label and evaluate them
    exactly like a generated run; a second call on the same folder resumes."""
    return execute(Import(images_dir, prompts_file, cfg, suite, model, method))


def merge_run(shard_dirs: list[Path], out: Path, progress: bool = True) -> RunOutcome:
    """Merge shard directories into `out`, then label and evaluate the whole run."""
    return execute(Merge(shard_dirs, out, progress))
