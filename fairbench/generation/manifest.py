"""The append-only manifest: one JSON line per generated work unit, each naming its unit's own image.

A row's image is always `images/<prompt id>/<sample index><suffix>` inside the run directory, reached
through real folders: a row that names anything else (an absolute path, `..`, another unit's file,
a symbolic link) is never read or written through, so a run directory cannot point outside itself.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from fairbench.errors import UserError, validation_message
from fairbench.io import read_jsonl, sha256_file, write_jsonl
from fairbench.outputs.rundir import IMAGE_SUFFIXES, IMAGES, MANIFEST, RANK_MANIFEST, rank_manifests, read_record
from fairbench.prompts import SAFE_ID


class ManifestRow(BaseModel):
    """One manifest line as fairbench writes it: a generated unit (with its seed) or an imported image
    (`source: external`, no seed, the file it came from)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    key: str
    prompt_id: str
    sample_idx: int = Field(ge=0)
    prompt: str
    prompt_used: str
    seed: int | None
    model: str
    method: str
    image: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    nsfw: bool
    source: Literal["external"] | None = None
    original: str | None = None


def row_error(row: Any) -> str | None:
    """Why `row` is not a manifest row (one line), or None when it is one."""
    if not isinstance(row, dict):
        return f"a JSON {type(row).__name__}, not a row"
    try:
        ManifestRow.model_validate(row)
    except ValidationError as exc:
        return validation_message(exc, ManifestRow)
    return None


def unit_key(prompt_id: str, sample_idx: int) -> str:
    """The one key of a unit within a run: `<prompt id>/<sample index, 5 digits>`; also its image's stem."""
    return f"{prompt_id}/{sample_idx:05d}"


def unit_image(key: str, suffix: str = ".png") -> str:
    """Where a unit's image lives inside its run directory."""
    return f"{IMAGES}/{key}{suffix}"


def own_image(run_dir: Path, row: dict[str, Any]) -> Path | None:
    """The file a manifest row names when it is its own unit's image inside `run_dir`, reached through no
    symbolic link; None for a row that names anything else (it then counts for nothing). `row` is a manifest
    row (`row_error` is None): both callers check that first, once."""
    pid, idx, key, image = (row.get(k) for k in ("prompt_id", "sample_idx", "key", "image"))
    if not (isinstance(pid, str) and SAFE_ID.fullmatch(pid) and type(idx) is int and idx >= 0
            and key == unit_key(pid, idx) and isinstance(image, str)):
        return None
    if not any(image == unit_image(key, s) for s in IMAGE_SUFFIXES):
        return None
    path = run_dir
    for part in image.split("/"):
        path = path / part
        if path.is_symlink():
            return None
    return path


def check_no_links(run_dir: Path) -> None:
    """Refuse a run directory whose images/ folders are symbolic links: an image written or read through
    one would land outside the run directory."""
    folders = [run_dir / IMAGES]
    if folders[0].is_dir() and not folders[0].is_symlink():
        folders += sorted(folders[0].iterdir())
    for f in folders:
        if f.is_symlink():
            raise UserError(f"{f} is a symbolic link: fairbench reads and writes a run's images only inside its run "
                            "directory; remove the link (its target is left as it is) or choose another --out")


def check_no_strangers(run_dir: Path, keys: Iterable[str]) -> None:
    """Refuse to resume into a run directory whose images/ holds an image that is no unit's (the run would
    keep it beside its own), or a folder named like an image. Files that are no image (a user's notes, a
    temp file) are left alone."""
    folder = run_dir / IMAGES
    if not folder.is_dir() or folder.is_symlink():
        return
    keys = set(keys)
    for path in sorted(folder.rglob("*")):
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        if path.is_dir():  # the image could never be written there
            raise UserError(f"{path} is a folder where an image belongs: remove it, or choose another --out")
        rel = path.relative_to(folder)
        if len(rel.parts) != 2 or path.suffix not in IMAGE_SUFFIXES or f"{rel.parts[0]}/{path.stem}" not in keys:
            raise UserError(f"{path} is none of this run's images: remove it, or choose another --out")


def part_name(rank: int) -> str:
    """Manifest file of one process under a multi-process launch."""
    return RANK_MANIFEST.format(rank=rank)


