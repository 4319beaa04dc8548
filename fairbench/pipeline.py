"""The one lifecycle of every run directory, whatever made its images.

`execute(source)` reads as numbered steps:
1. check, writing nothing: the target is writable, and the source's own refusals (resume, links, shards);
2. prepare: the labellers, then the source's heavy parts (a model and a method), still writing nothing;
3. lock the directory, check again under the lock, clear the temp files a killed process left;
4. record: run.json says what is being made;
5. images: the source places them (generated, imported, merged, or those already there);
6. label and score: faces and attributes, then metrics.json and the tables; run.json says "complete".

`fairbench run`, `score`, `merge` and `classify` differ only in their `ImageSource` (fairbench/sources.py).
"""

from __future__ import annotations

import contextlib
import shlex
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from fairbench import __version__
from fairbench.classifiers import build_classifier
from fairbench.config import RunConfig, build_config
from fairbench.errors import UserError
from fairbench.faces import DETECTORS
from fairbench.io import (LOCK, atomic_write_bytes, atomic_write_json, check_writable_target, ensure_writable_dir,
                          run_lock)
from fairbench.labels import label_images
from fairbench.metrics.alignment import family_accuracy
from fairbench.metrics.evaluate import EvalSettings, evaluate
from fairbench.models import resolve_device
from fairbench.outputs.rundir import (LABELS, METRICS_JSON, RUN_JSON, RunRecord, git_sha, hardware, has_manifest,
                                      library_versions, read_metrics, read_record, remove_stale_temp_files,
                                      write_record)
from fairbench.outputs.tables import write_tables
from fairbench.prompts import load_run_suite


@dataclass
class RunOutcome:
    """Where a run wrote its results, and its metrics (None for a shard or a non-main process);
    for a method run with a vanilla baseline, that run's directory and the paired comparison."""

    run_dir: Path
    metrics: dict[str, Any] | None
    baseline_dir: Path | None = None
    comparison: dict[str, Any] | None = None


class ImageSource:
    """Where a run's images come from: the parts of the lifecycle that differ between run, score, merge and
    classify. `cfg` is the run's resolved config and `run_dir` its directory."""

    cfg: RunConfig
    run_dir: Path
    rank: int = 0  # the process's rank under `accelerate launch`: only rank 0 locks, checks and records

    def check(self) -> None:
        """Refusals that only read; made before the directory exists and again under its lock."""

    def prepare(self, device: str, detector: Any, classifier: Any) -> None:
        """Load what making the images needs (a model, a method) on `device`, writing nothing."""

    def start(self) -> RunRecord:
        """Under the lock: the first record of the run (and any file it names)."""
        raise NotImplementedError

    def images(self, record: RunRecord) -> list[dict[str, Any]] | None:
        """Place the images and return their manifest rows in unit order; None when this process labels
        nothing (a shard, or a rank other than 0)."""
        raise NotImplementedError

    def finish(self, metrics: dict[str, Any]) -> dict[str, Any]:
        """After scoring: anything the source adds to the metrics (image quality, CLIP score)."""
        return metrics


def execute(source: ImageSource) -> RunOutcome:
    """Run the lifecycle on `source`: check, prepare, lock, record, images, label and score."""
    cfg, run_dir, main = source.cfg, source.run_dir, source.rank == 0
    # 1. check: everything that can refuse the run happens before the directory exists, so a refused run
    #    leaves nothing behind
    check_run_target(run_dir)
    source.check()
    # 2. prepare, on this process's device
    device = resolve_device(cfg.device)
    detector, classifier = build_labellers(cfg, device)
    source.prepare(device, detector, classifier)
    ensure_writable_dir(run_dir)
    # 3. lock, and check again now that no other process can write the run; a refusal leaves run.json as it was
    with run_lock(run_dir) if main else contextlib.nullcontext():
        if main:
            source.check()
            remove_stale_temp_files(run_dir)
        # 4. record
        record = source.start()
        if main:
            write_record(run_dir, record)
        # 5. images
        rows = source.images(record)
        if rows is None:
            return RunOutcome(run_dir, None)
        # 6. label and score
        record.status = "labelling"
        write_record(run_dir, record)
        metrics = label_and_evaluate(run_dir, rows, record, cfg, detector, classifier)
    return RunOutcome(run_dir, source.finish(metrics))


def provenance() -> dict[str, Any]:
    """The run.json fields that say what made a run: fairbench's version and commit, libraries, hardware."""
    return {"fairbench_version": __version__, "git_sha": git_sha(), "versions": library_versions(),
            "hardware": hardware()}


def check_run_target(run_dir: Path) -> None:
    """A run directory is a new, empty or fairbench run folder that can be written, and never a symbolic link
    (a run's files would land outside the path given) or a folder of someone's other files."""
    check_writable_target(run_dir)
    if run_dir.is_symlink():
        raise UserError(f"--out {run_dir} is a symbolic link: give the folder it points to, or a new folder")
    if run_dir.is_dir() and not (run_dir / RUN_JSON).is_file() and not has_manifest(run_dir):
        others = sorted(p.name for p in run_dir.iterdir() if p.name != LOCK)  # a run's own files say it is one
        if others:
            raise UserError(f"--out {run_dir} is a folder of other files (e.g. {others[0]!r}), not a fairbench run: "
                            f"choose a new or empty folder")


