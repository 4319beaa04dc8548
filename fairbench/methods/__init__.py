"""Method registry. Built-ins register here; baselines/ and third parties through the
`fairbench.methods` entry-point group (a callable that registers into METHODS)."""

from __future__ import annotations

from typing import Any

from fairbench.errors import UserError
from fairbench.methods.base import LEVELS, Method, MethodContext
from fairbench.methods.fairmap import FairMapping
from fairbench.methods.vanilla import Vanilla
from fairbench.registry import Registry

METHODS: Registry[type[Method]] = Registry("method", entry_point_group="fairbench.methods")


def register_method(name: str, cls: type[Method]) -> None:
    """Add a method class to the registry (its level and source come from the class)."""
    if cls.level not in LEVELS:
        raise ValueError(f"method {name!r} has level {cls.level!r}; expected one of {LEVELS}")
    METHODS.add(name, cls, level=cls.level, source=cls.source)


register_method("vanilla", Vanilla)
register_method("fairmap", FairMapping)


def build_method(name: str, args: dict[str, Any] | None = None) -> Method:
    """Instantiate a registered method with its --method-arg values."""
    return METHODS.build(name, args)


def check_architecture(name: str, method: Method, backend: Any) -> None:
    """Refuse, before anything is prepared or generated, a method that cannot act on this pipeline."""
    if backend.arch in method.architectures:
        return
    able = [e.name for e in METHODS if backend.arch in e.obj.architectures]
    raise UserError(f"method {name!r} ({method.level} level) cannot run on {type(backend.pipe).__name__} "
                    f"(architecture {backend.arch!r}; it needs {' or '.join(method.architectures)}: a UNet "
                    f"conditioned on token states). On this pipeline: {', '.join(able)}")


__all__ = ["METHODS", "Method", "MethodContext", "build_method", "check_architecture", "register_method"]
