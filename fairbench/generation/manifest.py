"""The append-only manifest: one JSON line per generated work unit."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable

from fairbench.io import read_jsonl, write_jsonl

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


def completed_rows(run_dir: Path) -> dict[str, dict[str, Any]]:
    """Rows of every unit done in `run_dir` (main manifest and per-rank parts) whose image exists."""
    done: dict[str, dict[str, Any]] = {}
    for path in [run_dir / MANIFEST, *sorted(run_dir.glob("manifest.rank*.jsonl"))]:
        for row in Manifest(path).rows():
            if (run_dir / row["image"]).is_file():
                done.setdefault(row["key"], row)
    return done


def consolidate(run_dir: Path, order: list[str]) -> list[dict[str, Any]]:
    """Fold per-rank parts into manifest.jsonl, in canonical unit order, and delete the parts."""
    done = completed_rows(run_dir)
    rank = {k: i for i, k in enumerate(order)}
    rows = sorted((r for r in done.values() if r["key"] in rank), key=lambda r: rank[r["key"]])
    parts = sorted(run_dir.glob("manifest.rank*.jsonl"))
    if parts:
        write_jsonl(run_dir / MANIFEST, rows)
        for p in parts:
            p.unlink()
    return rows
