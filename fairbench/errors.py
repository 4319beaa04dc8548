"""Exceptions that the CLI turns into one-line messages and exit codes."""


class UserError(Exception):
    """A mistake in the user's input (bad name, bad file, bad value): exit code 2, no traceback."""


class RegressionFound(Exception):
    """A regression check found a metric outside its tolerance band: exit code 1."""
