"""The `fairbench` command: subcommands, one-line errors, exit codes (0 ok, 1 regression, 2 user error, 3 internal error)."""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from typing import Any, Callable

from fairbench.cli.argtypes import nonempty, positive_int
from fairbench.config import DEFAULT_MODEL
from fairbench.errors import RegressionFound, UserError


INTERNAL_ERROR = 3


class Parser(argparse.ArgumentParser):
    """argparse that reports usage mistakes as one line with exit code 2, and refuses a blank value of any
    argument that takes one and has no type of its own."""

    def add_argument(self, *args: Any, **kwargs: Any) -> argparse.Action:  # type: ignore[override]
        takes_text = kwargs.get("action", "store") in ("store", "append") and "choices" not in kwargs
        if takes_text and kwargs.get("type") is None and args and args[0] not in ("-h", "--help"):
            kwargs["type"] = nonempty
        return super().add_argument(*args, **kwargs)

    def error(self, message: str) -> None:  # type: ignore[override]
        import re

        from fairbench.errors import did_you_mean

        m = re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)", message)
        if m:  # subcommands and `ls` kinds: name the closest choices
            choices = re.findall(r"[\w-]+", m.group(2))
            message += did_you_mean(m.group(1), choices)
        raise UserError(f"{self.prog}: {message}")


def _key_values(items: list[str] | None, flag: str) -> dict[str, Any] | None:
    """['k=v', ...] -> {k: YAML-typed v}."""
    import yaml

    if not items:
        return None
    out: dict[str, Any] = {}
    for item in items:
        key, sep, val = item.partition("=")
        if not sep or not key:
            raise UserError(f"{flag} expects KEY=VALUE, got {item!r}")
        try:
            out[key.replace("-", "_")] = yaml.safe_load(val) if val else ""
        except yaml.YAMLError:
            out[key.replace("-", "_")] = val
    return out


# a mapping field is given one KEY=VALUE at a time: --method-arg for method_args
def _flag(name: str, field: Any) -> str:
    """The CLI flag of a RunConfig field: --<field>, --<x>-arg for a mapping x_args, --no-<field> for a switch
    that is on by default."""
    if name.endswith("_args"):
        return f"--{name.removesuffix('_args').replace('_', '-')}-arg"
    return f"--{'no-' if field.default is True else ''}{name.replace('_', '-')}"


def _add_run(sub: argparse._SubParsersAction) -> None:
    """`fairbench run`: one flag per RunConfig field, typed and explained by the field itself."""
    import types
    import typing

    from fairbench.config import RunConfig

    p = sub.add_parser("run", help="generate, detect, classify and score (resumes an interrupted run)")
    p.add_argument("--config", help="YAML file of run options (CLI flags override it)")
    for name, field in RunConfig.model_fields.items():
        flag, help_ = _flag(name, field), field.description
        kind = field.annotation
        if typing.get_origin(kind) in (typing.Union, types.UnionType):  # X | None: the flag takes an X
            kind = next(a for a in typing.get_args(kind) if a is not type(None))
        if name.endswith("_args"):
            p.add_argument(flag, dest=name, action="append", metavar="KEY=VALUE", help=help_)
        elif kind is bool:  # a switch: only its non-default value can be given
            p.add_argument(flag, dest=name, action="store_const", const=not field.default, default=None,
                           help=f"turn off: {help_}" if field.default else help_)
        elif typing.get_origin(kind) is typing.Literal:
            p.add_argument(flag, dest=name, choices=list(typing.get_args(kind)), help=help_)
        else:
            p.add_argument(flag, dest=name, type=kind, help=help_)


def cmd_run(args: argparse.Namespace) -> int:
    """fairbench run."""
    from fairbench.config import RunConfig, build_config
    from fairbench.outputs.tables import print_summary
    from fairbench.runner import run

    cfg = build_config(args.config, **{name: _key_values(getattr(args, name), _flag(name, field))
                                       if name.endswith("_args") else getattr(args, name)
                                       for name, field in RunConfig.model_fields.items()})
    outcome = run(cfg)
    if outcome.metrics is not None:
        print_summary(outcome.metrics, f"{cfg.method} on {cfg.model}: {outcome.run_dir}")
    elif cfg.shard:
        print(f"shard {cfg.shard} generated in {outcome.run_dir}; combine the shards with `fairbench merge`")
    if outcome.comparison is not None:
        from fairbench.outputs.compare import print_verdict

        print_verdict(outcome.comparison, outcome.baseline_dir)
    return 0


