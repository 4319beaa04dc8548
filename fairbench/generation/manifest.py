"""The append-only manifest: one JSON line per generated work unit."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable

from fairbench.errors import UserError
from fairbench.io import read_jsonl, sha256_file, write_jsonl

MANIFEST = "manifest.jsonl"


def part_name(rank: int) -> str:
    """Manifest file of one process under a multi-process launch."""
    return f"manifest.rank{rank}.jsonl"


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
    """Rows of every unit done in `run_dir` (main manifest and per-rank parts) whose image is on disk
    with the sha256 its row records. An image that is missing, swapped, truncated or garbage does
    not count as done, so a resumed run regenerates it. With `units` (key -> WorkUnit), a row whose
    seed or prompt is not its unit's is refused: the images belong to another run."""
    done: dict[str, dict[str, Any]] = {}
    for path in [run_dir / MANIFEST, *sorted(run_dir.glob("manifest.rank*.jsonl"))]:
        for row in Manifest(path).rows():
            key = row.get("key")
            if key in done or not isinstance(row.get("image"), str):
                continue
            unit = units.get(key) if units is not None else None
            if unit is not None and (row.get("seed") != unit.seed or row.get("prompt") != unit.prompt):
                raise UserError(f"{path}: unit {key!r} was made with seed {row.get('seed')} and prompt "
                                f"{row.get('prompt')!r}, this run's is seed {unit.seed}, {unit.prompt!r}: the "
                                "directory holds another run's images; choose another --out")
            image = run_dir / row["image"]
            if image.is_file() and sha256_file(image) == row.get("sha256"):
                done[key] = row
    return done


def consolidate(run_dir: Path, order: list[str], units: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Rewrite manifest.jsonl as one valid row per finished unit, in canonical unit order: per-rank
    parts folded in, duplicate and corrupt lines and rows of missing images dropped."""
    done = completed_rows(run_dir, units)
    rank = {k: i for i, k in enumerate(order)}
    rows = sorted((r for r in done.values() if r["key"] in rank), key=lambda r: rank[r["key"]])
    parts = sorted(run_dir.glob("manifest.rank*.jsonl"))
    main = run_dir / MANIFEST
    if parts or (main.read_bytes() if main.exists() else b"") != "".join(
            json.dumps(r, sort_keys=True) + "\n" for r in rows).encode():
        write_jsonl(main, rows)
        for p in parts:
            p.unlink()
    return rows
