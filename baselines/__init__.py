"""Competing debiasing methods, registered into fairbench's method registry.

Registration goes through the `fairbench.methods` entry point (pyproject.toml), exactly as a
third-party package would plug in its own method.
"""


def register() -> None:
    """Register every baseline method (called once by fairbench's method registry)."""
