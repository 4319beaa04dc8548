"""`fairbench score`: images that another system made, imported into a run directory.

The prompts file (CSV or JSON lines) maps each image file to a prompt id and text, optionally to a
sample index, a model and a method. Every row is checked before anything is written: the run
directory then holds the same manifest (sha256 per image, `source: external`), labels, metrics and
tables as a generated run, so `report`, `leaderboard`, `compare` and `check` read it unchanged.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from PIL import Image, UnidentifiedImageError
from pydantic import ValidationError

from fairbench.errors import UserError, validation_message
from fairbench.generation.manifest import IMAGE_SUFFIXES, unit_image, unit_key
from fairbench.io import sha256_bytes
from fairbench.outputs.rundir import RUN_SUITE
from fairbench.prompts import PromptSpec, SuiteSpec, load_suite

REQUIRED = ("image", "prompt_id")
OPTIONAL = ("prompt", "sample_idx", "model", "method")


@dataclass(frozen=True)
class ExternalImage:
    """One imported image: where it is, which prompt it answers, and the sha256 of the file that was checked."""

    source: Path
    prompt_id: str
    sample_idx: int
    prompt: str
    sha256: str

    @property
    def key(self) -> str:
        """The unit key a generated run would give it."""
        return unit_key(self.prompt_id, self.sample_idx)

    @property
    def image(self) -> str:
        """Its path inside the run directory (the generated layout, the original extension)."""
        return unit_image(self.key, self.source.suffix.lower())


def read_prompt_table(path: Path) -> pd.DataFrame:
    """The prompts file as strings, one row per image; a one-line error for anything but CSV or JSON lines."""
    if not path.is_file():
        raise UserError(f"prompts file not found: {path}")
    try:
        if path.suffix.lower() == ".csv":
            table = pd.read_csv(path, dtype=str, keep_default_na=False)
        elif path.suffix.lower() in (".jsonl", ".ndjson"):
            rows = []
            for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
                if not line.strip():
                    continue
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise ValueError(f"line {number} is not JSON ({exc.msg})") from None
                if not isinstance(rows[-1], dict):
                    raise ValueError(f"line {number} is not a JSON object")
            table = pd.DataFrame(rows).astype(str)
        else:
            raise UserError(f"prompts file {path}: expected .csv or .jsonl, got {path.suffix or 'no extension'!r}")
    except (ValueError, UnicodeDecodeError, pd.errors.ParserError) as exc:
        raise UserError(f"prompts file {path} cannot be read: {str(exc).splitlines()[0][:200]}") from None
    missing = [c for c in REQUIRED if c not in table.columns]
    if missing:
        raise UserError(f"prompts file {path} lacks the column(s) {', '.join(missing)} "
                        f"(columns: {', '.join(REQUIRED)}, optional {', '.join(OPTIONAL)})")
    if table.empty:
        raise UserError(f"prompts file {path} lists no images")
    return table


def single_value(table: pd.DataFrame, column: str, given: str | None, path: Path) -> str | None:
    """The one model (or method) name of the images: the flag's, else the file's column, which must agree."""
    values = sorted(set(table[column])) if column in table.columns else []
    if given is not None:
        if values and values != [given]:
            raise UserError(f"prompts file {path} names {column} {values}, not --{column} {given!r}")
        return given
    if len(values) > 1:
        raise UserError(f"prompts file {path} mixes {column}s {values}: score each {column} into its own run")
    return values[0] if values else None


def _sample_indices(table: pd.DataFrame, path: Path) -> list[int]:
    if "sample_idx" not in table.columns:
        return table.groupby("prompt_id", sort=False).cumcount().tolist()
    try:
        idx = [int(v) for v in table["sample_idx"]]
    except ValueError:
        raise UserError(f"prompts file {path}: sample_idx must be whole numbers") from None
    if min(idx) < 0:
        raise UserError(f"prompts file {path}: sample_idx must not be negative")
    return idx


def _checked_sha256(file: Path, row: int, path: Path) -> str:
    """sha256 of an image file that decodes completely (one read; the bytes are not kept)."""
    data = file.read_bytes()
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        # a decompression bomb (more pixels than PIL's limit) is refused like any file that is no image
        raise UserError(f"{file} (row {row} of {path}) is not a readable image: "
                        f"{str(exc).splitlines()[0][:120] or type(exc).__name__}") from None
    return sha256_bytes(data)


def imported_bytes(item: ExternalImage) -> bytes:
    """The image's bytes for the run directory, refused if the file changed since it was checked."""
    data = item.source.read_bytes()
    if sha256_bytes(data) != item.sha256:
        raise UserError(f"{item.source} changed while it was being scored: score the folder again")
    return data


