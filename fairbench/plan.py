"""`fairbench plan PLAN.yaml`: a matrix of models x methods x suites, run or resumed cheapest first.

A plan is YAML data (prompts/plans/ holds the shipped ones). Every (model, suite) gets one vanilla
run that every method of that (model, suite) shares: as the reference of its FD/KID, and as the
baseline of its paired comparison (compare.json in the method's run directory). The plan ends
with the leaderboard CSV (and optionally a markdown table) over the suites marked `leaderboard`,
with the adherence columns of the suites marked `adherence`.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from fairbench.config import RunConfig, build_config
from fairbench.errors import UserError, validation_message
from fairbench.prompts import SAFE_ID, _load_yaml, fill_named, prompts_dir
from fairbench.registry import Registry
from fairbench.spec import RunSpec, resolve

SAFE_NAME = f"^{SAFE_ID.pattern}$"  # a folder name, as prompt ids are: never `..`, `.` or a path
PLANS: Registry[Path] = Registry("plan")
for _p in sorted((prompts_dir() / "plans").glob("*.yaml")):
    PLANS.add(_p.stem, _p)


class SuiteEntry(BaseModel):
    """One suite of the plan: which prompts, how many images, and what the runs are for."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str = Field(pattern=SAFE_NAME)
    suite: str
    split: Literal["train", "test", "all"] = "test"
    limit: int | None = Field(default=None, gt=0)
    n: int = Field(gt=0)
    role: Literal["leaderboard", "adherence", "none"] = "leaderboard"


class MethodEntry(BaseModel):
    """One method of the plan, its arguments, and per-suite option overrides."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    method: str
    label: str | None = Field(default=None, pattern=SAFE_NAME, description="run name (default: method)")
    args: dict[str, Any] = Field(default_factory=dict)
    cost: float = Field(default=1.0, gt=0, description="relative cost per image, for cheapest-first ordering")
    per_suite: dict[str, dict[str, Any]] = Field(default_factory=dict)

    @property
    def name(self) -> str:
        """The method's name in run directories."""
        return self.label or self.method


class Plan(BaseModel):
    """A benchmark plan: models x methods x suites, shared vanilla runs, a leaderboard at the end."""

    model_config = ConfigDict(extra="forbid")
    name: str
    out: str = Field(description="folder of the plan's run directories")
    run_name: str = Field(default="{model}/{method}-{suite}", description="run directory under `out`")
    models: list[str] = Field(min_length=1)
    suites: list[SuiteEntry] = Field(min_length=1)
    methods: list[MethodEntry] = Field(min_length=1)
    options: dict[str, Any] = Field(default_factory=dict, description="run options shared by every run")
    attributes: list[str] | None = None
    leaderboard: str | None = None
    markdown: str | None = None

    @model_validator(mode="after")
    def _consistent(self) -> "Plan":
        names = [m.name for m in self.methods]
        if len(set(names)) != len(names):
            raise ValueError("two methods share a name: give one a `label`")
        if len({s.name for s in self.suites}) != len(self.suites):
            raise ValueError("two suites share a name")
        suite_names = {s.name for s in self.suites}
        for m in self.methods:
            if unknown := set(m.per_suite) - suite_names:
                raise ValueError(f"method {m.name}: per_suite names unknown suites {sorted(unknown)}")
        if not any(m.method == "vanilla" for m in self.methods):
            raise ValueError("a plan needs a vanilla method: every method is compared with it")
        return self


def load_plan(name_or_path: str) -> Plan:
    """A shipped plan's name, or the path of a plan YAML."""
    path = Path(name_or_path) if name_or_path.endswith((".yaml", ".yml")) or Path(name_or_path).is_file() \
        else PLANS.get(name_or_path)
    try:
        plan = Plan.model_validate(_load_yaml(path))
    except ValidationError as exc:
        raise UserError(f"invalid plan {path}: {validation_message(exc, Plan)}") from None
    from fairbench.io import check_writable_target
    from fairbench.models import check_model

    for model in plan.models:  # before a dry run lists runs of a model that does not exist
        check_model(model)
    check_writable_target(Path(plan.out))
    return plan


class Cell(BaseModel):
    """One run of the plan, resolved once: its spec is what runs."""

    model_config = ConfigDict(arbitrary_types_allowed=True)
    model: str
    suite: SuiteEntry
    method: MethodEntry
    spec: RunSpec
    pending: int
    total: int

    @property
    def config(self) -> RunConfig:
        """The run's resolved options."""
        return self.spec.config

    @property
    def cost(self) -> float:
        """Images still to generate, weighted by the method's relative cost."""
        return self.pending * self.method.cost


