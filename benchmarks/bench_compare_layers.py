"""Timing breakdown of the default ``clrobust compare-layers`` run.

Runs the main job exactly as ``clrobust compare-layers`` does with no arguments
(embedded SimCLR st vs at encoders, 512 cifar10-mini test images, PGD-10 at
8/255, batch 128) and prints where the time goes: model loading, the attack,
the forward passes that record the layers, the CKA (U-centred Grams and their
products, float64) and writing results and figures. Also times the whole
command as a user runs it (a fresh process, imports included).

    python benchmarks/bench_compare_layers.py [--repeats 2] [--threads 2]

Run by hand, not by CI: absolute seconds depend on the machine and on what
else runs on it; the shares are what to look at.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from clrobust.attacks import AttackSpec
from clrobust.checkpoints.zoo import DEFAULT_PAIR
from clrobust.compare import CompareSettings, run_compare
from clrobust.results import write_results


def one_run() -> dict:
    settings = CompareSettings(models=list(DEFAULT_PAIR), attack=AttackSpec(name="pgd", eps=8 / 255, steps=10))
    t = time.perf_counter()
    results = run_compare(settings, progress=False)
    timings = dict(results.timings_seconds)
    with tempfile.TemporaryDirectory() as tmp:
        t_write = time.perf_counter()
        write_results(Path(tmp), [results])
        timings["write + figures"] = time.perf_counter() - t_write
    timings["total (in process)"] = time.perf_counter() - t
    return timings


def cli_run() -> float:
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        subprocess.run([sys.executable, "-m", "clrobust", "compare-layers", "--out", str(Path(tmp) / "out"),
                        "--no-progress"], check=True, capture_output=True)
        return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=2, help="runs to take the best of")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch threads")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    runs = [one_run() for _ in range(args.repeats)]
    best = min(runs, key=lambda r: r["total (in process)"])
    total = best["total (in process)"]
    print(f"default compare-layers, best of {args.repeats}, {args.threads} threads, torch {torch.__version__}")
    print(f"{'part':<22}{'seconds':>9}{'share':>8}")
    for k, v in best.items():
        if k != "total (in process)":
            print(f"{k:<22}{v:>9.1f}{v / total:>8.0%}")
    print(f"{'total (in process)':<22}{total:>9.1f}")
    print(f"{'whole command':<22}{cli_run():>9.1f}   (fresh process: imports, run, files)")


if __name__ == "__main__":
    main()
