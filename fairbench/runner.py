"""`fairbench run` end to end: units -> generation -> faces + attributes -> metrics -> outputs.

Each stage reads what the previous one wrote, so `label_run` and `evaluate_run` also re-run
on an existing run directory (re-classify without re-generating, recompute metrics).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from fairbench import __version__
from fairbench.classifiers import build_classifier
from fairbench.config import RunConfig, build_config, tier_fields
from fairbench.errors import UserError
from fairbench.faces import DETECTORS
from fairbench.generation.engine import run_generation
from fairbench.generation.manifest import MANIFEST, check_no_links, completed_rows, consolidate, finished_rows
from fairbench.io import (atomic_write_bytes, atomic_write_json, atomic_write_text, check_writable_target,
                          ensure_writable_dir, run_lock, sha256_file)
from fairbench.labels import label_images
from fairbench.methods import build_method, check_architecture
from fairbench.methods.base import MethodContext
from fairbench.methods.probe import embedding_probe, probe_attributes
from fairbench.metrics.alignment import family_accuracy
from fairbench.metrics.evaluate import EvalSettings, evaluate
from fairbench.models import load_backend, resolve_device
from fairbench.models.backend import SamplingParams
from fairbench.outputs.rundir import (LABELS, METRICS_JSON, RUN_JSON, RUN_SUITE, read_metrics, git_sha, hardware, library_versions,
                                      read_json, read_record, remove_stale_temp_files, write_run_json)
from fairbench.outputs.tables import write_tables
from fairbench.prompts import SUITES, load_run_suite, load_suite
from fairbench.units import make_units


MAX_IMAGES = 1_000_000  # one run's units are built in memory; a larger job is several runs


@dataclass
class RunOutcome:
    """Where a run wrote its results, and its metrics (None for a shard or a non-main process);
    for a method run with a vanilla baseline, that run's directory and the paired comparison."""

    run_dir: Path
    metrics: dict[str, Any] | None
    baseline_dir: Path | None = None
    comparison: dict[str, Any] | None = None


def slug(text: str) -> str:
    """File-safe version of a free-form name (model ids, paths)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-.")[:80] or "x"


def default_out(cfg: RunConfig) -> Path:
    """runs/<method>-<model>-<suite>[-shard-i-of-N] under the current directory."""
    name = f"{cfg.method}-{slug(Path(cfg.model).name if Path(cfg.model).exists() else cfg.model)}-{slug(Path(cfg.suite).stem)}"
    if cfg.shard:
        i, n = cfg.shard_pair()
        name += f"-shard-{i}-of-{n}"
    return Path("runs") / name


def run_dir_of(cfg: RunConfig) -> Path:
    """The run directory of a config: --out, else `default_out`."""
    return Path(cfg.out) if cfg.out else default_out(cfg)


def process_info() -> tuple[int, int, Any]:
    """(rank, world size, accelerate state or None) for runs under `accelerate launch`."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0, 1, None
    import torch
    from accelerate import PartialState

    # without CUDA, cpu=True makes accelerate use the gloo backend (its MULTI_CPU mode)
    state = PartialState(cpu=not torch.cuda.is_available())
    return state.process_index, state.num_processes, state


def check_resume(run_dir: Path, cfg: RunConfig) -> None:
    """Refuse to mix two different runs in one directory (a directory without images holds no run yet)."""
    path = run_dir / RUN_JSON
    if not path.exists() or not any(run_dir.glob("manifest*.jsonl")):
        return
    old = read_record(run_dir)["spec"]
    diff = {k: (old.get(k), v) for k, v in cfg.identity().items() if old.get(k) != v}
    if diff:
        k, (was, now) = next(iter(diff.items()))
        raise UserError(f"{run_dir} holds a different run ({k}: {was!r} there, {now!r} now); {resume_hint(k, was)}")


def check_same_weights(run_dir: Path, fingerprint: str) -> None:
    """Refuse to resume a run whose images came from other weights under the same model name."""
    path = run_dir / RUN_JSON
    was = read_json(path).get("model", {}).get("weights_fingerprint") if path.exists() else None
    if was is not None and was != fingerprint:
        raise UserError(f"{run_dir} holds images from other weights of this model (fingerprint {was[:12]} there, "
                        f"{fingerprint[:12]} now: retrained or edited since); choose another --out")


def resume_hint(field: str, was: Any) -> str:
    """How to continue the run in place (its flag and value) where one flag says it, else: another --out."""
    if isinstance(was, (str, int, float)) and not isinstance(was, bool):
        return f"pass --{field.replace('_', '-')} {shlex.quote(str(was))} to resume it, or choose another --out"
    return "choose another --out"


