"""Per-image generation cost of each method against vanilla's, measured in one run; and ITI-GEN's training.

Every method is prepared first (trained or loaded from the cache, untimed). Then rounds alternate
vanilla and the method on the same units (one prompt, --n images, one batch), so drift in the
machine's load falls on both alike; printed: the median over --repeats rounds of the method's
seconds per image and of its ratio to vanilla's in the same round. With --itigen-training, ITI-GEN's
token training is timed from scratch (no cache) for gender, skin tone and both jointly.

    python benchmarks/bench_methods.py [--model synthface-vl] [--methods vanilla,fairmap,...] [--n 16]
        [--repeats 3] [--itigen-training]
"""

from __future__ import annotations

import argparse
import inspect
import statistics
import time

import torch

DEFAULT_METHODS = ("hardprompt", "entigen", "fairmap", "debiasvl", "fairimagen", "itigen", "fairqueue",
                   "fairdiffusion", "balancingact", "selfdebias", "uce")
ATTRIBUTES = "gender,skin_tone"


def timed_batch(backend, method, units, params) -> float:
    """Seconds per image of one batch through the method's hooks and the sampler."""
    from fairbench.generation.engine import generate_batch

    start = time.perf_counter()
    generate_batch(backend, method, units, params)
    return (time.perf_counter() - start) / len(units)


def main() -> None:
    """Print each method's seconds per image and its ratio to vanilla's."""
    from fairbench.classifiers import build_classifier
    from fairbench.faces import DETECTORS
    from fairbench.methods import METHODS, MethodContext, build_method
    from fairbench.models import default_dtype, load_backend, model_defaults
    from fairbench.models.backend import SamplingParams
    from fairbench.prompts import load_suite
    from fairbench.units import make_units

    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="synthface-vl")
    ap.add_argument("--methods", default=",".join(DEFAULT_METHODS))
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--itigen-training", action="store_true")
    args = ap.parse_args()
    defaults, dtype = model_defaults(args.model), default_dtype(args.model, "cpu")
    suite = load_suite("occupations")
    params = SamplingParams(defaults["steps"], defaults["guidance_scale"])
    detector = DETECTORS.get(defaults["detector"])(device="cpu")
    classifier = build_classifier(defaults["classifier"], {}, device="cpu")
    context = MethodContext(suite, "test", None, params, detector, classifier, 0, defaults["batch_size"])
    units = make_units(suite, "bench", args.model, args.n, 0, "test", 1)
    print(f"{args.model} ({dtype}), {params.steps} steps, {len(units)} images of {units[0].prompt!r} per round, "
          f"{args.repeats} rounds, {torch.get_num_threads()} threads")
    for name in args.methods.split(","):
        if name not in METHODS:
            raise SystemExit(f"unknown method {name!r}")
        backend = load_backend(args.model, dtype=dtype)
        vanilla = build_method("vanilla", None)
        method = build_method(name, {"attributes": ATTRIBUTES} if "attributes" in inspect.signature(METHODS.get(name)).parameters else None)
        start = time.perf_counter()
        method.prepare(backend, suite, context)
        method.apply_to_model(backend)
        prepared = time.perf_counter() - start
        base = load_backend(args.model, dtype=dtype) if method.level == "weights" else backend
        own, ratios = [], []
        for _ in range(args.repeats):
            v = timed_batch(base, vanilla, units, params)
            m = timed_batch(backend, method, units, params)
            own.append(m)
            ratios.append(m / v)
        print(f"{name:14s} {statistics.median(own):7.3f} s/image  x{statistics.median(ratios):5.2f} vanilla  "
              f"(prepare {prepared:6.1f} s, cached where the method caches)")
    if args.itigen_training:
        backend = load_backend(args.model, dtype=dtype)
        for attrs in ("gender", "skin_tone", "gender,skin_tone"):
            method = build_method("itigen", {"attributes": attrs, "cache": False})
            start = time.perf_counter()
            method.prepare(backend, suite, context)
            print(f"itigen training {attrs:17s} {time.perf_counter() - start:7.1f} s "
                  f"({method.args['training']['text_encoder']['steps']} steps)")


if __name__ == "__main__":
    main()
