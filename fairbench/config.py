"""Run configuration: one pydantic model holds every default; precedence is
defaults < --config YAML < CLI flags (a flag left unset is None and does not override)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from fairbench.errors import UserError, validation_message
from fairbench.io import load_yaml_file

DEFAULT_MODEL = "synthface-vl"

# A run's identity, defined once: every RunConfig field's tier (tests/test_identity.py holds the table).
#   units      which images the run holds (the prompts, their seeds, the model, the shard)
#   method     what acts on the model
#   sampling   how every image is drawn
#   precision  pixels move by numerical noise only: the dtype
#   batching   pixels move by numerical noise only: the batch shape
#   labelling  what labels the images
#   scoring    how labels and images become numbers (recomputed by `fairbench score`)
#   runtime    where the process runs and writes
TIERS: dict[str, str] = {
    "method": "method", "method_args": "method",
    "model": "units", "suite": "units", "split": "units", "limit": "units", "n": "units", "seed": "units",
    "steps": "sampling", "guidance_scale": "sampling", "height": "sampling", "width": "sampling",
    "negative_prompt": "sampling", "scheduler": "sampling",
    "dtype": "precision",
    "shard": "units",
    "batch_size": "batching", "batch_invariant": "batching",
    "classifier": "labelling", "classifier_args": "labelling", "detector": "labelling", "face_margin": "labelling",
    "low_confidence": "scoring", "n_boot": "scoring", "ci_level": "scoring", "reference": "scoring",
    "extractor": "scoring", "extractor_args": "scoring", "clip_model": "scoring",
    "device": "runtime", "out": "runtime", "baseline": "runtime", "baseline_out": "runtime", "progress": "runtime",
}
# what run.json records beside the spec that identifies the images: the suite file's and the weights' hashes
RECORDED_TIERS: dict[str, str] = {"suite_sha256": "units", "model_fingerprint": "units"}
# What each reader of two runs' settings does with a difference in a tier (a tier not named is accepted):
# resume continues one run; merge joins the shards of one run (which differ in `shard` by definition);
# compare pairs a method's run with its baseline (the method is what it measures); check tests a run
# against a regression reference.
POLICY: dict[str, dict[str, str]] = {
    "resume": {"units": "refuse", "method": "refuse", "sampling": "refuse", "precision": "refuse",
               "batching": "refuse"},
    "merge": {"units": "refuse", "method": "refuse", "sampling": "refuse", "precision": "refuse",
              "batching": "refuse", "labelling": "refuse"},
    "compare": {"units": "refuse", "sampling": "refuse", "precision": "refuse", "labelling": "refuse",
                "batching": "note"},
    "check": {"units": "refuse", "method": "refuse", "labelling": "refuse", "sampling": "flag", "precision": "flag",
              "batching": "flag"},
}


def tier_fields(*tiers: str, recorded: bool = False) -> tuple[str, ...]:
    """The settings in `tiers`, in table order (with run.json's recorded ones when asked)."""
    table = {**TIERS, **RECORDED_TIERS} if recorded else TIERS
    return tuple(k for k, t in table.items() if t in tiers)


def identity_fields(reader: str, action: str = "refuse", recorded: bool = False) -> tuple[str, ...]:
    """The settings on which `reader` (resume, merge, compare, check) takes `action` when two runs differ."""
    return tier_fields(*(t for t, a in POLICY[reader].items() if a == action), recorded=recorded)


class RunConfig(BaseModel):
    """Everything `fairbench run` needs. Field names are the YAML keys and the CLI flags."""

    # inf and NaN are refused everywhere: `--guidance-scale inf` would make NaN images with exit 0
    model_config = ConfigDict(extra="forbid", protected_namespaces=(), allow_inf_nan=False)

    method: str = Field(default="vanilla", description="debiasing method (fairbench ls methods)")
    method_args: dict[str, Any] = Field(default_factory=dict, description="method argument (repeatable)")
    model: str = Field(default=DEFAULT_MODEL, description="registered name, hub id or local pipeline folder")
    suite: str = Field(default="occupations", description="registered suite name or path of a suite YAML")
    split: Literal["train", "test", "all"] = "test"
    limit: int | None = Field(default=None, gt=0, description="only the first N prompts of the split")
    n: int = Field(default=16, gt=0, le=1_000_000, description="images per prompt")
    seed: int = Field(default=0, ge=0, le=2**63 - 1, description="global seed (per-image seeds derive from it)")
    batch_size: int | None = Field(default=None, gt=0, le=65_536, description="default: the model's")
    batch_invariant: bool = Field(default=False, description="compute each image on its own: bits independent of "
                                                             "--batch-size (slower)")
    steps: int | None = Field(default=None, gt=0, le=10_000, description="sampling steps (default: the model's)")
    guidance_scale: float | None = Field(default=None, ge=0, description="default: the model's")
    height: int | None = Field(default=None, gt=0)
    width: int | None = Field(default=None, gt=0)
    negative_prompt: str = ""
    scheduler: str | None = Field(default=None, description="ddim, ddpm, dpm++, euler, euler_a, lms, pndm")
    dtype: Literal["float32", "float16", "bfloat16"] | None = Field(
        default=None, description="default: the model's (the embedded worlds: bfloat16 where the device "
                                  "computes it natively; SD: float32)")
    device: str = Field(default="auto", description="auto, cpu, cuda, cuda:1, ...")
    classifier: str | None = Field(default=None, description="attribute classifier (fairbench ls classifiers)")
    classifier_args: dict[str, Any] = Field(default_factory=dict, description="classifier argument (repeatable)")
    detector: str | None = Field(default=None, description="face detector (fairbench ls detectors)")
    face_margin: float | None = Field(default=None, ge=0, description="face crop margin (default: the classifier's)")
    low_confidence: float = Field(default=0.8, ge=0, le=1, description="classifier confidence below which a label "
                                                                       "counts as low-confidence")
    n_boot: int = Field(default=1000, gt=0, le=1_000_000, description="bootstrap replicates")
    ci_level: float = Field(default=0.95, gt=0, lt=1, description="interval level")
    reference: str | None = Field(default=None, description="image folder or run directory to compute FD/KID against")
    extractor: str = Field(default="auto", description="FD features: auto (the classifier's own, else inception), "
                                                       "inception, clip, dinov2")
    extractor_args: dict[str, Any] = Field(default_factory=dict, description="extractor argument (repeatable)")
    clip_model: str | None = Field(default=None, description="hub id or folder of a CLIP model for the CLIP score")
    shard: str | None = Field(default=None, description="i/N: generate only shard i of N (merge with `fairbench merge`)")
    out: str | None = Field(default=None, description="run directory (default runs/<method>-<model>-<suite>)")
    baseline: bool = Field(default=True, description="for a method other than vanilla: also run (or resume) vanilla "
                                                     "with the same settings and end with the paired verdict")
    baseline_out: str | None = Field(default=None, description="run directory of the vanilla baseline "
                                                               "(default: beside --out)")
    progress: bool = Field(default=True, description="progress bars on stderr")

    @field_validator("limit", "n", "seed", "batch_size", "steps", "guidance_scale", "height", "width", "face_margin",
                     "low_confidence", "n_boot", "ci_level", mode="before")
    @classmethod
    def _no_bools(cls, v: Any) -> Any:
        if isinstance(v, bool):  # YAML `n: true` would otherwise become 1
            raise ValueError("expected a number, got a boolean")
        return v

    @field_validator("method", "model", "suite", "scheduler", "device", "classifier", "detector", "reference",
                     "extractor", "clip_model", "out", "baseline_out")
    @classmethod
    def _not_empty(cls, v: str | None) -> str | None:
        if v is not None and not v.strip():  # `--out "$UNSET"` must not fall back to a default
            raise ValueError("must not be empty")
        return v

    @field_validator("shard")
    @classmethod
    def _shard_format(cls, v: str | None) -> str | None:
        if v is None:
            return v
        m = re.fullmatch(r"(\d+)/(\d+)", v)
        if not m or int(m.group(2)) < 1 or int(m.group(1)) >= int(m.group(2)):
            raise ValueError(f"shard must be i/N with 0 <= i < N, got {v!r}")
        return v

    def with_model_defaults(self) -> "RunConfig":
        """Resolve every option that depends on the model: the unset steps, guidance, batch size, classifier,
        detector and dtype, and the `auto` extractor (which follows the classifier). The device stays as given
        (`auto` is this process's accelerator, resolved where the work runs)."""
        from fairbench.metrics.features import resolve_extractor
        from fairbench.models import default_dtype, model_defaults, resolve_device

        update = {k: v for k, v in model_defaults(self.model).items() if getattr(self, k) is None}
        if self.dtype is None:  # the model's wish, where this device computes it natively
            update["dtype"] = default_dtype(self.model, resolve_device(self.device))
        update["extractor"] = resolve_extractor(self.extractor, update.get("classifier", self.classifier))
        return self.model_copy(update=update)

    def shard_pair(self) -> tuple[int, int]:
        """(index, count) of the shard; (0, 1) when unsharded."""
        if not self.shard:
            return 0, 1
        i, n = self.shard.split("/")
        return int(i), int(n)

    def identity(self) -> dict[str, Any]:
        """The fields that decide which images the run holds."""
        keys = [k for k in identity_fields("resume") if not (k == "batch_size" and self.batch_invariant)]
        return {k: getattr(self, k) for k in keys}


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Safe-load a YAML config file into a dict of RunConfig fields."""
    doc = load_yaml_file(path, "config file")
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        raise UserError(f"config {path} must be a mapping of option: value")
    return {k.replace("-", "_"): v for k, v in doc.items()}


def build_config(file: str | None = None, **overrides: Any) -> RunConfig:
    """Defaults, then the YAML file, then every override that is not None."""
    values: dict[str, Any] = load_config_file(file) if file else {}
    if values:  # the file is checked on its own too: a flag that overrides a broken value does not hide it
        try:
            RunConfig(**values)
        except ValidationError as exc:
            raise UserError(f"config {file}: {validation_message(exc, RunConfig, key_word='option')}") from None
    for key, val in overrides.items():
        if val is None:
            continue
        if key in ("method_args", "classifier_args", "extractor_args"):
            base = values.get(key) or {}
            if not isinstance(base, dict):
                raise UserError(f"invalid value for {key} in {file}: expected a mapping of name: value, got {base!r}")
            values[key] = {**base, **val}
        else:
            values[key] = val
    try:
        return RunConfig(**values)
    except ValidationError as exc:
        raise UserError(validation_message(exc, RunConfig, key_word="option")) from None