def suite_identity(cfg: RunConfig) -> dict[str, Any]:
    """Name, version and content hash of the suite file."""
    path = Path(cfg.suite) if Path(cfg.suite).is_file() else SUITES.get(cfg.suite)
    suite = load_suite(cfg.suite)
    return {"name": suite.name, "version": suite.version, "file_sha256": sha256_file(path)}


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
    cfg = cfg.with_model_defaults()
    with_baseline = cfg.baseline and cfg.method != "vanilla" and not cfg.shard
    base_cfg = baseline_config(cfg) if with_baseline else None
    if base_cfg is not None:  # refused before the method's images are made, not after
        if Path(base_cfg.out).resolve() == run_dir_of(cfg).resolve():
            raise UserError(f"--baseline-out {base_cfg.out} is the method's --out: give the vanilla run its own folder")
        check_writable_target(Path(base_cfg.out))
        check_resume(Path(base_cfg.out), base_cfg)
    outcome = run_one(cfg)
    if base_cfg is None:
        return outcome
    if cfg.progress and process_info()[0] == 0:
        print(f"vanilla baseline for the paired verdict: {base_cfg.out} (resumed where it exists)", file=sys.stderr)
    base = run_one(base_cfg)
    if outcome.metrics is None or base.metrics is None:
        return outcome
    from fairbench.outputs.compare import compare_runs

    outcome.baseline_dir = base.run_dir
    outcome.comparison = compare_runs(outcome.run_dir, base.run_dir, cfg.extractor)
    return outcome


def run_one(cfg: RunConfig) -> RunOutcome:
    """Run (or resume) one benchmark run: generate, label, score."""
    rank, world, state = process_info()
    if world > 1 and cfg.shard:
        raise UserError("use either --shard or `accelerate launch`, not both")
    suite = load_suite(cfg.suite)
    n_prompts = len(suite.select(cfg.split, cfg.limit))
    if not n_prompts:
        raise UserError(f"suite {suite.name!r} has no prompts in split {cfg.split!r}")
    if n_prompts * cfg.n > MAX_IMAGES:
        raise UserError(f"{n_prompts} prompts x --n {cfg.n} is {n_prompts * cfg.n:,} images, more than one run holds "
                        f"({MAX_IMAGES:,}): split the work with --limit, --split or a smaller --n")
    run_dir = run_dir_of(cfg)
    # everything that can refuse the run happens before the run directory exists, so a refused
    # run leaves nothing behind, and a run that never made an image cannot block its --out
    check_writable_target(run_dir)
    check_resume(run_dir, cfg)
    check_no_links(run_dir)
    check_quality_settings(cfg, n_prompts * cfg.n)
    device = resolve_device(cfg.device)
    method = build_method(cfg.method, cfg.method_args)
    detector, classifier = build_labellers(cfg, device)
    backend = load_backend(cfg.model, dtype=cfg.dtype, device=device, scheduler=cfg.scheduler)
    check_architecture(cfg.method, method, backend)
    check_same_weights(run_dir, backend.fingerprint)
    params = SamplingParams(cfg.steps, cfg.guidance_scale, cfg.height, cfg.width, cfg.negative_prompt)
    backend.check_sampling(params)
    context = MethodContext(suite, cfg.split, cfg.limit, params, detector, classifier, cfg.seed, cfg.batch_size,
                            cfg.progress and rank == 0)
    method.prepare(backend, suite, context)
    method.apply_to_model(backend)
    units = make_units(suite, cfg.method, cfg.model, cfg.n, cfg.seed, cfg.split, cfg.limit)
    ensure_writable_dir(run_dir)
    with run_lock(run_dir) if rank == 0 else contextlib.nullcontext():
        if rank == 0:  # again, now that no other process can write it; a refusal leaves run.json as it was
            check_resume(run_dir, cfg)
            check_no_links(run_dir)
            done = completed_rows(run_dir, {u.key: u for u in units})
            remove_stale_temp_files(run_dir)
        part = (rank, world) if world > 1 else cfg.shard_pair()
        spec = cfg.model_dump()
        record: dict[str, Any] = {
            **provenance(), "spec": spec, "suite": suite_identity(cfg),
            "model": backend.describe(), "method": {"name": cfg.method, **method.describe()},
            "sampling": params.to_dict(), "n_units": len(units), "world_size": world, "part": list(part),
            "status": "generating",
            "seed_rule": "sha256(f'{seed}\\x1f{prompt_id}\\x1f{sample_idx}')[:8] >> 1; one CPU torch.Generator per image",
        }
        probed = probe_attributes(suite, method, list(classifier.specs()))
        if probed and rank == 0 and backend.arch != "other":  # pipelines fairbench conditions by text have no states
            record["embedding_probe"] = embedding_probe(backend, method, suite, units, probed, cfg.ci_level)
        if rank == 0:
            write_run_json(run_dir, record)
        if state is not None:  # no rank writes an image before rank 0 has cleared the killed run's temp files
            state.wait_for_everyone()
        stats = run_generation(run_dir, units, backend, method, params, cfg.batch_size, part,
                               separate_manifest=world > 1, batch_invariant=cfg.batch_invariant,
                               progress=cfg.progress, done=done if rank == 0 else None)
        if state is not None:
            state.wait_for_everyone()
            if rank != 0:
                return RunOutcome(run_dir, None)
        rows = consolidate(run_dir, [u.key for u in units], {u.key: u for u in units})
        record["n_units"] = stats.total if cfg.shard else len(units)
        record["generation"] = {"generated_now": stats.generated, "already_done": stats.already_done,
                                "seconds": round(stats.seconds, 3), "images_per_second": round(stats.images_per_second, 3)}
        if cfg.shard:
            record["status"] = "shard generated"
            write_run_json(run_dir, record)
            return RunOutcome(run_dir, None)
        del backend
        record["status"] = "labelling"
        write_run_json(run_dir, record)
        metrics = label_and_evaluate(run_dir, rows, record, cfg, detector, classifier)
        if cfg.reference or cfg.clip_model:
            metrics = quality_run(run_dir, cfg.reference, cfg.extractor, cfg.extractor_args, cfg.clip_model,
                                  device=device)
        return RunOutcome(run_dir, metrics)