def run_suite(prompts: dict[str, str], suite: str | None, path: Path) -> SuiteSpec:
    """The suite the images answer: the given suite's prompts that the file names, in the suite's order
    (so its reference counts and requested groups apply), or one prompt per id of the file."""
    if suite is None:
        try:
            specs = [PromptSpec(id=pid, vars={"prompt": text}) for pid, text in prompts.items()]
            return SuiteSpec(name=f"external-{path.stem}", description=f"prompts of {path.name}",
                             template="{prompt}", prompts=specs)
        except ValidationError as exc:
            raise UserError(f"prompts file {path}: {validation_message(exc)}") from None
    spec = load_suite(suite)
    known = {p.id for p in spec.prompts}
    unknown = [pid for pid in prompts if pid not in known]
    if unknown:
        raise UserError(f"prompts file {path}: prompt id {unknown[0]!r} is not in suite {spec.name!r}"
                        + (f" ({len(unknown) - 1} more)" if len(unknown) > 1 else ""))
    return spec.model_copy(update={"prompts": [p for p in spec.prompts if p.id in prompts]})


@dataclass(frozen=True)
class ExternalSet:
    """A checked prompts file: the suite its images answer, the images in canonical order, their model and method."""

    suite: SuiteSpec
    images: list[ExternalImage]
    model: str
    method: str

    @property
    def n(self) -> int:
        """Most images of one prompt (a generated run's n)."""
        return max(e.sample_idx for e in self.images) + 1


def read_external(images_dir: Path, path: Path, suite: str | None = None, model: str | None = None,
                  method: str | None = None) -> ExternalSet:
    """Every row of the prompts file checked (files, decoding, prompt ids, duplicates), before any write."""
    if not images_dir.is_dir():
        raise UserError(f"image folder not found: {images_dir}")
    table = read_prompt_table(path)
    model = single_value(table, "model", model, path) or "external"
    method = single_value(table, "method", method, path) or "external"
    if "prompt" not in table.columns and suite is None:
        raise UserError(f"prompts file {path} has no prompt column: add one, or give --suite to take the texts from")
    root = images_dir.resolve()
    for col, what in (("image", "image file"), ("prompt_id", "prompt id")):
        blank = table.index[table[col].str.strip() == ""]
        if len(blank):
            raise UserError(f"prompts file {path}: row {blank[0] + 1} has no {what}")
    control = table.index[table["image"].str.contains(r"[\x00-\x1f]", regex=True)]
    if len(control):  # a NUL cannot be in a file name; a newline or tab is a mistake in the table
        raise UserError(f"prompts file {path}: row {control[0] + 1} names an image with a control character "
                        f"({table['image'][control[0]]!r})")
    dup = table["image"][table["image"].duplicated()]
    if len(dup):
        raise UserError(f"prompts file {path} lists image {dup.iloc[0]!r} twice")
    indices = _sample_indices(table, path)
    keys = [unit_key(p, i) for p, i in zip(table["prompt_id"], indices)]
    seen: set[str] = set()
    for k in keys:
        if k in seen:
            raise UserError(f"prompts file {path} has two images for prompt {k.split('/')[0]!r}, sample {int(k.split('/')[1])}")
        seen.add(k)
    texts: dict[str, str] = {}
    if "prompt" in table.columns:
        for pid, text in zip(table["prompt_id"], table["prompt"]):
            if texts.setdefault(pid, text) != text:
                raise UserError(f"prompts file {path}: prompt id {pid!r} has two texts ({texts[pid]!r}, {text!r})")
    spec = run_suite(texts or dict.fromkeys(table["prompt_id"], ""), suite, path)
    if not texts:
        texts = {p.id: spec.text(p) for p in spec.prompts}
    images = []
    for row, (name, pid, idx) in enumerate(zip(table["image"], table["prompt_id"], indices), start=1):
        file = (images_dir / name).resolve()
        if not file.is_relative_to(root):  # a row must not reach outside the image folder
            raise UserError(f"prompts file {path}: image {name!r} (row {row}) is outside {images_dir}")
        if not file.is_file():
            raise UserError(f"prompts file {path}: image {name!r} (row {row}) not found in {images_dir}")
        if file.suffix.lower() not in IMAGE_SUFFIXES:
            raise UserError(f"{file} (row {row} of {path}) is not an image file ({', '.join(IMAGE_SUFFIXES)})")
        images.append(ExternalImage(file, pid, idx, texts[pid], _checked_sha256(file, row, path)))
    order = {p.id: i for i, p in enumerate(spec.prompts)}
    return ExternalSet(spec, sorted(images, key=lambda e: (order[e.prompt_id], e.sample_idx)), model, method)


def manifest_row(item: ExternalImage, model: str, method: str) -> dict[str, Any]:
    """The manifest line of an imported image: a generated run's fields, no seed, `source: external`."""
    return {"key": item.key, "prompt_id": item.prompt_id, "sample_idx": item.sample_idx, "prompt": item.prompt,
            "seed": None, "model": model, "method": method, "image": item.image, "sha256": item.sha256,
            "prompt_used": item.prompt, "nsfw": False, "source": "external", "original": item.source.name}
