"""Scoring a finished run: labels -> metrics, with the corrected estimators' designs solved vs read from the cache.

Each corrected estimate needs a small linear programme per (metric term, target, face count); a run needs
about a hundred. They are memoised in fairbench's cache, so only the first process to meet a design
solves it. This benchmark copies a finished run to a temporary folder and scores its labels three times,
each in a fresh process: with an empty cache (every design solved), with the cache that process filled,
and once more with an empty cache. Printed: seconds of each, the ratio cold / warm, and whether every
metrics.json was byte-identical (a memo must not change a number).

    python benchmarks/bench_scoring.py RUN_DIR
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ONE = """
import sys, time
from pathlib import Path
from fairbench.pipeline import build_labellers, evaluate_run, recorded_config
from fairbench.outputs.rundir import LABELS, read_record
import pandas as pd
run = Path(sys.argv[1])
cfg = recorded_config(run, read_record(run), progress=False)
_, classifier = build_labellers(cfg, "cpu")
labels = pd.read_parquet(run / LABELS)
start = time.perf_counter()
evaluate_run(run, labels, classifier, cfg)
print(time.perf_counter() - start)
"""


def score_once(run: Path, cache: Path) -> tuple[float, str]:
    """Seconds to score `run`'s labels in a fresh process with cache folder `cache`, and metrics.json's sha256."""
    env = {**os.environ, "FAIRBENCH_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", ONE, str(run)], env=env, check=True, capture_output=True, text=True)
    return float(out.stdout.strip().splitlines()[-1]), hashlib.sha256((run / "metrics.json").read_bytes()).hexdigest()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", type=Path)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        shutil.copytree(args.run_dir, run, ignore=shutil.ignore_patterns("images", ".fairbench.lock"))
        # the labels carry everything scoring reads; the images are not copied
        (run / "images").mkdir()
        cold, first = score_once(run, Path(tmp) / "cache")
        warm, second = score_once(run, Path(tmp) / "cache")
        cold_again, third = score_once(run, Path(tmp) / "cache-2")
    print(f"{args.run_dir}: scoring {cold:.1f} s with an empty cache, {warm:.1f} s with the designs cached "
          f"({cold / warm:.1f}x), {cold_again:.1f} s empty again; metrics.json identical: {first == second == third}")


if __name__ == "__main__":
    main()
