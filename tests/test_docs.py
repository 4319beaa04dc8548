"""The docs cannot drift from the code: every command they show parses, and every table matches."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[1] / "docs"


def _commands(page: Path) -> list[list[str]]:
    """Every `fairbench ...` command in the page's bash blocks, line continuations joined."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", page.read_text(encoding="utf-8"), flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            if line.strip().startswith("fairbench "):
                commands.append(shlex.split(line)[1:])
    return commands


def test_real_sd_commands_parse_and_name_registered_things():
    from fairbench.classifiers import CLASSIFIERS
    from fairbench.cli.main import _key_values, build_parser
    from fairbench.methods import METHODS
    from fairbench.models import MODELS
    from fairbench.registry import bind_arguments

    commands = _commands(DOCS / "real-sd.md")
    assert len(commands) >= 5
    runs = [c for c in commands if c[0] == "run"]
    assert {c[c.index("--model") + 1] for c in runs} == {"sd15", "sd21", "sdxl"}
    for argv in commands:
        args = build_parser().parse_args(argv)  # an unknown flag or choice raises
        if args.command != "run":
            continue
        assert args.model in MODELS and args.method in METHODS
        assert MODELS.get(args.model).count("/") == 1  # a hub id
        bind_arguments(CLASSIFIERS.get(args.classifier), _key_values(args.classifier_args, "--classifier-arg") or {},
                       args.classifier)  # every --classifier-arg is a real argument of the right type
    page = (DOCS / "real-sd.md").read_text(encoding="utf-8")
    for name in ("sd15", "sd21", "sdxl"):  # the models table quotes the registry
        assert f"| `{name}` | {MODELS.get(name)} |" in page


def test_architecture_table_matches_the_methods():
    from fairbench.methods import METHODS

    text = (DOCS / "architectures.md").read_text(encoding="utf-8")
    table = text.split("<!-- architecture-table -->")[1].split("<!-- /architecture-table -->")[0]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in table.strip().splitlines()[2:]]
    assert sorted(r[0] for r in rows) == METHODS.names()
    arch_of = {"sd1": "sd", "sd2": "sd", "sdxl": "sdxl", "other (sd3)": "other"}
    header = [c.strip() for c in table.strip().splitlines()[0].strip("|").split("|")]
    for row in rows:
        cls = METHODS.get(row[0])
        assert row[1] == cls.level
        for col, cell in zip(header[2:], row[2:]):
            assert cell == ("runs" if arch_of[col] in cls.architectures else "refuses"), (row[0], col)


@pytest.mark.parametrize("page", ["README.md", "docs/worlds.md"])
def test_readme_commands_parse(page):
    from fairbench.cli.main import build_parser

    for argv in _commands(DOCS.parent / page):
        if any(a.startswith(("<", "/path")) for a in argv):
            continue
        build_parser().parse_args(argv)


def test_shipped_files_name_no_machine_path():
    """Assets, results and docs travel to other machines: an absolute home, work or temp path in one is a leak."""
    root = DOCS.parent
    files = [root / "README.md", *(f for d in ("fairbench", "results", "docs", "prompts") for f in (root / d).rglob("*")
                                   if f.suffix in (".json", ".yaml", ".csv", ".md", ".txt"))]
    leak = re.compile(r"(?<![\w.~-])/(?:work|root|home|Users|tmp|private/var)/[\w.-]")
    assert [str(f.relative_to(root)) for f in files if leak.search(f.read_text(errors="replace"))] == []
