"""SIGKILL a synthface run at random points (generation, labelling, metrics, tables, report), resume it,
and compare the final run directory with an uninterrupted run's.

Each round starts `fairbench run` (then `fairbench report`) in a fresh process group, kills it after a
random delay drawn over the first 90 % of the measured length of the whole job (every third round: within 0.3 s of
labelling's start, the short stage of labels, metrics and tables), and resumes until it finishes. The
final manifest, images, labels, metrics, tables and report must equal the uninterrupted run's, and
no temporary file may remain.

Usage: python scripts/kill_resume.py --out DIR [--kills 20] [--seed 0]
Writes DIR/kill_resume.json.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

RUN = ["run", "--method", "vanilla", "--n", "4", "--limit", "6", "--dtype", "float32", "--no-progress",
       "--n-boot", "200"]
COMPARED = ("manifest.jsonl", "labels.parquet", "metrics.json", "report.md")


def fairbench(*args: str) -> list[str]:
    """The command line of a fairbench subcommand in this interpreter."""
    return [sys.executable, "-m", "fairbench", *args]


def job(out: Path) -> list[list[str]]:
    """The job under test: a run, then its report."""
    return [fairbench(*RUN, "--out", str(out)), fairbench("report", str(out))]


def run_job(out: Path) -> float:
    """Run the whole job uninterrupted; returns its wall time."""
    start = time.perf_counter()
    for cmd in job(out):
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def killed_once(out: Path, delay: float, after_labelling_starts: bool = False) -> str:
    """Run the job until `delay` seconds have passed (counted from the moment run.json says labelling has
    started, when `after_labelling_starts`: that stage is short), then SIGKILL it; returns the stage killed."""
    deadline = time.perf_counter() + delay
    for i, cmd in enumerate(job(out)):
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        while after_labelling_starts and i == 0 and proc.poll() is None and stage(out) != "labelling/metrics/tables":
            time.sleep(0.002)
            deadline = time.perf_counter() + delay
        while proc.poll() is None and time.perf_counter() < deadline:
            time.sleep(0.005)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return stage(out) if i == 0 else "report"
    return "finished"


def stage(out: Path) -> str:
    """Where a killed run was: from the status its run.json recorded last."""
    try:
        status = json.loads((out / "run.json").read_text()).get("status")
    except (OSError, json.JSONDecodeError):
        return "start"
    return {"generating": "generation", "labelling": "labelling/metrics/tables"}.get(status, str(status))


def snapshot(out: Path) -> dict[str, bytes]:
    """The files an interrupted run must reproduce exactly."""
    files = {name: (out / name).read_bytes() for name in COMPARED}
    for folder in ("images", "tables"):
        files.update({p.relative_to(out).as_posix(): p.read_bytes() for p in sorted((out / folder).rglob("*"))
                      if p.is_file()})
    return files


def temp_files(out: Path) -> list[str]:
    """Temporary files left in a run directory."""
    return [p.relative_to(out).as_posix() for p in out.rglob("*.tmp")]


def measure(base: Path, kills: int, seed: int) -> dict:
    """Kill-and-resume rounds against one uninterrupted run."""
    rng = random.Random(seed)
    clean = base / "clean"
    shutil.rmtree(clean, ignore_errors=True)
    length = run_job(clean)
    want = snapshot(clean)
    rounds = []
    for k in range(kills):
        out = base / f"killed-{k}"
        shutil.rmtree(out, ignore_errors=True)
        # every third kill lands inside labelling, metrics and tables (well under a second of the job)
        targeted = k % 3 == 1
        where = killed_once(out, rng.uniform(0.0, 0.3) if targeted else rng.uniform(0.5, 0.9 * length), targeted)
        run_job(out)  # resume to the end
        same = snapshot(out) == want
        rounds.append({"killed_in": where, "identical": same, "temp_files": temp_files(out)})
        shutil.rmtree(out)
    return {"uninterrupted_seconds": round(length, 1), "kills": kills,
            "identical": sum(r["identical"] for r in rounds),
            "with_temp_files": sum(bool(r["temp_files"]) for r in rounds),
            "killed_in": {s: sum(r["killed_in"] == s for r in rounds) for s in sorted({r["killed_in"] for r in rounds})},
            "rounds": rounds}


def main() -> None:
    """Command line."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    base = Path(args.out)
    base.mkdir(parents=True, exist_ok=True)
    result = measure(base, args.kills, args.seed)
    (base / "kill_resume.json").write_text(json.dumps(result, indent=2) + "\n")
    print({k: v for k, v in result.items() if k != "rounds"})


if __name__ == "__main__":
    main()
