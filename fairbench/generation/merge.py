"""`fairbench merge`: combine shard run directories into one run."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from fairbench.errors import UserError
from fairbench.generation.manifest import MANIFEST, Manifest
from fairbench.io import ensure_writable_dir, write_jsonl
from fairbench.outputs.rundir import RUN_JSON, read_json


def _link_or_copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists():
        dst.unlink()
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def merge_shards(shard_dirs: list[Path], out: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Check that the shards are one run split N ways, then write their images and manifest to `out`.

    Returns the merged run record (shard removed from its spec) and the manifest rows in
    canonical order.
    """
    if any(Path(d).resolve() == out.resolve() for d in shard_dirs):
        raise UserError(f"--out {out} is one of the shards: merge into a new directory")
    records = [read_json(d / RUN_JSON) for d in shard_dirs]
    specs = [dict(r["spec"]) for r in records]
    shards = [s.pop("shard") for s in specs]
    for s in specs:
        s.pop("out", None)
    if any(s is None for s in shards):
        raise UserError("every directory to merge must be a shard run (made with --shard i/N)")
    counts = {int(s.split("/")[1]) for s in shards}
    indices = sorted(int(s.split("/")[0]) for s in shards)
    if len(counts) != 1 or indices != list(range(next(iter(counts)))):
        raise UserError(f"shards {sorted(shards)} do not cover 0..N-1 of one N exactly once")
    identity = {k: v for k, v in specs[0].items() if k not in ("device", "progress")}
    for d, s in zip(shard_dirs, specs):
        other = {k: v for k, v in s.items() if k not in ("device", "progress")}
        if other != identity:
            key = next(k for k in identity if identity[k] != other.get(k))
            raise UserError(f"{d} is a different run ({key}: {other.get(key)!r} vs {identity[key]!r})")
    prints = {r.get("model", {}).get("weights_fingerprint") for r in records}
    if len(prints) > 1:
        raise UserError(f"the shards were generated with different model weights (fingerprints "
                        f"{sorted(str(p)[:12] for p in prints)})")
    for d, r in zip(shard_dirs, records):
        if r.get("status") != "shard generated":
            raise UserError(f"{d} has not finished generating (status {r.get('status')!r}); re-run it first")
    ensure_writable_dir(out)
    rows = []
    for d in shard_dirs:
        for row in Manifest(d / MANIFEST).rows():
            _link_or_copy(d / row["image"], out / row["image"])
            rows.append(row)
    record = dict(records[0])
    record["spec"] = {**records[0]["spec"], "shard": None, "out": str(out)}
    record["merged_from"] = [str(d) for d in shard_dirs]
    record["n_units"] = sum(r["n_units"] for r in records)
    return record, rows


def write_merged_manifest(out: Path, rows: list[dict[str, Any]], order: list[str]) -> list[dict[str, Any]]:
    """Write the merged manifest in canonical unit order; every unit must be present once."""
    by_key = {r["key"]: r for r in rows}
    missing = [k for k in order if k not in by_key]
    if missing or len(rows) != len(order):
        raise UserError(f"shards hold {len(rows)} units for a run of {len(order)} "
                        f"({len(missing)} missing, e.g. {missing[:3]})")
    ordered = [by_key[k] for k in order]
    write_jsonl(out / MANIFEST, ordered)
    return ordered
