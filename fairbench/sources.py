"""The image sources of the lifecycle (fairbench/pipeline.py): generate (`run`), import (`score`), merge
(`merge`) and the images already in a run (`classify`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from fairbench.config import RunConfig
from fairbench.errors import UserError
from fairbench.generation.manifest import (MANIFEST, Manifest, check_no_links, check_no_strangers, completed_rows,
                                           consolidate, finished_rows)
from fairbench.io import atomic_write_bytes, atomic_write_text, sha256_file
from fairbench.outputs.rundir import RUN_SUITE, RunRecord, has_manifest, read_record, slug, write_record
from fairbench.pipeline import ImageSource, check_resume, check_run_target, holds_run, provenance, quality_run, recorded_config
from fairbench.spec import RunSpec, resolve
from fairbench.units import SEED_RULE


def process_info() -> tuple[int, int, Any]:
    """(rank, world size, accelerate state or None) for runs under `accelerate launch`."""
    import os

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0, 1, None
    import torch
    from accelerate import PartialState

    # without CUDA, cpu=True makes accelerate use the gloo backend (its MULTI_CPU mode)
    state = PartialState(cpu=not torch.cuda.is_available())
    return state.process_index, state.num_processes, state


def check_quality_settings(cfg: RunConfig, n_images: int) -> None:
    """Refuse, before any image exists, quality settings that would fail once the images are made."""
    from fairbench.metrics.quality import list_images
    from fairbench.models.dual_encoder import check_dual_encoder

    if cfg.clip_model:
        check_dual_encoder(cfg.clip_model)
    if not cfg.reference:
        return
    list_images(cfg.reference)
    if n_images < 2:
        raise UserError(f"--reference needs at least 2 images in the run for a distance; this run makes {n_images}")


def check_same_weights(run_dir: Path, fingerprint: str) -> None:
    """Refuse to resume a run whose images came from other weights under the same model name."""
    was = read_record(run_dir).fingerprint if holds_run(run_dir) else None
    if was is not None and was != fingerprint:
        raise UserError(f"{run_dir} holds images from other weights of this model (fingerprint {was[:12]} there, "
                        f"{fingerprint[:12]} now: retrained or edited since); choose another --out")


class Generate(ImageSource):
    """`fairbench run`: a model, with the method applied, makes every unit's image (resumed where they exist)."""

    def __init__(self, spec: RunSpec):
        from fairbench.methods import build_method

        self.spec, self.cfg, self.run_dir, self.suite = spec, spec.config, spec.run_dir, spec.suite
        self.units = list(spec.units)
        self.rank, self.world, self.state = process_info()
        if self.world > 1 and self.cfg.shard:
            raise UserError("use either --shard or `accelerate launch`, not both")
        self.method = build_method(self.cfg.method, self.cfg.method_args)
        check_quality_settings(self.cfg, len(self.units))

    def check(self) -> None:
        check_resume(self.run_dir, self.cfg)
        check_no_links(self.run_dir)
        check_no_strangers(self.run_dir, (u.key for u in self.units))

    def prepare(self, device: str, detector: Any, classifier: Any) -> None:
        from fairbench.methods import check_architecture
        from fairbench.methods.base import MethodContext
        from fairbench.models import load_backend
        from fairbench.models.backend import SamplingParams

        cfg = self.cfg
        self.device = device
        self.backend = load_backend(cfg.model, dtype=cfg.dtype, device=device, scheduler=cfg.scheduler)
        check_architecture(cfg.method, self.method, self.backend)
        check_same_weights(self.run_dir, self.backend.fingerprint)
        self.params = SamplingParams(cfg.steps, cfg.guidance_scale, cfg.height, cfg.width, cfg.negative_prompt)
        self.backend.check_sampling(self.params)
        context = MethodContext(self.suite, cfg.split, cfg.limit, self.params, detector, classifier, cfg.seed,
                                cfg.batch_size, cfg.progress and self.rank == 0)
        self.method.prepare(self.backend, self.suite, context)
        self.method.apply_to_model(self.backend)
        self.classifier_specs = list(classifier.specs())

    def start(self) -> RunRecord:
        from fairbench.methods.probe import embedding_probe, probe_attributes

        cfg, backend = self.cfg, self.backend
        self.done = completed_rows(self.run_dir, {u.key: u for u in self.units}) if self.rank == 0 else None
        self.part = (self.rank, self.world) if self.world > 1 else cfg.shard_pair()
        record = RunRecord(
            **provenance(), spec=cfg.model_dump(), suite=self.spec.suite_file, model=backend.describe(),
            method={"name": cfg.method, **self.method.describe()}, sampling=self.params.to_dict(),
            n_units=len(self.units), world_size=self.world, part=self.part, status="generating", seed_rule=SEED_RULE)
        probed = probe_attributes(self.suite, self.method, self.classifier_specs)
        if probed and self.rank == 0 and backend.arch != "other":  # pipelines conditioned by text have no states
            record.embedding_probe = embedding_probe(backend, self.method, self.suite, self.units, probed,
                                                     cfg.ci_level)
        return record

    def images(self, record: RunRecord) -> list[dict[str, Any]] | None:
        from fairbench.generation.engine import run_generation

        cfg, state = self.cfg, self.state
        if state is not None:  # no rank writes an image before rank 0 has cleared the killed run's temp files
            state.wait_for_everyone()
        stats = run_generation(self.run_dir, self.units, self.backend, self.method, self.params, cfg.batch_size,
                               self.part, separate_manifest=self.world > 1, batch_invariant=cfg.batch_invariant,
                               progress=cfg.progress, done=self.done)
        if state is not None:
            state.wait_for_everyone()
            if self.rank != 0:
                return None
        by_key = {u.key: u for u in self.units}
        rows = consolidate(self.run_dir, list(by_key), by_key)
        record.n_units = stats.total if cfg.shard else len(self.units)
        record.generation = {"generated_now": stats.generated, "already_done": stats.already_done,
                             "seconds": round(stats.seconds, 3), "images_per_second": round(stats.images_per_second, 3)}
        if cfg.shard:
            record.status = "shard generated"
            write_record(self.run_dir, record)
            return None
        self.backend = None  # the model's memory back before the labellers run
        return rows

    def finish(self, metrics: dict[str, Any]) -> dict[str, Any]:
        cfg = self.cfg
        if not (cfg.reference or cfg.clip_model):
            return metrics
        return quality_run(self.run_dir, cfg.reference, cfg.extractor, cfg.extractor_args, cfg.clip_model,
                           device=self.device)


