"""The `fairbench` command's entry point: checks that the importable `fairbench` is this project's.

"fairbench" on the package index is an unrelated fairness library (mever-team/FairBench) that also
imports as `fairbench`. With both installed, `import fairbench` may find the other one; then this
says so in one line instead of failing deep inside an import.
"""

from __future__ import annotations

import sys


def main() -> int:
    """Run the fairbench CLI, or explain which `fairbench` package is in the way (exit 2)."""
    import fairbench

    if getattr(fairbench, "DISTRIBUTION", None) != "fairbench-t2i":
        where = getattr(fairbench, "__file__", None) or "an unknown location"
        print(f"error: the `fairbench` package importable here ({where}) is not fairbench-t2i (probably the "
              "unrelated FairBench project): uninstall it (pip uninstall fairbench) or use another environment",
              file=sys.stderr)
        return 2
    from fairbench.cli.main import main as cli_main

    return cli_main()


if __name__ == "__main__":
    raise SystemExit(main())
