"""synthclip's zero-shot quality on held-out renders (docs/worlds.md, the synthclip model card).

Renders `--n` held-out faces of the vision-language world's kind (labelled expressions) with uniform
groups from a seed the training never used, classifies them zero-shot through the harness's `clip`
classifier (`--classifier clip --classifier-arg model=synthclip`, the class texts of `--templates`,
recorded in the output), and measures text-to-image retrieval of the occupation family: each
occupation's neutral prompt retrieves its nearest image, a hit when that image shows the
occupation's family (R@1), and the same with the 5 nearest (R@5, any hit).

Usage: python -m lab.studies.synthclip_eval --out FILE.json [--n 4000] [--seed 777]
         [--templates prompts/clip_templates/synthclip.yaml] [--model synthclip | --checkpoint TRAIN_DIR]

`--checkpoint`: a `synthface train-clip` folder's last checkpoint (a run in progress or stopped),
assembled into a temporary folder in its shipping form and measured the same way.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from fairbench.classifiers import build_classifier
from fairbench.prompts import attribute, load_suite, render_template
from fairbench.synthface.population import occupations, render_set
from fairbench.synthface.families import family_names, family_of

ATTRS = {"gender": "gender", "skin_tone": "skin", "expression": "expression"}


def evaluate(model: str, n: int, seed: int, templates: str | None) -> dict:
    """Zero-shot accuracies (with confusion matrices) and family retrieval on n held-out renders."""
    rs = render_set(n, seed, balanced=True, expressions=True)
    images = [Image.fromarray(a) for a in rs.images]
    clf = build_classifier("clip", {"model": model, "attributes": ",".join(ATTRS), "templates": templates})
    probs = clf.predict(images)
    out: dict = {"model": model, "n": n, "seed": seed, "texts": clf.texts}
    for attr, field in ATTRS.items():
        truth, pred = getattr(rs, field), probs[attr].argmax(1)
        k = len(attribute(attr).groups)
        conf = np.zeros((k, k), int)
        np.add.at(conf, (truth, pred), 1)
        out[attr] = {"accuracy": float((truth == pred).mean()), "confusion": conf.tolist(),
                     "groups": attribute(attr).group_names}
    suite = load_suite("occupations")
    occs = [o for o, _ in occupations()]
    texts = [render_template(suite.template, occupation=o) for o in occs]
    fams = family_names()
    want = np.array([fams.index(family_of()[o]) for o in occs])
    img = clf.image_features(images)
    txt = clf.encoder.text_features(texts)
    top = (txt @ img.T).topk(5, dim=1).indices.numpy()  # (occupations, 5) image indices
    got = rs.family[top]
    out["family_retrieval"] = {"queries": len(texts), "images": n, "R@1": float((got[:, 0] == want).mean()),
                               "R@5": float((got == want[:, None]).any(1).mean())}
    return out


def checkpoint_folder(train_dir: Path, dest: Path) -> tuple[str, int]:
    """A from_pretrained folder of a train-clip checkpoint (in its shipping form), and its step."""
    from safetensors.torch import load_file

    from lab.synthface.clip_train import ClipTrainConfig, build_for
    from fairbench.synthface.synthclip import assemble
    from lab.synthface.synthclip_export import export, round_to_shipped

    # the run's recorded config gives the model's shape; MiniLM's embeddings, the one part a checkpoint
    # leaves out, come from build_for
    model = build_for(ClipTrainConfig(**json.loads((train_dir / "train_config.json").read_text())))
    model.load_state_dict(load_file(train_dir / "checkpoint" / "model.safetensors"), strict=False)
    model.eval()
    round_to_shipped(model)
    export(model, dest / "shipped")
    step = json.loads((train_dir / "checkpoint" / "state.json").read_text())["step"]
    return str(assemble(dest / "shipped", dest / "full")), step


def main() -> None:
    """Print and write the evaluation."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True, help="JSON file to write")
    ap.add_argument("--model", default="synthclip")
    ap.add_argument("--n", type=int, default=4000)
    ap.add_argument("--seed", type=int, default=777, help="render seed (training used 0 and its fresh renders)")
    ap.add_argument("--templates", default=None, help="class texts YAML (default: prompts/attributes.yaml's)")
    ap.add_argument("--checkpoint", type=Path, help="a train-clip folder: measure its last checkpoint instead")
    args = ap.parse_args()
    if args.checkpoint and not (args.checkpoint / "checkpoint" / "state.json").is_file():
        ap.error(f"--checkpoint {args.checkpoint}: no train-clip checkpoint there")
    with tempfile.TemporaryDirectory() as tmp:
        model, step = args.model, None
        if args.checkpoint:
            model, step = checkpoint_folder(args.checkpoint, Path(tmp))
        res = evaluate(model, args.n, args.seed, args.templates)
    if step is not None:
        res.update(model=f"{args.checkpoint} (checkpoint, step {step})", step=step)
    Path(args.out).write_text(json.dumps(res, indent=1))
    for attr in ATTRS:
        print(f"{attr}: zero-shot accuracy {res[attr]['accuracy']:.4f} on {res['n']} renders")
    fr = res["family_retrieval"]
    print(f"family retrieval over {fr['queries']} occupation prompts x {fr['images']} images: "
          f"R@1 {fr['R@1']:.4f}, R@5 {fr['R@5']:.4f}")


if __name__ == "__main__":
    main()
