"""`fairbench merge`: combine shard run directories into one run."""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from fairbench.config import identity_fields
from fairbench.errors import UserError
from fairbench.generation.manifest import check_no_links, finished_rows
from fairbench.io import LOCK, TMP_SUFFIX, write_jsonl
from fairbench.outputs.rundir import MANIFEST, RunRecord, read_record


def _settings(record: RunRecord) -> dict[str, Any]:
    """The settings the shards of one run share (every one that merge refuses to mix, but the shard itself)."""
    return {k: record.spec.get(k) for k in identity_fields("merge") if k != "shard"}


def place_image(src: Path, dst: Path) -> None:
    """Put a shard's image at its place in the merged run: a hard link where the file system allows, else a
    copy; through a temp file and a rename, so an interrupted merge never leaves half an image."""
    if dst.is_file() and os.path.samefile(src, dst):
        return
    dst.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dst.parent, prefix=f".{dst.name}.", suffix=TMP_SUFFIX)
    os.close(fd)
    try:
        os.unlink(tmp)
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copy2(src, tmp)
        os.replace(tmp, dst)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def check_shards(shard_dirs: list[Path], out: Path) -> tuple[RunRecord, list[tuple[Path, dict[str, Any]]]]:
    """Check, writing nothing, that the shards are one finished run split N ways, each image its unit's own
    and unchanged, and that `out` is new or holds this same run. Returns the merged run record (shard
    removed from its spec) and every shard's manifest rows with the shard that holds them."""
    if any(Path(d).resolve() == out.resolve() for d in shard_dirs):
        raise UserError(f"--out {out} is one of the shards: merge into a new directory")
    records = [read_record(d) for d in shard_dirs]
    shards = [r.spec.get("shard") for r in records]
    if not all(isinstance(s, str) and re.fullmatch(r"\d+/\d+", s) for s in shards):
        raise UserError("every directory to merge must be a shard run (made with --shard i/N)")
    counts = {int(s.split("/")[1]) for s in shards}
    indices = sorted(int(s.split("/")[0]) for s in shards)
    if len(counts) != 1 or indices != list(range(next(iter(counts)))):
        raise UserError(f"shards {sorted(shards)} do not cover 0..N-1 of one N exactly once")
    identity = _settings(records[0])
    for d, r in zip(shard_dirs, records):
        other = _settings(r)
        if other != identity:
            key = next(k for k in {**identity, **other} if identity.get(k) != other.get(k))
            raise UserError(f"{d} is a different run ({key}: {other.get(key)!r} vs {identity.get(key)!r})")
    prints = {r.fingerprint for r in records}
    if len(prints) > 1:
        raise UserError(f"the shards were generated with different model weights (fingerprints "
                        f"{sorted(str(p)[:12] for p in prints)})")
    for d, r in zip(shard_dirs, records):
        if r.status != "shard generated":
            raise UserError(f"{d} has not finished generating (status {r.status!r}); re-run it first")
    rows = [(d, row) for d, r in zip(shard_dirs, records) for row in finished_rows(d, r.n_units)]
    record = records[0].model_copy(deep=True)
    record.spec = {**records[0].spec, "shard": None, "out": str(out)}
    record.merged_from = [str(d) for d in shard_dirs]
    record.n_units = len(rows)
    check_merge_target(out, record)
    return record, rows


def check_merge_target(out: Path, record: RunRecord) -> None:
    """`out` must be a new or empty folder, or the same merged run (a merge repeated, or resumed after it
    was killed); never another run's folder or a folder of other files."""
    from fairbench.pipeline import check_run_target

    check_run_target(out)  # not a link, not a folder of other files
    if not out.is_dir() or all(p.name == LOCK for p in out.iterdir()):
        return
    old = read_record(out)  # a manifest without run.json is refused here, naming the missing file
    if _settings(old) != _settings(record) or old.merged_from is None:
        raise UserError(f"--out {out} holds another run: merge into a new directory")
    check_no_links(out)


def merged_order(rows: list[tuple[Path, dict[str, Any]]], order: list[str]) -> list[tuple[Path, dict[str, Any]]]:
    """The shards' rows in canonical unit order; every unit of the run must be present once."""
    by_key = {r["key"]: (d, r) for d, r in rows}
    missing = [k for k in order if k not in by_key]
    if missing or len(rows) != len(order):
        raise UserError(f"shards hold {len(rows)} units for a run of {len(order)} "
                        f"({len(missing)} missing, e.g. {missing[:3]})")
    return [by_key[k] for k in order]


def write_merged(out: Path, ordered: list[tuple[Path, dict[str, Any]]]) -> list[dict[str, Any]]:
    """Place every shard's image in `out`, then write the merged manifest."""
    for shard, row in ordered:
        place_image(shard / row["image"], out / row["image"])
    rows = [row for _, row in ordered]
    write_jsonl(out / MANIFEST, rows)
    return rows