def holds_run(run_dir: Path) -> bool:
    """Whether a directory holds a run to resume: a run.json and a manifest (without images, no run yet)."""
    return (run_dir / RUN_JSON).exists() and has_manifest(run_dir)


def check_resume(run_dir: Path, cfg: RunConfig) -> None:
    """Refuse to mix two different runs in one directory."""
    if not holds_run(run_dir):
        return
    old = read_record(run_dir).spec
    diff = {k: (old.get(k), v) for k, v in cfg.identity().items() if old.get(k) != v}
    if diff:
        k, (was, now) = next(iter(diff.items()))
        raise UserError(f"{run_dir} holds a different run ({k}: {was!r} there, {now!r} now); {resume_hint(k, was)}")


def resume_hint(field: str, was: Any) -> str:
    """How to continue the run in place (its flag and value) where one flag says it, else: another --out."""
    if isinstance(was, (str, int, float)) and not isinstance(was, bool):
        return f"pass --{field.replace('_', '-')} {shlex.quote(str(was))} to resume it, or choose another --out"
    return "choose another --out"


def recorded_config(run_dir: Path, record: RunRecord, **overrides: Any) -> RunConfig:
    """The run config a run.json records, with `overrides`; a spec this fairbench cannot read is a one-line
    refusal naming the file."""
    try:
        return build_config(None, **{**record.spec, **overrides}).with_model_defaults()
    except UserError as exc:
        raise UserError(f"{Path(run_dir) / RUN_JSON}: {exc}") from None


def build_labellers(cfg: RunConfig, device: str) -> tuple[Any, Any]:
    """(face detector, attribute classifier) of a run config, on `device`."""
    detector = DETECTORS.get(cfg.detector)(device=device)
    return detector, build_classifier(cfg.classifier, cfg.classifier_args, device=device)


def label_and_evaluate(run_dir: Path, rows: list[dict[str, Any]], record: RunRecord, cfg: RunConfig,
                       detector: Any, classifier: Any) -> dict[str, Any]:
    """Faces + attributes, then metrics and tables; run.json records the labellers and says "complete"."""
    start = time.perf_counter()
    margin = classifier.crop_margin if cfg.face_margin is None else cfg.face_margin
    labels = label_images(run_dir, rows, detector, classifier, margin, cfg.low_confidence,
                          progress=cfg.progress)
    atomic_write_bytes(run_dir / LABELS, labels.to_parquet(index=False))
    record.classifier = classifier.describe()
    record.detector = {**detector.describe(), "crop_margin": margin}
    record.labelling_seconds = round(time.perf_counter() - start, 3)
    metrics = evaluate_run(run_dir, labels, classifier, cfg)
    record.status = "complete"
    write_record(run_dir, record)
    return metrics


def evaluate_run(run_dir: Path, labels: pd.DataFrame, classifier: Any, cfg: RunConfig) -> dict[str, Any]:
    """Metrics and tables from labels; prompt order from the suite."""
    suite = load_run_suite(run_dir, cfg.suite)
    prompts = suite.select(cfg.split, cfg.limit)
    prompt_ids = [p.id for p in prompts]
    specs = classifier.specs()
    confusions = {a: c for a in specs if (c := classifier.confusion(a)) is not None}
    settings = EvalSettings(n_boot=cfg.n_boot, level=cfg.ci_level, seed=cfg.seed)
    requested = {p.id: p.requested for p in prompts if p.requested}
    counts = {a: c for a in confusions if (c := classifier.confusion_counts(a)) is not None}
    metrics = evaluate(labels, specs, prompt_ids, settings, confusions, requested, counts)
    family = family_accuracy(labels, prompts, settings.level)
    if family is not None:
        metrics["alignment"] = {"family_accuracy": family}
    metrics["classifier"] = classifier.name
    atomic_write_json(run_dir / METRICS_JSON, metrics)
    write_tables(run_dir, metrics)
    return metrics


def quality_run(run_dir: Path, reference: str | None, extractor: str = "auto",
                extractor_args: dict[str, Any] | None = None, clip_model: str | None = None,
                clip_revision: str | None = None, batch_size: int = 64, device: str = "cpu") -> dict[str, Any]:
    """Add image quality (FD/KID against `reference`) and CLIP score to a finished run's metrics.json."""
    from fairbench.metrics.clipscore import CLIPScorer, clip_score_run
    from fairbench.metrics.features import build_extractor, resolve_extractor
    from fairbench.metrics.quality import quality

    metrics = read_metrics(run_dir)
    check_writable_target(run_dir)  # before the features are computed, not after
    if reference:
        extractor = resolve_extractor(extractor, read_record(run_dir).spec.get("classifier"))
        q = quality(run_dir, reference, build_extractor(extractor, extractor_args), batch_size)
        metrics.setdefault("quality", {})[q["name"]] = q
    if clip_model:
        metrics.setdefault("alignment", {})["clip_score"] = clip_score_run(
            run_dir, CLIPScorer(clip_model, clip_revision, device), level=metrics["settings"]["level"])
    atomic_write_json(run_dir / METRICS_JSON, metrics)
    write_tables(run_dir, metrics)
    return metrics