class Import(ImageSource):
    """`fairbench score`: images another system made, every one checked before anything is written."""

    def __init__(self, images_dir: Path, prompts_file: Path, cfg: RunConfig, suite: str | None = None,
                 model: str | None = None, method: str | None = None):
        from fairbench.generation.external import read_external

        self.found = read_external(images_dir, prompts_file, suite, model, method)
        self.prompts_file = prompts_file
        self.cfg = cfg.model_copy(update={"model": self.found.model, "method": self.found.method, "suite": RUN_SUITE,
                                          "split": "all", "limit": None, "n": self.found.n}).with_model_defaults()
        self.run_dir = (Path(self.cfg.out) if self.cfg.out else
                        Path("runs") / f"score-{slug(self.found.model)}-{slug(prompts_file.stem)}")
        self.suite_text = yaml.safe_dump(self.found.suite.model_dump(exclude_defaults=True), sort_keys=False,
                                         allow_unicode=True)

    def check(self) -> None:
        check_resume(self.run_dir, self.cfg)
        path = self.run_dir / RUN_SUITE  # never other prompts into a folder that holds a scored run
        if path.is_file() and has_manifest(self.run_dir) and path.read_text(encoding="utf-8") != self.suite_text:
            raise UserError(f"{self.run_dir} holds scored images of other prompts ({path} differs); "
                            f"choose another --out")
        check_no_links(self.run_dir)

    def start(self) -> RunRecord:
        found = self.found
        atomic_write_text(self.run_dir / RUN_SUITE, self.suite_text)
        return RunRecord(
            **provenance(), spec=self.cfg.model_dump(), source="external",
            suite={"name": found.suite.name, "version": found.suite.version,
                   "file_sha256": sha256_file(self.run_dir / RUN_SUITE)},
            model={"source": "external", "name": found.model, "weights_fingerprint": None},
            method={"name": found.method, "level": "external", "source": "external"}, sampling={},
            n_units=len(found.images),
            images_from={"prompts_file": self.prompts_file.name, "sha256": sha256_file(self.prompts_file)},
            status="importing")

    def images(self, record: RunRecord) -> list[dict[str, Any]]:
        from fairbench.generation.external import imported_bytes, manifest_row

        found, run_dir = self.found, self.run_dir
        done = completed_rows(run_dir)
        manifest, imported = Manifest(run_dir / MANIFEST), 0
        for item in found.images:
            if done.get(item.key, {}).get("sha256") == item.sha256 and done[item.key]["image"] == item.image:
                continue
            atomic_write_bytes(run_dir / item.image, imported_bytes(item))
            manifest.append([manifest_row(item, found.model, found.method)])
            imported += 1
        record.generation = {"imported_now": imported, "already_done": len(found.images) - imported}
        return consolidate(run_dir, [e.key for e in found.images])