def cmd_ls(args: argparse.Namespace) -> int:
    """fairbench ls KIND."""
    from fairbench.cli.listing import list_kind

    list_kind(args.kind)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    """fairbench report RUN_DIR."""
    from fairbench.outputs.report import write_report

    print(write_report(args.run_dir, args.baseline))
    return 0


def cmd_leaderboard(args: argparse.Namespace) -> int:
    """fairbench leaderboard RUN_DIR... --out FILE.csv."""
    from pathlib import Path

    from fairbench.io import atomic_write_text, check_writable_file
    from fairbench.outputs.leaderboard import build_leaderboard

    for path in (args.out, args.markdown):  # both checked before either is written
        if path:
            check_writable_file(Path(path))
    attrs = [a.strip() for a in args.attributes.split(",")] if args.attributes else None
    df = build_leaderboard([Path(d) for d in args.run_dirs], [Path(d) for d in args.explicit or []], attrs)
    atomic_write_text(Path(args.out), df.to_csv(index=False))
    if args.markdown:
        from fairbench.outputs.leaderboard import markdown_table

        atomic_write_text(Path(args.markdown), markdown_table(df) + "\n")
    print(f"{args.out}: {len(df)} rows from {len(args.run_dirs)} runs"
          + (f" (+ adherence from {len(args.explicit)} explicit-prompt runs)" if args.explicit else ""))
    return 0


def cmd_make_tiny_sd(args: argparse.Namespace) -> int:
    """fairbench make-tiny-sd DIR."""
    from pathlib import Path

    from fairbench.io import ensure_writable_dir
    from fairbench.models.tiny import make_tiny_sd

    out = Path(args.dir)
    if out.is_dir() and any(out.iterdir()):
        raise UserError(f"{args.dir} is not empty: give a new folder for the tiny pipeline")
    make_tiny_sd(ensure_writable_dir(out), seed=args.seed, arch=args.arch)
    print(f"tiny random {args.arch} pipeline written to {args.dir}")
    return 0


def cmd_merge(args: argparse.Namespace) -> int:
    """fairbench merge SHARD_DIR... --out DIR."""
    from pathlib import Path

    from fairbench.outputs.tables import print_summary
    from fairbench.runner import merge_run

    outcome = merge_run([Path(d) for d in args.shard_dirs], Path(args.out), progress=not args.no_progress)
    print_summary(outcome.metrics, f"merged: {outcome.run_dir}")
    return 0


def cmd_classify(args: argparse.Namespace) -> int:
    """fairbench classify RUN_DIR --classifier C."""
    from pathlib import Path

    from fairbench.outputs.tables import print_summary
    from fairbench.runner import classify_run

    metrics = classify_run(Path(args.run_dir), args.classifier,
                           _key_values(args.classifier_arg, "--classifier-arg") or {}, args.device,
                           progress=not args.no_progress)
    print_summary(metrics, f"{args.run_dir} re-classified with {args.classifier}")
    return 0


def cmd_score(args: argparse.Namespace) -> int:
    """fairbench score IMAGES --prompts FILE."""
    from pathlib import Path

    from fairbench.config import build_config
    from fairbench.outputs.tables import print_summary
    from fairbench.runner import score_run

    cfg = build_config(classifier=args.classifier, detector=args.detector, device=args.device, n_boot=args.n_boot,
                       ci_level=args.ci_level, out=args.out, progress=not args.no_progress,
                       classifier_args=_key_values(args.classifier_arg, "--classifier-arg"))
    outcome = score_run(Path(args.images), Path(args.prompts), cfg, args.suite, args.model, args.method)
    print_summary(outcome.metrics, f"{args.images} scored into {outcome.run_dir}")
    return 0


