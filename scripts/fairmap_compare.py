"""Compare a Fair Mapping run with vanilla on the same prompts (issue acceptance numbers).

Usage: python scripts/fairmap_compare.py VANILLA_RUN FAIRMAP_RUN [EXPLICIT_ON EXPLICIT_OFF EXPLICIT_VANILLA]
Fair Mapping here is fairbench's documented reconstruction (docs/fairmap.md).
"""

import json
import sys
from pathlib import Path


def load(run: str) -> dict:
    """metrics.json of a run."""
    return json.loads((Path(run) / "metrics.json").read_text())


def est(m: dict, attr: str, metric: str) -> str:
    """Value with its interval."""
    e = m["attributes"][attr]["aggregate"][metric]
    return f"{e['value']:.3f} [{e['ci_low']:.3f}, {e['ci_high']:.3f}]"


def main(vanilla: str, fairmap: str, *explicit: str) -> None:
    """Print the comparison."""
    v, f = load(vanilla), load(fairmap)
    for attr, metric in (("gender", "bias_gap"), ("skin_tone", "kl")):
        a, b = (x["attributes"][attr]["aggregate"][metric]["value"] for x in (v, f))
        print(f"{attr} {metric}: vanilla {est(v, attr, metric)} -> fairmap {est(f, attr, metric)}: "
              f"{100 * (a - b) / a:.1f} % lower (n faces {f['attributes'][attr]['n_faces']})")
    fa, fb = v["alignment"]["family_accuracy"]["value"], f["alignment"]["family_accuracy"]["value"]
    print(f"occupation-family accuracy: vanilla {fa:.3f} -> fairmap {fb:.3f} ({100 * (fb - fa):+.1f} points)")
    print(f"no-face rate: vanilla {v['no_face_rate']:.3f} -> fairmap {f['no_face_rate']:.3f} "
          f"({100 * (f['no_face_rate'] - v['no_face_rate']):+.1f} points)")
    for name, q in f.get("quality", {}).items():
        print(f"{name} fairmap vs vanilla: {q['fd']:.3f}, KID {q['kid']:.4f} +- {q['kid_std']:.4f}")
    for label, run in zip(("detector on", "detector off", "vanilla"), explicit):
        for attr, a in load(run).get("adherence", {}).items():
            print(f"explicit {attr} ({label}): {a['value']:.3f} [{a['ci_low']:.3f}, {a['ci_high']:.3f}] over {a['n']} faces")


if __name__ == "__main__":
    main(*sys.argv[1:])