class Merge(ImageSource):
    """`fairbench merge`: the shards of one run, every check made before `out` is written."""

    def __init__(self, shard_dirs: list[Path], out: Path, progress: bool = True):
        from fairbench.generation.merge import check_shards, merged_order

        check_run_target(out)  # before the shards are read: the lifecycle's own first check
        self.record, rows = check_shards(shard_dirs, out)
        self.cfg = recorded_config(shard_dirs[0], self.record, progress=progress)
        self.run_dir = out
        self.ordered = merged_order(rows, [u.key for u in resolve(self.cfg).units])

    def check(self) -> None:
        from fairbench.generation.merge import check_merge_target

        check_merge_target(self.run_dir, self.record)

    def start(self) -> RunRecord:
        self.record.status = "merging"  # first, so that a merge killed midway is this run's to repeat
        return self.record

    def images(self, record: RunRecord) -> list[dict[str, Any]]:
        from fairbench.generation.merge import write_merged

        return write_merged(self.run_dir, self.ordered)


class Existing(ImageSource):
    """`fairbench classify`: the images a run already holds, labelled again (no image is regenerated)."""

    def __init__(self, run_dir: Path, classifier: str, classifier_args: dict[str, Any], device: str = "auto",
                 progress: bool = True):
        self.run_dir = Path(run_dir)
        self.cfg = recorded_config(self.run_dir, read_record(self.run_dir), classifier=classifier,
                                   classifier_args=classifier_args, device=device, progress=progress)

    def check(self) -> None:
        check_no_links(self.run_dir)
        record = read_record(self.run_dir)
        if record.status in ("shard generated", "generating", "importing", "merging"):
            raise UserError(f"{self.run_dir} is not a finished run (status {record.status!r}): "
                            + ("merge the shards with `fairbench merge` first" if record.status == "shard generated"
                               else "finish it first (re-run its command)"))

    def start(self) -> RunRecord:
        record = read_record(self.run_dir)  # as it is now, under the lock
        # every image checked once, before run.json changes: a damaged manifest is refused, not relabelled
        self.rows = finished_rows(self.run_dir, record.n_units)
        record.spec = self.cfg.model_dump()
        record.status = "labelling"
        return record

    def images(self, record: RunRecord) -> list[dict[str, Any]]:
        return self.rows