def cmd_quality(args: argparse.Namespace) -> int:
    """fairbench quality RUN_DIR --reference SRC."""
    from pathlib import Path

    from fairbench.outputs.tables import kid_text
    from fairbench.pipeline import quality_run

    if not args.reference and not args.clip_model:
        raise UserError("give --reference (for FD/KID) and/or --clip-model (for the CLIP score)")
    m = quality_run(Path(args.run_dir), args.reference, args.extractor,
                    _key_values(args.extractor_arg, "--extractor-arg"), args.clip_model, args.clip_revision,
                    args.batch_size)
    for name, q in m.get("quality", {}).items():
        print(f"{name}: {q['fd']:.4f}  {kid_text(q)}  "
              f"({q['n_generated']} vs {q['n_reference']} images, {q['extractor']})")
    if "clip_score" in m.get("alignment", {}):
        c = m["alignment"]["clip_score"]
        print(f"CLIP score: {c['clip_score']:.2f} [{c['ci_low']:.2f}, {c['ci_high']:.2f}] (n = {c['n']}, {c['model']})")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    """fairbench train --method fairmap --model M --out DIR."""
    import json
    from pathlib import Path

    from fairbench.methods import build_method, check_architecture
    from fairbench.methods.fairmap import train_and_save
    from fairbench.models import load_backend, resolve_device
    from fairbench.prompts import load_suite

    method = build_method(args.method, _key_values(args.method_arg, "--method-arg"))  # an unknown name fails here
    if args.method != "fairmap":
        raise UserError(f"method {args.method!r} has nothing to train (trainable: fairmap)")
    if Path(args.out).exists() and not Path(args.out).is_dir():
        raise UserError(f"--out {args.out} is a file: give a folder for the checkpoint")
    backend = load_backend(args.model, dtype=args.dtype, device=resolve_device(args.device))
    check_architecture(args.method, method, backend)
    out = train_and_save(backend, load_suite(args.suite or method.train_suite), method.cfg, Path(args.out))
    meta = json.loads((out / "mapping.json").read_text())
    t = meta["training"]
    print(f"Fair Mapping (reconstruction) written to {out}: {t['n_prompts']} training prompts, "
          f"attributes {', '.join(method.cfg.attributes)}, encode {t['encode_seconds']} s, train {t['train_seconds']} s")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    """fairbench check RUN_DIR --against REF."""
    from pathlib import Path

    from fairbench.outputs.check import check_lines, check_run

    result = check_run(Path(args.run_dir), Path(args.against), args.alpha, args.permutations)
    for line in check_lines(result, args.alpha):
        print(line)
    bad = result.regressions
    if bad:
        raise RegressionFound(f"{len(bad)} of {len(result.quantities)} quantities changed beyond paired noise: "
                              + ", ".join(f"{q.name} (p = {q.test.p_value:.3g})" for q in bad))
    print("no regression" + (" (exact)" if result.exact else f": {len(result.quantities)} quantities within paired noise"))
    return 0