def provenance() -> dict[str, Any]:
    """The run.json fields that say what made a run: fairbench's version and commit, libraries, hardware."""
    return {"fairbench_version": __version__, "git_sha": git_sha(), "versions": library_versions(),
            "hardware": hardware()}


def check_quality_settings(cfg: RunConfig, n_images: int) -> None:
    """Refuse, before any image exists, quality settings that would fail once the images are made."""
    from fairbench.metrics.features import resolve_extractor
    from fairbench.metrics.quality import list_images
    from fairbench.models.dual_encoder import check_dual_encoder

    resolve_extractor(cfg.extractor, cfg.classifier)  # also the paired verdict's, with or without --reference
    if cfg.clip_model:
        check_dual_encoder(cfg.clip_model)
    if not cfg.reference:
        return
    list_images(cfg.reference)
    if n_images < 2:
        raise UserError(f"--reference needs at least 2 images in the run for a distance; this run makes {n_images}")


def build_labellers(cfg: RunConfig, device: str) -> tuple[Any, Any]:
    """(face detector, attribute classifier) of a run config."""
    detector = DETECTORS.get(cfg.detector)(device=device)
    return detector, build_classifier(cfg.classifier, cfg.classifier_args, device=device)


def label_and_evaluate(run_dir: Path, rows: list[dict[str, Any]], record: dict[str, Any], cfg: RunConfig,
                       detector: Any, classifier: Any) -> dict[str, Any]:
    """Faces + attributes, then metrics and tables; updates run.json."""
    start = time.perf_counter()
    margin = classifier.crop_margin if cfg.face_margin is None else cfg.face_margin
    labels = label_images(run_dir, rows, detector, classifier, margin, cfg.low_confidence,
                          progress=cfg.progress)
    buf = labels.to_parquet(index=False)
    atomic_write_bytes(run_dir / LABELS, buf)
    record["classifier"] = classifier.describe()
    record["detector"] = {**detector.describe(), "crop_margin": margin}
    record["labelling_seconds"] = round(time.perf_counter() - start, 3)
    metrics = evaluate_run(run_dir, labels, classifier, cfg)
    record["status"] = "complete"
    write_run_json(run_dir, record)
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
        extractor = resolve_extractor(extractor, read_record(run_dir)["spec"].get("classifier"))
        q = quality(run_dir, reference, build_extractor(extractor, extractor_args), batch_size)
        metrics.setdefault("quality", {})[q["name"]] = q
    if clip_model:
        metrics.setdefault("alignment", {})["clip_score"] = clip_score_run(
            run_dir, CLIPScorer(clip_model, clip_revision, device))
    atomic_write_json(run_dir / METRICS_JSON, metrics)
    write_tables(run_dir, metrics)
    return metrics


def recorded_config(run_dir: Path, record: dict[str, Any], **overrides: Any) -> RunConfig:
    """The run config a run.json records, with `overrides`; a spec this fairbench cannot read is a one-line
    refusal naming the file."""
    try:
        return build_config(None, **{**record["spec"], **overrides}).with_model_defaults()
    except UserError as exc:
        raise UserError(f"{Path(run_dir) / RUN_JSON}: {exc}") from None


def classify_run(run_dir: Path, classifier_name: str, classifier_args: dict[str, Any], device: str = "auto",
                 progress: bool = True) -> dict[str, Any]:
    """Re-label an existing run with another classifier (no image is regenerated)."""
    record = read_record(run_dir)
    cfg = recorded_config(run_dir, record, classifier=classifier_name, classifier_args=classifier_args,
                          progress=progress)
    labellers = build_labellers(cfg, resolve_device(device))
    with run_lock(run_dir):
        rows = finished_rows(run_dir, record.get("n_units"))
        record["spec"] = cfg.model_dump()
        return label_and_evaluate(run_dir, rows, record, cfg, *labellers)


