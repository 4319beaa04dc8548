"""`python -m lab.synthface ...`: rebuild the embedded worlds (training, install, sample grids).

This is the world-building lab: it is not installed with fairbench. Run it from the repository's
root with the project's environment (`make synthface`, `make synthface-vl`). Its exit codes are
fairbench's: 2 a user error (one line), 3 a bug.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from fairbench.cli.argtypes import nonnegative_int, positive_float, positive_int, share
from fairbench.cli.main import Parser, guarded
from fairbench.errors import UserError


CLASSIFIER_BODIES = ("body", "expression_body")


def body_list(text: str) -> tuple[str, ...]:
    """argparse type: a comma-separated list of the synthface classifier's bodies, each at most once."""
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    unknown = [n for n in names if n not in CLASSIFIER_BODIES]
    if not names or unknown or len(set(names)) < len(names):
        raise argparse.ArgumentTypeError(f"expected distinct names from {', '.join(CLASSIFIER_BODIES)}, got {text!r}")
    return names


def _training_args(p: argparse.ArgumentParser, out: str, steps: int, batch_size: int, lr: float, warmup: int,
                   lr_help: str | None = None) -> None:
    """The options every resumable training stage takes."""
    p.add_argument("--out", default=out)
    p.add_argument("--steps", type=positive_int, default=steps)
    p.add_argument("--batch-size", type=positive_int, default=batch_size)
    p.add_argument("--n-renders", type=positive_int, default=40_000)
    p.add_argument("--seed", type=nonnegative_int, default=0)
    p.add_argument("--max-minutes", type=positive_float, help="checkpoint and stop after this long (resume later)")
    p.add_argument("--lr", type=positive_float, default=lr, help=lr_help)
    p.add_argument("--warmup", type=nonnegative_int, default=warmup, help="linear warm-up steps before the cosine decay")


