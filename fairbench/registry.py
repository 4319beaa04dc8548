"""One generic registry type for methods, models, suites, classifiers, detectors and metrics."""

from __future__ import annotations

import inspect
import sys
import typing
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Annotated, Any, Callable, Generic, Iterator, TypeVar

from pydantic import ConfigDict, Field, TypeAdapter, ValidationError

from fairbench.errors import UserError, did_you_mean

T = TypeVar("T")
WORLDS = "fairbench.worlds"  # the entry-point group of world plugins (models, labellers, extractors, encoders)
_LOADED: dict[str, dict[str, str]] = {}  # entry-point group -> its plugins that failed to load (name -> error)


def load_plugins(group: str) -> dict[str, str]:
    """Call every plugin of an entry-point group once per process; returns those that failed (name -> error).

    One group can feed several registries (a world adds a model, a detector, a classifier...), so the load is
    per group, not per registry."""
    if group in _LOADED:
        return _LOADED[group]
    broken = _LOADED[group] = {}  # marked first: a plugin's own lookups during its load do not load it again
    for ep in entry_points(group=group):
        try:
            ep.load()()
        except Exception as exc:  # one broken plugin must not break every lookup: name it, skip it
            broken[ep.name] = f"{type(exc).__name__}: {exc}"
            print(f"warning: the {group} plugin {ep.name!r} ({ep.value}) failed to load and is skipped "
                  f"({type(exc).__name__}: {exc})", file=sys.stderr)
    return broken


_FINITE = ConfigDict(allow_inf_nan=False)
# A constructor argument that counts work (steps, epochs, images, rounds, widths): at least 1, and at most a
# budget beyond any run's, so that a typo (steps=1e12) is refused instead of started.
MAX_COUNT = 1_000_000
Count = Annotated[int, Field(ge=1, le=MAX_COUNT)]


def _is_model(hint: Any) -> bool:
    """Whether a type carries its own pydantic config (TypeAdapter refuses a second one)."""
    return isinstance(hint, type) and (hasattr(hint, "model_config") or hasattr(hint, "__pydantic_config__"))


def bind_arguments(cls: Any, args: dict[str, Any], what: str) -> dict[str, Any]:
    """`args` checked against `cls`'s constructor: names, required ones, and each value against its annotation."""
    params = {n: p for n, p in inspect.signature(cls).parameters.items()
              if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    for key in args:
        if key not in params:
            accepted = ", ".join(params) or "none"
            raise UserError(f"{what} has no argument {key!r}.{did_you_mean(key, params)} Arguments: {accepted}")
    missing = [n for n, p in params.items() if p.default is p.empty and n not in args]
    if missing:
        raise UserError(f"{what} needs the argument(s) {', '.join(missing)}")
    try:
        hints = typing.get_type_hints(cls.__init__, include_extras=True)  # with Count's bounds
    except (NameError, TypeError):  # a plugin's annotation that does not resolve: check names only
        hints = {}
    bound = {}
    for key, value in args.items():
        if key not in hints:
            bound[key] = value
            continue
        try:  # strict: a YAML/CLI value is already typed, so "5" for an int or 1 for a bool is a mistake;
            # NaN and infinity are no setting of anything (lr=.nan would train to NaN weights)
            adapter = TypeAdapter(hints[key], config=None if _is_model(hints[key]) else _FINITE)
            bound[key] = adapter.validate_python(value, strict=True)
        except ValidationError as exc:
            hint = typing.get_args(hints[key])[0] if typing.get_origin(hints[key]) is Annotated else hints[key]
            expected = getattr(hint, "__name__", None) or str(hint)
            raise UserError(f"{what}: argument {key}={value!r} must be {expected} "
                            f"({exc.errors()[0]['msg'].lower()})") from None
    return bound


@dataclass
class Entry(Generic[T]):
    """A registered object plus the metadata `fairbench ls` shows."""

    name: str
    obj: T
    meta: dict[str, Any] = field(default_factory=dict)


class Registry(Generic[T]):
    """Name -> object map with duplicate-name errors and did-you-mean lookups."""

    def __init__(self, kind: str, entry_point_group: str | None = None) -> None:
        self.kind = kind
        self._entries: dict[str, Entry[T]] = {}
        self._entry_point_group = entry_point_group

    def register(self, name: str, **meta: Any) -> Callable[[T], T]:
        """Decorator form: `@REG.register("name", level=...)`."""

        def deco(obj: T) -> T:
            self.add(name, obj, **meta)
            return obj

        return deco

    def add(self, name: str, obj: T, **meta: Any) -> None:
        """Register `obj` under `name`; a second registration of the same name is an error."""
        if name in self._entries and self._entries[name].obj is not obj:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._entries[name] = Entry(name, obj, meta)

    @property
    def broken_plugins(self) -> dict[str, str]:
        """Plugins of this registry's entry-point group that failed to load (name -> error)."""
        return self._load_plugins()

    def _load_plugins(self) -> dict[str, str]:
        return load_plugins(self._entry_point_group) if self._entry_point_group else {}

    def __contains__(self, name: str) -> bool:
        self._load_plugins()
        return name in self._entries

    def entry(self, name: str) -> Entry[T]:
        """Look `name` up; an unknown name is a UserError listing close matches."""
        self._load_plugins()
        if name not in self._entries:
            raise UserError(f"unknown {self.kind} {name!r}.{did_you_mean(name, self._entries)} "
                            f"Available: {', '.join(sorted(self._entries))}")
        return self._entries[name]

    def get(self, name: str) -> T:
        """The object registered under `name`."""
        return self.entry(name).obj

    def build(self, name: str, args: dict[str, Any] | None = None) -> Any:
        """Instantiate the class registered under `name` with arguments bound and type-checked first.

        Only the binding is a user error: a TypeError or ValueError raised inside the constructor is a bug.
        """
        cls = self.get(name)
        return cls(**bind_arguments(cls, args or {}, f"{self.kind} {name!r}"))  # type: ignore[operator]

    def __iter__(self) -> Iterator[Entry[T]]:
        self._load_plugins()
        return iter(sorted(self._entries.values(), key=lambda e: e.name))

    def names(self) -> list[str]:
        """Sorted registered names."""
        return [e.name for e in self]