def score_run(images_dir: Path, prompts_file: Path, cfg: RunConfig, suite: str | None = None,
              model: str | None = None, method: str | None = None) -> RunOutcome:
    """Import images another system made (checked first, all of them), then label and evaluate them
    exactly like a generated run; a second call on the same folder resumes."""
    import yaml

    from fairbench.generation.external import imported_bytes, manifest_row, read_external
    from fairbench.generation.manifest import Manifest

    found = read_external(images_dir, prompts_file, suite, model, method)
    cfg = cfg.model_copy(update={"model": found.model, "method": found.method, "suite": RUN_SUITE, "split": "all",
                                 "limit": None, "n": found.n}).with_model_defaults()
    run_dir = Path(cfg.out) if cfg.out else Path("runs") / f"score-{slug(found.model)}-{slug(prompts_file.stem)}"
    suite_text = yaml.safe_dump(found.suite.model_dump(exclude_defaults=True), sort_keys=False, allow_unicode=True)
    check_writable_target(run_dir)
    check_resume(run_dir, cfg)
    check_same_suite(run_dir, suite_text)
    check_no_links(run_dir)
    detector, classifier = build_labellers(cfg, resolve_device(cfg.device))
    ensure_writable_dir(run_dir)
    with run_lock(run_dir):
        check_resume(run_dir, cfg)
        check_same_suite(run_dir, suite_text)
        check_no_links(run_dir)
        remove_stale_temp_files(run_dir)
        atomic_write_text(run_dir / RUN_SUITE, suite_text)
        record: dict[str, Any] = {
            **provenance(), "spec": cfg.model_dump(), "source": "external",
            "suite": {"name": found.suite.name, "version": found.suite.version,
                      "file_sha256": sha256_file(run_dir / RUN_SUITE)},
            "model": {"source": "external", "name": found.model, "weights_fingerprint": None},
            "method": {"name": found.method, "level": "external", "source": "external"}, "sampling": {},
            "n_units": len(found.images),
            "images_from": {"prompts_file": prompts_file.name, "sha256": sha256_file(prompts_file)},
            "status": "importing",
        }
        write_run_json(run_dir, record)
        done = completed_rows(run_dir)
        manifest, imported = Manifest(run_dir / MANIFEST), 0
        for item in found.images:
            if done.get(item.key, {}).get("sha256") == item.sha256 and done[item.key]["image"] == item.image:
                continue
            atomic_write_bytes(run_dir / item.image, imported_bytes(item))
            manifest.append([manifest_row(item, found.model, found.method)])
            imported += 1
        rows = consolidate(run_dir, [e.key for e in found.images])
        record["generation"] = {"imported_now": imported, "already_done": len(found.images) - imported}
        record["status"] = "labelling"
        write_run_json(run_dir, record)
        metrics = label_and_evaluate(run_dir, rows, record, cfg, detector, classifier)
    return RunOutcome(run_dir, metrics)


def check_same_suite(run_dir: Path, suite_text: str) -> None:
    """Refuse to score other prompts into a folder that holds a scored run."""
    path = run_dir / RUN_SUITE
    if path.is_file() and any(run_dir.glob("manifest*.jsonl")) and path.read_text(encoding="utf-8") != suite_text:
        raise UserError(f"{run_dir} holds scored images of other prompts ({path} differs); choose another --out")


def merge_run(shard_dirs: list[Path], out: Path, progress: bool = True) -> RunOutcome:
    """Merge shard directories into `out`, then label and evaluate the whole run; every check is made
    before `out` is written."""
    from fairbench.generation.merge import check_merge_target, check_shards, merged_order, write_merged

    check_writable_target(out)
    record, rows = check_shards(shard_dirs, out)
    cfg = recorded_config(shard_dirs[0], record, progress=progress)
    units = make_units(load_suite(cfg.suite), cfg.method, cfg.model, cfg.n, cfg.seed, cfg.split, cfg.limit)
    ordered = merged_order(rows, [u.key for u in units])
    labellers = build_labellers(cfg, resolve_device(cfg.device))
    ensure_writable_dir(out)
    with run_lock(out):
        check_merge_target(out, record)  # again, now that no other process can write `out`
        remove_stale_temp_files(out)
        record["status"] = "merging"  # first, so that a merge killed midway is this run's to repeat
        write_run_json(out, record)
        rows = write_merged(out, ordered)
        record["status"] = "labelling"
        write_run_json(out, record)
        metrics = label_and_evaluate(out, rows, record, cfg, *labellers)
    return RunOutcome(out, metrics)