class Manifest:
    """Append-only JSON lines; a torn last line (a crash mid-write) is cut off on open."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._repair_tail()

    def _repair_tail(self) -> None:
        if not self.path.exists():
            return
        data = self.path.read_bytes()
        keep = data.rfind(b"\n") + 1
        if keep != len(data):
            with open(self.path, "r+b") as fh:
                fh.truncate(keep)

    def rows(self) -> list[dict[str, Any]]:
        """All complete rows in file order."""
        return read_jsonl(self.path)

    def append(self, rows: Iterable[dict[str, Any]]) -> None:
        """Append rows and fsync, so a row on disk always names an image already on disk."""
        payload = "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows)
        if not payload:
            return
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(payload)
            fh.flush()
            os.fsync(fh.fileno())


def completed_rows(run_dir: Path, units: dict[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    """Rows of every unit done in `run_dir` (main manifest and per-rank parts) whose own image is on disk
    with the sha256 its row records. An image that is missing, swapped, truncated, garbage, a link, or
    another unit's does not count as done, so a resumed run regenerates it. With `units` (key ->
    WorkUnit), a row whose seed or prompt is not its unit's is refused: the images belong to another run."""
    done: dict[str, dict[str, Any]] = {}
    for path in [run_dir / MANIFEST, *rank_manifests(run_dir)]:
        for row in Manifest(path).rows():
            key = row.get("key")
            if key in done or row_error(row) is not None:  # a damaged row: its unit is made again
                continue
            unit = units.get(key) if units is not None else None
            if unit is not None and (row.get("seed") != unit.seed or row.get("prompt") != unit.prompt):
                raise UserError(f"{path}: unit {key!r} was made with seed {row.get('seed')} and prompt "
                                f"{row.get('prompt')!r}, this run's is seed {unit.seed}, {unit.prompt!r}: the "
                                "directory holds another run's images; choose another --out")
            image = own_image(run_dir, row)
            if image is not None and image.is_file() and sha256_file(image) == row.get("sha256"):
                done[key] = row
    return done


def consolidate(run_dir: Path, order: list[str], units: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Rewrite manifest.jsonl as one valid row per finished unit, in canonical unit order: per-rank
    parts folded in, duplicate and corrupt lines and rows of missing images dropped."""
    done = completed_rows(run_dir, units)
    rank = {k: i for i, k in enumerate(order)}
    rows = sorted((r for r in done.values() if r["key"] in rank), key=lambda r: rank[r["key"]])
    parts = rank_manifests(run_dir)
    main = run_dir / MANIFEST
    if parts or (main.read_bytes() if main.exists() else b"") != "".join(
            json.dumps(r, sort_keys=True) + "\n" for r in rows).encode():
        write_jsonl(main, rows)
        for p in parts:
            p.unlink()
    return rows


def finished_rows(run_dir: Path, n_units: Any) -> list[dict[str, Any]]:
    """The manifest of a finished run, checked whole before anything reads an image: every line a row
    naming its own unit's image, once, every image's bytes matching its sha256, `n_units` rows in all.
    The first thing that is not so is a one-line refusal naming the line or the image."""
    path = run_dir / MANIFEST
    fix = "re-run `fairbench run` with the run's settings (or `fairbench score`) to repair it"
    if n_units == 0 and not path.exists():  # a shard that drew no batch
        return []
    if path.is_symlink() or not path.is_file():
        raise UserError(f"{path} not found: is {run_dir} a finished fairbench run?")
    try:
        lines = path.read_text(encoding="utf-8").split("\n")
    except UnicodeDecodeError as exc:
        raise UserError(f"{path} is not UTF-8 text (byte {exc.start}): {fix}") from None
    if lines[-1]:
        raise UserError(f"{path} line {len(lines)} is torn (no line end): {fix}")
    rows, seen = [], set()
    for number, line in enumerate(lines[:-1], start=1):
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            raise UserError(f"{path} line {number} is not JSON: {fix}") from None
        if (error := row_error(row)) is not None:
            raise UserError(f"{path} line {number} is not a manifest row ({error}): {fix}")
        image = own_image(run_dir, row)
        if image is None:
            raise UserError(f"{path} line {number} is not a row naming its own unit's image inside the run "
                            f"directory: {fix}")
        if row["key"] in seen:
            raise UserError(f"{path} line {number} repeats unit {row['key']!r}: {fix}")
        if not image.is_file() or sha256_file(image) != row.get("sha256"):
            raise UserError(f"{image} is missing or does not match its manifest sha256 (swapped, truncated or "
                            f"replaced): {fix}")
        seen.add(row["key"])
        rows.append(row)
    if type(n_units) is not int or len(rows) != n_units:
        raise UserError(f"{path} lists {len(rows)} images of a run of {n_units} (a line lost or added): {fix}")
    return rows


def run_rows(run_dir: Path) -> list[dict[str, Any]]:
    """`finished_rows` of a run directory, with the number of units its run.json records."""
    return finished_rows(run_dir, read_record(run_dir).n_units)
