"""Exceptions that the CLI turns into one-line messages and exit codes, and the helpers that word them."""

from __future__ import annotations

import difflib
from typing import TYPE_CHECKING, Any, Iterable

if TYPE_CHECKING:
    from pydantic import ValidationError


class UserError(Exception):
    """A mistake in the user's input (bad name, bad file, bad value): exit code 2, no traceback."""


class RegressionFound(Exception):
    """A regression check found a metric outside its tolerance band: exit code 1."""


def did_you_mean(name: str, options: Iterable[str]) -> str:
    """' Did you mean x, y?' for the options closest to a misspelt name ('' when none is close)."""
    close = difflib.get_close_matches(name, list(options), n=3)
    return f" Did you mean {', '.join(close)}?" if close else ""


def validation_message(exc: ValidationError, model: Any = None, key_word: str = "key") -> str:
    """One line for a pydantic error: an unknown key first (with its closest field), else the first error."""
    errors = exc.errors()
    extra = [e for e in errors if e["type"] == "extra_forbidden"]
    err = (extra or errors)[0]
    where = ".".join(str(p) for p in err["loc"])
    more = f" ({len(errors) - 1} more)" if len(errors) > 1 else ""
    if extra:
        fields = getattr(model, "model_fields", {}) if len(err["loc"]) == 1 else {}
        return f"unknown {key_word} {where!r}.{did_you_mean(str(err['loc'][-1]), fields)}{more}"
    msg = err["msg"].removeprefix("Value error, ")
    if not err["loc"]:  # a check of the whole document words its own message
        return f"{msg}{more}"
    value = err.get("input")
    shown = f" (got {value!r})" if isinstance(value, (int, float, str, bool)) and err["type"] != "missing" else ""
    return f"invalid value for {where}: {msg}{shown}{more}"
