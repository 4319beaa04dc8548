"""Throughput of fairbench's generation stage vs a plain diffusers loop, measured in one run.

Both generate the same prompts with the same per-image seeds and batch size on the same
pipeline and write PNG files; fairbench also writes its manifest (checksums, fsync) and runs
its method hooks. Printed: images/s of each (median of --repeats alternating rounds) and their
ratio. Beside it: the cost per image of the faces + attributes stage (MTCNN + a classifier)
on real face photos (scikit-image's astronaut; generated tiny-SD images contain no faces).

    python benchmarks/bench_generation.py [--model synthface|DIR | --arch sd1|sd2|sdxl|sd3] [--prompts 8] [--n 8]

Without --model, a fresh make-tiny-sd pipeline of --arch (default sd1) is measured; `--arch sdxl`
measures the SDXL path (two text encoders, pooled embeddings, add_time_ids).

Steps and guidance default to the model's own defaults (synthface: 15 steps, guidance 2;
Stable Diffusion pipelines, the tiny one included: 25 steps, guidance 7.5).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def plain_loop(pipe, units, batch_size: int, steps: int, guidance: float, out: Path) -> float:
    """The loop a user would write with diffusers: batch, one generator per image, save PNGs."""
    start = time.perf_counter()
    for i in range(0, len(units), batch_size):
        batch = units[i : i + batch_size]
        images = pipe(
            prompt=[u.prompt for u in batch],
            generator=[torch.Generator("cpu").manual_seed(u.seed) for u in batch],
            num_inference_steps=steps,
            guidance_scale=guidance,
        ).images
        for u, im in zip(batch, images):
            path = out / u.prompt_id / f"{u.sample_idx:05d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            im.save(path)
    return len(units) / (time.perf_counter() - start)


def fairbench_loop(backend, units, batch_size: int, steps: int, guidance: float, out: Path) -> float:
    """fairbench's generation stage (images, manifest, method hooks) on the same units."""
    from fairbench.generation.engine import run_generation
    from fairbench.methods import build_method
    from fairbench.models.backend import SamplingParams

    params = SamplingParams(steps=steps, guidance_scale=guidance)
    stats = run_generation(out, units, backend, build_method("vanilla"), params, batch_size, progress=False)
    return stats.generated / stats.seconds


def labelling_cost(n_images: int) -> dict[str, float]:
    """Milliseconds per image of detection, and of detection + classification, on real faces."""
    from skimage import data

    from fairbench.classifiers import build_classifier
    from fairbench.faces import MTCNNDetector, crop_face

    detector, clf = MTCNNDetector(), build_classifier("agegender")
    images = [Image.fromarray(data.astronaut())] * n_images
    detector.detect(images[:1])
    t0 = time.perf_counter()
    dets = detector.detect(images)
    t1 = time.perf_counter()
    clf.predict([crop_face(im, d, clf.crop_margin) for im, d in zip(images, dets)])
    t2 = time.perf_counter()
    return {"detect_ms": 1000 * (t1 - t0) / n_images, "classify_ms": 1000 * (t2 - t1) / n_images,
            "total_ms": 1000 * (t2 - t0) / n_images}


def main() -> None:
    """Run the benchmark and print the table."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="synthface or a pipeline folder (default: a fresh make-tiny-sd of --arch)")
    ap.add_argument("--arch", choices=["sd1", "sd2", "sdxl", "sd3"], default="sd1", help="tiny pipeline to build")
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--n", type=int, default=8, help="images per prompt")
    ap.add_argument("--batch-size", type=int, help="default: the model's (synthface 64, SD 8)")
    ap.add_argument("--steps", type=int)
    ap.add_argument("--guidance", type=float)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], help="default: the model's on this CPU")
    args = ap.parse_args()

    from fairbench.models import default_dtype, load_backend, model_defaults
    from fairbench.models.tiny import make_tiny_sd
    from fairbench.prompts import load_suite
    from fairbench.units import make_units

    tmp = Path(tempfile.mkdtemp(prefix="fairbench-bench-"))
    model = args.model or str(tmp / f"tiny-{args.arch}")
    if not args.model:
        make_tiny_sd(model, arch=args.arch)
    args.dtype = args.dtype or default_dtype(model, "cpu")
    backend = load_backend(model, dtype=args.dtype)
    defaults = model_defaults(model)
    args.steps = args.steps or defaults["steps"]
    args.batch_size = args.batch_size or defaults["batch_size"]
    args.guidance = defaults["guidance_scale"] if args.guidance is None else args.guidance
    units = make_units(load_suite("occupations"), "vanilla", model, args.n, 0, "test", args.prompts)
    warm = units[: args.batch_size]
    plain_loop(backend.pipe, warm, args.batch_size, args.steps, args.guidance, tmp / "warm-plain")
    fairbench_loop(backend, warm, args.batch_size, args.steps, args.guidance, tmp / "warm-fb")

    plain, fb = [], []
    for r in range(args.repeats):  # alternate, so drift in machine load hits both alike
        plain.append(plain_loop(backend.pipe, units, args.batch_size, args.steps, args.guidance, tmp / f"plain{r}"))
        fb.append(fairbench_loop(backend, units, args.batch_size, args.steps, args.guidance, tmp / f"fb{r}"))
    same = all(
        np.array_equal(np.asarray(Image.open(tmp / "plain0" / u.prompt_id / f"{u.sample_idx:05d}.png")),
                       np.asarray(Image.open(tmp / "fb0" / "images" / u.prompt_id / f"{u.sample_idx:05d}.png")))
        for u in units
    )
    p, f = statistics.median(plain), statistics.median(fb)
    cost = labelling_cost(16)
    print(f"model: {model} | {len(units)} images ({args.prompts} prompts x {args.n}), batch {args.batch_size}, "
          f"{args.steps} steps, guidance {args.guidance}, {args.dtype}, {args.repeats} rounds, torch threads {torch.get_num_threads()}")
    print(f"plain diffusers loop : {p:8.2f} images/s = {1 / p:.3f} s/image  (rounds: {', '.join(f'{x:.2f}' for x in plain)})")
    print(f"fairbench generation : {f:8.2f} images/s = {1 / f:.3f} s/image  (rounds: {', '.join(f'{x:.2f}' for x in fb)})")
    print(f"ratio fairbench/plain: {f / p:8.3f}   identical pixels: {'yes' if same else 'NO'}")
    print(f"faces + attributes   : {cost['total_ms']:.1f} ms/image on real 512 px photos "
          f"(MTCNN {cost['detect_ms']:.1f} ms + agegender {cost['classify_ms']:.1f} ms)")


if __name__ == "__main__":
    main()