def cmd_reference(args: argparse.Namespace) -> int:
    """fairbench reference RUN_DIR --out FILE.json."""
    from pathlib import Path

    from fairbench.outputs.check import write_reference

    ref = write_reference(Path(args.run_dir), Path(args.out))
    print(f"{args.out}: reference of {len(ref['units']['key'])} images over {len(ref['prompt_ids'])} prompts, "
          f"attributes {', '.join(ref['groups'])}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    """fairbench compare RUN --baseline RUN."""
    from pathlib import Path

    from fairbench.outputs.compare import compare_runs, print_verdict

    result = compare_runs(Path(args.run_dir), Path(args.baseline), args.extractor, args.n_boot)
    print_verdict(result, Path(args.baseline))
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    """fairbench plan PLAN.yaml."""
    from fairbench.plan import load_plan, run_plan

    cells = run_plan(load_plan(args.plan), progress=not args.no_progress, dry_run=args.dry_run)
    print(f"plan: {len(cells)} runs" + (" (dry run: nothing generated)" if args.dry_run else " complete"))
    return 0


def cmd_fetch_inception(args: argparse.Namespace) -> int:
    """fairbench fetch-inception PATH."""
    from fairbench.metrics.features import fetch_inception

    print(fetch_inception(args.path))
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The full command-line parser."""
    parser = Parser(prog="fairbench", description="Demographic fairness benchmark for text-to-image diffusion.")
    from fairbench import __version__

    parser.add_argument("--version", action="version", version=f"fairbench {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    _add_run(sub)
    p = sub.add_parser("ls", help="list registered methods, models, suites, classifiers, detectors, metrics, "
                                  "extractors, encoders, attributes")
    p.add_argument("kind", choices=["methods", "models", "suites", "classifiers", "detectors", "metrics", "extractors",
                                    "encoders", "attributes"])
    p = sub.add_parser("report", help="write report.md (with figures) for a finished run")
    p.add_argument("run_dir")
    p.add_argument("--baseline", help="run directory to compare with (e.g. vanilla on the same prompts)")
    p = sub.add_parser("leaderboard", help="collect finished runs into one CSV")
    p.add_argument("run_dirs", nargs="+")
    p.add_argument("--out", required=True, help="CSV file to write")
    p.add_argument("--explicit", nargs="+", metavar="RUN_DIR",
                   help="explicit-prompt runs; their adherence joins the run of the same method, arguments and model")
    p.add_argument("--attributes", help="only these attributes, e.g. gender,skin_tone")
    p.add_argument("--markdown", metavar="FILE", help="also write a compact markdown table")
    p = sub.add_parser("make-tiny-sd", help="write a tiny random text-to-image pipeline (tests, smoke runs)")
    p.add_argument("dir")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--arch", choices=("sd1", "sd2", "sdxl", "sd3"), default="sd1",
                   help="sd1 (default), sd2 (v-prediction), sdxl (two text encoders, pooled), sd3 (transformer)")
    p = sub.add_parser("merge", help="merge shard runs (--shard i/N) into one run and score it")
    p.add_argument("shard_dirs", nargs="+")
    p.add_argument("--out", required=True)
    p.add_argument("--no-progress", action="store_true")
    p = sub.add_parser("classify", help="re-label an existing run with another classifier (no regeneration)")
    p.add_argument("run_dir")
    p.add_argument("--classifier", required=True)
    p.add_argument("--classifier-arg", action="append", metavar="KEY=VALUE")
    p.add_argument("--device", default="auto")
    p.add_argument("--no-progress", action="store_true")
    p = sub.add_parser("score", help="score images any system made (a folder + a CSV/JSONL of image, prompt_id, "
                                     "prompt) exactly like a generated run")
    p.add_argument("images", help="folder of the images; the prompts file names them relative to it")
    p.add_argument("--prompts", required=True, help="CSV or JSONL: image, prompt_id[, prompt, sample_idx, model, method]")
    p.add_argument("--suite", help="match prompt ids against this suite (its reference counts and requested groups "
                                   "apply; texts default to its own)")
    p.add_argument("--model", help="model name of the images (default: the file's model column, else 'external')")
    p.add_argument("--method", help="method name of the images (default: the file's method column, else 'external')")
    p.add_argument("--classifier", help="default: the model's (an embedded world's own, else agegender)")
    p.add_argument("--classifier-arg", action="append", metavar="KEY=VALUE")
    p.add_argument("--detector", help="default: the model's (an embedded world's own, else mtcnn)")
    p.add_argument("--device", default="auto")
    p.add_argument("--n-boot", type=int, help="bootstrap replicates")
    p.add_argument("--ci-level", type=float, help="interval level, e.g. 0.95")
    p.add_argument("--out", help="run directory (default: runs/score-<model>-<prompts file>)")
    p.add_argument("--no-progress", action="store_true")
    p = sub.add_parser("quality", help="FD/KID against a reference set and/or CLIP score, added to metrics.json")
    p.add_argument("run_dir")
    p.add_argument("--reference", help="image folder or run directory")
    p.add_argument("--extractor", default="auto", help="auto (the classifier's own features, else inception), "
                                                      "inception, clip, dinov2 (fairbench ls extractors)")
    p.add_argument("--extractor-arg", action="append", metavar="KEY=VALUE")
    p.add_argument("--clip-model")
    p.add_argument("--clip-revision")
    p.add_argument("--batch-size", type=positive_int, default=64)
    p = sub.add_parser("train", help="train a trainable method (fairmap) and write its checkpoint")
    p.add_argument("--method", required=True)
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--suite", help="training suite (default: the method's, occupations)")
    p.add_argument("--method-arg", action="append", metavar="KEY=VALUE")
    p.add_argument("--out", required=True)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--device", default="cpu")
    p = sub.add_parser("check", help="paired, two-sided regression check against a reference: exit 1 on a regression")
    p.add_argument("run_dir")
    p.add_argument("--against", required=True, help="reference JSON (fairbench reference) or a run directory")
    p.add_argument("--alpha", type=float, default=0.05,
                   help="level of each quantity's two-sided paired test (default 0.05)")
    p.add_argument("--permutations", type=int, default=9999,
                   help="Monte Carlo swap patterns when more than 14 units differ (default 9999)")
    p = sub.add_parser("reference", help="write a run's reference for `check` (settings, per-image sha256 and labels)")
    p.add_argument("run_dir")
    p.add_argument("--out", required=True)
    p = sub.add_parser("compare", help="paired comparison of a run with a baseline run over the same images")
    p.add_argument("run_dir")
    p.add_argument("--baseline", required=True, help="run directory over the same units (e.g. vanilla)")
    p.add_argument("--extractor", default="auto", help="FD/KID features: auto (the classifier's own, else inception), "
                                                          "inception, clip, dinov2")
    p.add_argument("--n-boot", type=positive_int, help="bootstrap replicates (default: the run's)")
    p = sub.add_parser("plan", help="run or resume a models x methods x suites plan, compare, write the leaderboard")
    p.add_argument("plan", help="a plan YAML, or a shipped plan's name (prompts/plans/)")
    p.add_argument("--dry-run", action="store_true", help="list the runs in order with their pending images, run nothing")
    p.add_argument("--no-progress", action="store_true")
    p = sub.add_parser("fetch-inception", help="download FID's Inception-v3 weights (checked by sha256 prefix)")
    p.add_argument("path")
    from fairbench.cli.commands import COMMANDS as PLUGIN_COMMANDS

    for entry in PLUGIN_COMMANDS:  # a world's own commands
        entry.obj[0](sub)
    return parser


COMMANDS = {"run": cmd_run, "ls": cmd_ls, "report": cmd_report, "leaderboard": cmd_leaderboard,
            "make-tiny-sd": cmd_make_tiny_sd, "merge": cmd_merge, "classify": cmd_classify,
            "quality": cmd_quality, "fetch-inception": cmd_fetch_inception,
            "check": cmd_check, "reference": cmd_reference, "train": cmd_train, "compare": cmd_compare,
            "plan": cmd_plan, "score": cmd_score}


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit code."""
    return guarded(lambda: _dispatch(build_parser().parse_args(argv)))


def _dispatch(args: argparse.Namespace) -> int:
    if args.command in COMMANDS:
        return COMMANDS[args.command](args)
    from fairbench.cli.commands import COMMANDS as PLUGIN_COMMANDS

    return PLUGIN_COMMANDS.get(args.command)[1](args)  # a plugin's command (the parser only offers those)


def guarded(command: Callable[[], int]) -> int:
    """Run a command under the exit-code contract: 2 a user error (one line), 1 a regression, 3 a bug."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        return command()
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except RegressionFound as exc:
        print(f"regression: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # output piped into a reader that closed early (| head): not an error of ours
        sys.stderr.close()
        return 141
    except KeyboardInterrupt:
        print("interrupted: results so far are kept; re-run the same command to resume", file=sys.stderr)
        return 130
    except Exception:  # a bug, not a user mistake: keep the traceback, and an exit code of its own
        traceback.print_exc()
        print(f"internal error (a bug in fairbench {_version()}; please report it with the traceback above)",
              file=sys.stderr)
        return INTERNAL_ERROR


def _version() -> str:
    from fairbench import __version__

    return __version__
