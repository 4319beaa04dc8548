"""`python -m fairbench` entry point."""

from fairbench.cli.main import main

raise SystemExit(main())
