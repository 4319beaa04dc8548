"""fairbench's cache: one folder ($FAIRBENCH_CACHE, else ~/.cache/fairbench) and one key function.

What is cached (reference statistics, trained maps, tokens, edits, adapters, h-space heads) is rebuilt
when missing, so the cache may be deleted at any time. A cached result lives in `<root>/<kind>/<key>`,
where the key hashes everything that determines the result.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any


def root() -> Path:
    """fairbench's cache folder: $FAIRBENCH_CACHE, else ~/.cache/fairbench."""
    return Path(os.environ.get("FAIRBENCH_CACHE", Path.home() / ".cache" / "fairbench"))


def key(spec: Any, length: int = 24) -> str:
    """The cache key of a result: sha256 of the canonical JSON of everything that determines it."""
    return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:length]


def folder(kind: str, spec: Any) -> Path:
    """Where the result of `kind` determined by `spec` is cached."""
    return root() / kind / key(spec)
