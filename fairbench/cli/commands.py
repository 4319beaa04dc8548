"""Subcommands that plugins add to `fairbench` (a world's own training commands): name -> (add, run).

`add(subparsers)` adds the subcommand's parser; `run(args)` runs it and returns the exit code.
"""

from __future__ import annotations

from typing import Any, Callable

from fairbench.registry import Registry

# a group of its own: building the parser loads these, and a world's models, labellers and weights stay unloaded
COMMANDS: Registry[tuple[Callable[[Any], None], Callable[[Any], int]]] = Registry("command",
                                                                                   entry_point_group="fairbench.commands")
