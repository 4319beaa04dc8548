"""Coverage and bias of the corrected aggregate against the plug-in, on simulated labels.

Each cell fixes the number of groups K, base shares, faces per prompt n and prompts P. Each
prompt's true shares are (1 - e) * base + e * d, e ~ U(0, 0.1), d ~ Dirichlet(1, ..., 1), drawn
once per cell, so the true aggregate (the mean of the metric over the P prompts) is fixed; every
simulated run then draws each prompt's counts from Multinomial(n, shares). Prints the markdown
table of docs/metrics.md ("Coverage study"), or writes it to --out.

    python benchmarks/coverage.py [--runs 1000] [--plugin-runs 200] [--out FILE]
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
import zlib
from pathlib import Path

import numpy as np

from fairbench.metrics.bootstrap import aggregate_estimate
from fairbench.metrics.correction import (BAR_ABS, BAR_REL, log_pmf, aggregate_corrected, compositions,
                                          corrected_values, per_prompt_values)
from fairbench.metrics.fairness import FAIRNESS_METRICS, uniform

BASES = {
    2: {"p=0.5": [0.5, 0.5], "p=0.6": [0.6, 0.4], "p=0.75": [0.75, 0.25], "p=0.9": [0.9, 0.1], "p=1.0": [1.0, 0.0]},
    4: {"uniform": [0.25] * 4, "mild skew": [0.4, 0.3, 0.2, 0.1], "one group": [1.0, 0.0, 0.0, 0.0]},
}
SIZES = (8, 16, 40, 100)
PROMPTS = (12, 31, 153)
METRICS = ("bias_gap", "kl")


def true_shares(base: list[float], n_prompts: int, rng: np.random.Generator) -> np.ndarray:
    """(P, K) true shares scattered around the base shares."""
    e = rng.uniform(0, 0.1, size=(n_prompts, 1))
    return (1 - e) * np.asarray(base) + e * rng.dirichlet(np.ones(len(base)), size=n_prompts)


def expected_biases(metric: str, shares: np.ndarray, n: int) -> tuple[float, float]:
    """Exact expected bias of the plug-in and of the corrected aggregate: every count vector enumerated."""
    k = shares.shape[1]
    target = uniform(k)
    fn = FAIRNESS_METRICS.get(metric)
    counts = compositions(n, k)
    corrected, _ = corrected_values(counts, metric, target)
    plug = fn(counts / n, target)
    means = []
    for chunk in np.array_split(shares, max(1, len(shares) // 16)):
        pmf = np.exp(log_pmf(counts[None, :, :], chunk[:, None, :]))  # (prompts, count vectors)
        means.append(np.stack([pmf @ plug, pmf @ corrected], axis=1))
    plug_mean, corrected_mean = np.concatenate(means).mean(axis=0)
    truth = float(fn(shares, target).mean())
    return float(plug_mean - truth), float(corrected_mean - truth)


def cell(metric: str, base: list[float], n: int, n_prompts: int, runs: int, plugin_runs: int, n_sim: int,
         seed: int) -> dict:
    """Bias and coverage of both estimates in one cell."""
    rng = np.random.default_rng(seed)
    k = len(base)
    target = uniform(k)
    fn = FAIRNESS_METRICS.get(metric)
    shares = true_shares(base, n_prompts, rng)
    truth = float(fn(shares, target).mean())
    counts = np.stack([rng.multinomial(n, p, size=runs) for p in shares], axis=1)  # (runs, P, K)
    plug = fn(counts / n, target).mean(axis=1)
    flat, _ = per_prompt_values(counts.reshape(-1, k), metric, target)
    corrected = flat.reshape(runs, n_prompts).mean(axis=1)
    intervals = np.array([(c.low, c.high) for c in (aggregate_corrected(counts[r], metric, target, n_sim=n_sim, seed=r) for r in range(runs))])
    covered = (intervals[:, 0] <= truth) & (truth <= intervals[:, 1])
    widths = intervals[:, 1] - intervals[:, 0]
    plug_cov = [(lambda e: e.low <= truth <= e.high)(aggregate_estimate(counts[r], fn, n_boot=200, seed=r))
                for r in range(plugin_runs)]
    plug_bias, corrected_bias = expected_biases(metric, shares, n)
    return {"truth": truth, "plugin_bias": plug_bias, "corrected_bias": corrected_bias,
            "simulated_bias": float(corrected.mean() - truth),
            "bar": max(BAR_ABS, BAR_REL * abs(plug_bias)), "coverage": float(np.mean(covered)),
            "plugin_coverage": float(np.mean(plug_cov)), "width": float(np.mean(widths))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1000, help="simulated runs per cell")
    parser.add_argument("--plugin-runs", type=int, default=200, help="runs per cell for the plug-in's interval")
    parser.add_argument("--metrics", default=",".join(METRICS))
    parser.add_argument("--n-sim", type=int, default=200, help="simulated draws per prompt for the sampling "
                        "variance at K > 2 (a run uses --n-boot, 1000 by default)")
    parser.add_argument("--out", type=Path, help="write the markdown table here (default: print it)")
    args = parser.parse_args(argv)
    lines = ["| metric | K | shares | n | P | true | plug-in bias | corrected bias | (simulated) | bar | corrected covers "
             "| plug-in covers | corrected width |", "|" + "---|" * 13]
    start, misses = time.perf_counter(), 0
    for metric, k in itertools.product(args.metrics.split(","), (2, 4)):
        for (label, base), n, n_prompts in itertools.product(BASES[k].items(), SIZES, PROMPTS):
            r = cell(metric, base, n, n_prompts, args.runs, args.plugin_runs, args.n_sim, seed=zlib.crc32(f'{k} {label} {n} {n_prompts}'.encode()))
            bias_ok = n < 16 or abs(r["corrected_bias"]) <= r["bar"] + 1e-12
            ok = r["coverage"] >= 0.93 and bias_ok
            misses += not ok
            lines.append(f"| {metric} | {k} | {label} | {n} | {n_prompts} | {r['truth']:.3f} | {r['plugin_bias']:+.3f} "
                         f"| {r['corrected_bias']:+.4f}{'' if bias_ok else ' (over)'} | {r['simulated_bias']:+.3f} | {r['bar']:.4f} "
                         f"| {r['coverage']:.3f}{'' if r['coverage'] >= 0.93 else ' (under)'} "
                         f"| {r['plugin_coverage']:.3f} | {r['width']:.3f} |")
            print(lines[-1], file=sys.stderr, flush=True)
    lines.append("")
    lines.append(f"{args.runs} runs per cell ({args.plugin_runs} for the plug-in's percentile interval, 200 "
                 f"bootstrap draws each; {args.n_sim} draws per prompt for the corrected interval's sampling variance "
                 f"at K = 4); {misses} cells miss a target; {time.perf_counter() - start:.0f} s.")
    text = "\n".join(lines) + "\n"
    if args.out:
        args.out.write_text(text)
    else:
        print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
