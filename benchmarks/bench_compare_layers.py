"""Timing breakdown of the default ``clrobust compare-layers`` run.

Runs the main job exactly as ``clrobust compare-layers`` does with no arguments
(embedded SimCLR st vs at encoders, 512 cifar10-mini test images, PGD-10 at
8/255, batch 128) and prints where the time goes: model loading, the attack,
the forward passes that record the layers, the CKA (U-centred Grams and their
products, float64) and writing results and figures. Also times the whole
command as a user runs it (a fresh process, imports included).

    python benchmarks/bench_compare_layers.py [--repeats 2] [--threads 2] [--statistics | --layout]

``--layout`` runs the job with the networks in channels-last memory (what loading on a CPU gives,
``clrobust.models.fast_layout``) and in PyTorch's default layout, alternating, and prints the ratio part by part.

``--statistics`` also runs the job without its intervals and controls (``--bootstrap 0
--no-noise-control``) and prints what the bootstrap (1000 replicates) and the noise
control add, part by part, measured within the same process.

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


def one_run(bootstrap: int = 1000, noise_control: bool = True) -> dict:
    settings = CompareSettings(models=list(DEFAULT_PAIR), attack=AttackSpec(name="pgd", eps=8 / 255, steps=10),
                               bootstrap=bootstrap, noise_control=noise_control)
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
    ap.add_argument("--statistics", action="store_true", help="what the bootstrap and the noise control cost")
    ap.add_argument("--layout", action="store_true", help="channels-last against the default memory layout")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.layout:
        import clrobust.models.network as network

        chosen = network.prefers_channels_last
        one_run()  # warm-up: first loads and allocations
        timed: dict = {"channels-last": [], "default": []}
        for _ in range(args.repeats):  # alternating, so that a change in the machine's load hits both alike
            for name, rule in (("channels-last", chosen), ("default", lambda net, device, amp=False: False)):
                network.prefers_channels_last = rule
                timed[name].append(one_run())
        network.prefers_channels_last = chosen
        fast, slow = (min(r, key=lambda t: t["total (in process)"]) for r in timed.values())
        print(f"default compare-layers, best of {args.repeats} each, {args.threads} threads, torch {torch.__version__}")
        print(f"{'part':<22}{'channels-last':>14}{'default':>9}{'ratio':>7}")
        for k in fast:
            print(f"{k:<22}{fast[k]:>14.2f}{slow[k]:>9.2f}{slow[k] / max(fast[k], 1e-9):>7.2f}")
        return
    if args.statistics:
        one_run(0, False)  # warm-up: first loads and allocations
        plain = min((one_run(0, False) for _ in range(args.repeats)), key=lambda r: r["total (in process)"])
        boot = min((one_run(1000, False) for _ in range(args.repeats)), key=lambda r: r["total (in process)"])
        full = min((one_run() for _ in range(args.repeats)), key=lambda r: r["total (in process)"])
        print(f"{'part':<22}{'plain':>8}{'+bootstrap':>12}{'+noise':>9}   (seconds, best of {args.repeats})")
        for k in plain:
            print(f"{k:<22}{plain[k]:>8.2f}{boot[k]:>12.2f}{full[k]:>9.2f}")
        total = full["total (in process)"]
        boot_cost = boot["cka"] - plain["cka"]  # the replicates are summed inside the CKA step
        noise_cost = (full["forward"] + full["cka"]) - (boot["forward"] + boot["cka"])
        print(f"of the default run ({total:.1f} s): bootstrap {boot_cost:.2f} s ({boot_cost / total:.1%}), "
              f"noise control {noise_cost:.2f} s ({noise_cost / total:.1%})")
        return

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
