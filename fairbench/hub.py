"""Loading models from a hub id or a local folder, with one clear error when neither works."""

from __future__ import annotations

from typing import Any, Callable

from fairbench.errors import UserError


def from_pretrained(loader: Callable[..., Any], model: str, revision: str | None, what: str) -> Any:
    """`loader.from_pretrained(model, revision=revision)`, turning load failures into a UserError."""
    try:
        return loader.from_pretrained(model, revision=revision)
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise UserError(f"cannot load {what} {model!r} (a local folder, or a hub id reachable or cached): {first}") from None