def _pending(spec: RunSpec) -> int:
    """Images of the run still to generate."""
    from fairbench.generation.manifest import completed_rows

    done = len(completed_rows(spec.run_dir)) if spec.run_dir.is_dir() else 0
    return max(len(spec.units) - done, 0)


def inside_out(template: str, name: str) -> str:
    """A filled run_name, refused unless it is a relative path of plain folder names (it stays inside `out`)."""
    parts = name.split("/")
    if "\\" in name or any(p in ("", ".", "..") for p in parts) or any(len(p) > 255 for p in parts):
        raise UserError(f"run_name {template!r} gives the run directory {name!r}, which is not a folder inside the "
                        "plan's out: use plain folder names joined by '/'")
    return name


def cells(plan: Plan, progress: bool = True) -> list[Cell]:
    """Every run of the plan, vanilla runs first, then cheapest first (fewest weighted images to generate)."""
    from fairbench.methods import build_method
    from fairbench.outputs.rundir import slug

    for m in plan.methods:  # a misspelt method or argument fails here, before any run starts
        build_method(m.method, m.args)
    result, dirs = [], set()
    for model in plan.models:
        for s in plan.suites:
            vanilla = None
            for m in sorted(plan.methods, key=lambda m: m.method != "vanilla"):
                name = fill_named(plan.run_name, "run_name", model=slug(model), method=m.name, suite=s.name)
                out = Path(plan.out) / inside_out(plan.run_name, name)
                if out in dirs:
                    raise UserError(f"run_name {plan.run_name!r} gives two runs the directory {out}")
                dirs.add(out)
                vanilla = out if m.method == "vanilla" and vanilla is None else vanilla
                extra = {"reference": str(vanilla)} if m.method != "vanilla" else {}
                cfg = build_config(None, **{**plan.options, "model": model, "suite": s.suite, "split": s.split,
                                            "limit": s.limit, "n": s.n, "method": m.method, "method_args": m.args,
                                            **extra, **m.per_suite.get(s.name, {}), "out": str(out),
                                            "baseline": False, "progress": progress})
                spec = resolve(cfg)
                result.append(Cell(model=model, suite=s, method=m, spec=spec, pending=_pending(spec),
                                   total=len(spec.units)))
    return sorted(result, key=lambda c: (c.method.method != "vanilla", c.cost, c.model, c.suite.name, c.method.name))


def run_plan(plan: Plan, progress: bool = True, dry_run: bool = False) -> list[Cell]:
    """Run or resume every cell, compare each method with its vanilla run, then write the leaderboard."""
    from fairbench.io import atomic_write_text, check_writable_file
    from fairbench.outputs.compare import compare_runs
    from fairbench.outputs.leaderboard import build_leaderboard, markdown_table
    from fairbench.runner import run_one

    todo = cells(plan, progress)
    for path in (plan.leaderboard, plan.markdown):  # refused now, not after every run has been made
        if path:
            check_writable_file(Path(path))
    for i, c in enumerate(todo, 1):
        print(f"[{i}/{len(todo)}] {c.method.name} on {c.model}, {c.suite.name}: {c.config.out} "
              f"({c.pending} of {c.total} images to generate)", file=sys.stderr)
    if dry_run:
        return todo
    for c in todo:  # each cell's vanilla is a cell of its own, so no run makes a baseline
        run_one(c.spec)
    for c in todo:
        if c.method.method != "vanilla":
            try:
                compare_runs(Path(c.config.out), Path(c.config.reference), c.config.extractor)
            except UserError as exc:  # e.g. runs whose prompts or sampling settings differ
                print(f"{c.method.name} on {c.model}, {c.suite.name}: no paired comparison ({exc})", file=sys.stderr)
    if plan.leaderboard:
        board = [Path(c.config.out) for c in _in_plan_order(plan, todo) if c.suite.role == "leaderboard"]
        explicit = [Path(c.config.out) for c in _in_plan_order(plan, todo) if c.suite.role == "adherence"]
        df = build_leaderboard(board, explicit, plan.attributes)
        atomic_write_text(Path(plan.leaderboard), df.to_csv(index=False))
        if plan.markdown:
            atomic_write_text(Path(plan.markdown), markdown_table(df) + "\n")
        print(f"{plan.leaderboard}: {len(df)} rows from {len(board)} runs", file=sys.stderr)
    return todo


def _in_plan_order(plan: Plan, todo: list[Cell]) -> list[Cell]:
    order = {(m, s.name, e.name): i for i, (m, s, e) in enumerate(
        (m, s, e) for m in plan.models for s in plan.suites for e in plan.methods)}
    return sorted(todo, key=lambda c: order[(c.model, c.suite.name, c.method.name)])