def build_parser() -> argparse.ArgumentParser:
    """The lab's command line: one subcommand per world-building stage."""
    p = Parser(prog="python -m lab.synthface", description="Rebuild the synthface worlds' models and classifier.")
    ss = p.add_subparsers(dest="synthface_command", required=True, parser_class=Parser)
    t = ss.add_parser("train", help="train the denoiser (resumes from OUT/checkpoint)")
    _training_args(t, ".cache/synthface-train", steps=3600, batch_size=64, lr=3e-4, warmup=200)
    t.add_argument("--neutral-share", type=share, help="share of non-empty captions naming no group (default 5/9)")
    t.add_argument("--init-from", help="UNet folder to start from (a second training stage)")
    t.add_argument("--balanced-renders", type=nonnegative_int, default=0,
                   help="extra renders with uniform groups, used as the images of group-naming captions")
    t.add_argument("--fresh-named", action="store_true",
                   help="group-naming captions describe fresh renders of the occupation with the named groups "
                        "drawn uniformly (the others keep the world's skew)")
    t.add_argument("--transformer-layers", type=positive_int, default=1,
                   help="transformer blocks per 8 x 8 attention; blocks --init-from lacks start as identities")
    t.add_argument("--text-lr-scale", type=positive_float, default=1.0,
                   help="learning-rate multiplier of the text pathway (cross-attention and grown blocks)")
    t.add_argument("--timestep-power", type=positive_float, default=1.0,
                   help="draw t = T * u**power (below 1: more high-noise steps, where the caption decides)")
    t.add_argument("--text-encoder", default="minilm",
                   help="minilm (the text-only world), synthclip (the installed one) or a trained synthclip folder "
                        "(train-clip's OUT/final): the token states the denoiser learns from")
    t.add_argument("--expressions", action="store_true",
                   help="the vision-language world's data: labelled expressions, emotion descriptors, captions "
                        "that name the expression")
    t.add_argument("--expression-share", type=share, default=0.3,
                   help="with --expressions: share of occupation captions that name the render's expression")
    t.add_argument("--no-progress", action="store_true")
    k = ss.add_parser("train-clip", help="train synthclip, the vision-language world's CLIP (resumes)")
    _training_args(k, ".cache/synthclip-train", steps=1400, batch_size=128, lr=1e-3, warmup=100,
                   lr_help="image tower, projections and temperature")
    k.add_argument("--hard-negatives", type=nonnegative_int, default=1,
                   help="counterfactual captions each group-naming caption brings as negatives (0: none)")
    k.add_argument("--expression-share", type=share, default=0.3,
                   help="share of occupation captions that name the render's expression")
    k.add_argument("--init-from", help="a trained synthclip folder (train-clip's OUT/final) to continue from")
    k.add_argument("--freeze-text", action="store_true",
                   help="lock the text encoder, so the token states the denoiser reads stay as they are; its pooler, "
                        "the projections, the image tower and the temperature train")
    k.add_argument("--image-init", help="a classifier folder with an expression head (train-expression-head's "
                                        "OUT): its bodies (--image-bodies) seed the image tower; with --init-from, "
                                        "only the text side continues")
    k.add_argument("--image-bodies", type=body_list,
                   help="with --image-init: the classifier's bodies the image tower starts from, comma-separated "
                        "(body: gender, skin tone, age, family; expression_body, the default)")
    k.add_argument("--no-progress", action="store_true")
    x = ss.add_parser("train-expression-head",
                      help="add the expression head to a trained classifier (its other heads unchanged)")
    x.add_argument("--from", dest="source", default=None, help="classifier folder (default: the shipped one)")
    x.add_argument("--out", default=".cache/synthface-classifier-expression")
    x.add_argument("--steps", type=positive_int, default=1500)
    x.add_argument("--no-progress", action="store_true")
    c = ss.add_parser("train-classifier", help="train the synthface attribute classifier on renders")
    c.add_argument("--out", default=".cache/synthface-classifier")
    c.add_argument("--steps", type=positive_int, default=1500)
    c.add_argument("--seed", type=nonnegative_int, default=1)
    c.add_argument("--no-progress", action="store_true")
    v = ss.add_parser("evaluate-classifier",
                      help="re-measure a trained classifier on held-out renders (skewed and balanced) and "
                           "record both reports in its classifier.json")
    v.add_argument("--dir", default=None, help="classifier folder (default: the shipped one)")
    g = ss.add_parser("grid", help="write a labelled sample grid PNG (one row per prompt)")
    g.add_argument("--out", required=True, help="image file to write (.png, .jpg, .webp)")
    g.add_argument("--model", default="synthface")
    g.add_argument("--n", type=positive_int, default=10)
    e = ss.add_parser("install", help="copy a trained model (and classifier, synthclip) into the package assets")
    e.add_argument("--world", choices=("synthface", "synthface-vl"), default="synthface",
                   help="which embedded world the model is")
    e.add_argument("--model-dir", default=".cache/synthface-train/final")
    e.add_argument("--classifier-dir", default=None, help="a classifier folder to install (shared by both worlds)")
    e.add_argument("--synthclip-dir", default=None, help="synthface-vl: train-clip's OUT/final")
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit code."""
    return guarded(lambda: run_synthface(build_parser().parse_args(argv)))


def run_synthface(args: argparse.Namespace) -> int:
    """Dispatch a synthface subcommand."""
    if args.synthface_command == "train":
        from lab.synthface.train import TrainConfig, train_unet

        if args.text_encoder not in ("minilm", "synthclip") and not (Path(args.text_encoder) / "config.json").is_file():
            raise UserError(f"--text-encoder {args.text_encoder}: not minilm, synthclip or a trained synthclip folder")
        if args.init_from and not (Path(args.init_from) / "config.json").is_file():
            raise UserError(f"--init-from {args.init_from}: not a UNet folder (no config.json)")
        if Path(args.out).exists() and not Path(args.out).is_dir():
            raise UserError(f"--out {args.out} is a file, not a training folder")

        cfg = TrainConfig(steps=args.steps, batch_size=args.batch_size, n_renders=args.n_renders, seed=args.seed,
                          lr=args.lr, warmup=args.warmup, neutral_share=args.neutral_share, init_from=args.init_from,
                          balanced_renders=args.balanced_renders, transformer_layers=args.transformer_layers,
                          text_lr_scale=args.text_lr_scale, timestep_power=args.timestep_power,
                          fresh_named=args.fresh_named, text_encoder=args.text_encoder,
                          expressions=args.expressions, expression_share=args.expression_share)
        step = train_unet(Path(args.out), cfg, args.max_minutes, progress=not args.no_progress)
        done = "finished; EMA model in " + str(Path(args.out) / "final") if step >= cfg.steps else "paused"
        print(f"step {step}/{cfg.steps}: {done}")
    elif args.synthface_command == "grid":
        from fairbench.io import check_writable_target
        from lab.synthface.grid import sample_grid

        out = Path(args.out)
        if out.suffix.lower() not in (".png", ".jpg", ".jpeg", ".webp"):
            raise UserError(f"--out {args.out}: give an image file name (.png, .jpg, .webp)")
        check_writable_target(out.parent if str(out.parent) else Path("."))  # before minutes of sampling
        print(sample_grid(args.out, args.model, args.n))
    elif args.synthface_command == "train-clip":
        from lab.synthface.clip_train import IMAGE_BODIES, ClipTrainConfig, train_clip
        from fairbench.synthface.synthclip import DELTA

        if Path(args.out).exists() and not Path(args.out).is_dir():
            raise UserError(f"--out {args.out} is a file, not a training folder")
        if args.init_from and not (Path(args.init_from) / DELTA).is_file():
            raise UserError(f"--init-from {args.init_from}: not a trained synthclip folder (no {DELTA})")
        if args.image_bodies and not args.image_init:
            raise UserError("--image-bodies needs --image-init (the classifier folder the bodies come from)")
        if args.image_init and not (Path(args.image_init) / "classifier.json").is_file():
            raise UserError(f"--image-init {args.image_init}: not a classifier folder (no classifier.json)")
        cfg = ClipTrainConfig(steps=args.steps, batch_size=args.batch_size, n_renders=args.n_renders, seed=args.seed,
                              lr=args.lr, warmup=args.warmup, hard_negatives=args.hard_negatives,
                              expression_share=args.expression_share, init_from=args.init_from,
                              freeze_text=args.freeze_text, image_init=args.image_init,
                              image_bodies=args.image_bodies or IMAGE_BODIES)
        step = train_clip(Path(args.out), cfg, args.max_minutes, progress=not args.no_progress)
        done = "finished; synthclip in " + str(Path(args.out) / "final") if step >= cfg.steps else "paused"
        print(f"step {step}/{cfg.steps}: {done}")
    elif args.synthface_command == "train-expression-head":
        from lab.synthface.classifier_train import train_expression_head
        from fairbench.synthface.pipeline import ASSETS

        source = Path(args.source) if args.source else ASSETS
        if not (source / "classifier.json").is_file():
            raise UserError(f"--from {args.source}: not a synthface classifier folder (no classifier.json)")
        meta = train_expression_head(source, Path(args.out), args.steps, progress=not args.no_progress)
        print(f"expression accuracy on held-out labelled-expression renders: "
              f"{meta['heldout_expressions']['expression']['accuracy']:.4f}; written to {args.out}")
    elif args.synthface_command == "install":
        from lab.synthface.install import install_assets

        optional = {k: Path(v) for k, v in (("classifier_dir", args.classifier_dir),
                                            ("synthclip_dir", args.synthclip_dir)) if v}
        print(f"installed into {install_assets(args.world, Path(args.model_dir), **optional)}")
    elif args.synthface_command == "train-classifier":
        from lab.synthface.classifier_train import ClassifierTrainConfig, train_classifier

        meta = train_classifier(Path(args.out), ClassifierTrainConfig(steps=args.steps, seed=args.seed),
                                progress=not args.no_progress)
        _print_heldout(meta)
    elif args.synthface_command == "evaluate-classifier":
        from lab.synthface.classifier_train import reevaluate_classifier
        from fairbench.synthface.pipeline import ASSETS

        folder = Path(args.dir) if args.dir else ASSETS
        if not (folder / "classifier.json").is_file():
            raise UserError(f"--dir {args.dir}: not a synthface classifier folder (no classifier.json)")
        _print_heldout(reevaluate_classifier(folder))
    return 0


def _print_heldout(meta: dict) -> None:
    for key in ("heldout", "heldout_balanced"):
        held = meta[key]
        accs = ", ".join(f"{k} {held[k]['accuracy']:.4f}" for k in ("face", "gender", "skin_tone", "age2", "family"))
        print(f"{key} accuracy: {accs}; face false-positive rate {held['face']['false_positive_rate']:.4f}")
