"""GPU check: every command on CUDA, CUDA against CPU on the same seed, the torchrun path, throughput.

Run on a machine with a GPU (``bash benchmarks/gpu_check.sh``). Without one it says what it
would check and exits 0; ``--rehearse`` runs the whole script on the CPU with small sizes
(the "GPU" is the CPU, NCCL is gloo), so its code is exercised where no GPU is. Prints one
line per check (PASS / FAIL / INFO) and a throughput table; exit 1 when a check fails.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, List, Tuple

import numpy as np
import torch

CHECKS = [
    "every command once on CUDA (compare-layers, probe-layers, audit, figures, train, inspect) with small sizes",
    "compare-layers --attack none: CUDA vs CPU, max |dCKA| <= 1e-5 and equal accuracies",
    "minibatch CKA on CUDA activations (Grams and sums on the device, bootstrap replicates, a CPU batch added to a "
    "CUDA accumulator): equal to the CPU's within 1e-12",
    "compare-layers PGD-10 8/255: CUDA vs CPU (random starts from the CPU generator), max |dCKA| <= 1e-3, equal "
    "clean accuracies and adversarial ones within 1% of the images",
    "--attack-batch-size auto (1024 images per call) gives the batch-by-batch PGD comparison",
    "the torchrun path through a one-process NCCL group: compare-layers, audit and train equal the plain CUDA "
    "runs (every collective tensor on the rank's GPU; train's batch norm over all processes)",
    "train on CUDA: bf16 autocast and channels-last by default (recorded), first-epoch loss close to fp32's; "
    "the same seed's first batch of standard training gives the CPU's loss (within 1e-4)",
    "probe-layers on CUDA: probe accuracies close to the CPU's",
    "throughput (images/s): forward, PGD-10, AutoAttack (one batch of 128 and grouped calls of 1024), train "
    "steps with and without AMP; the CKA step's achieved GFLOP/s against the device's float32 matmul",
]


SECTIONS = ("commands", "cka", "comparisons", "torchrun", "training", "probes", "throughput")


def _max_cka_diff(a, b) -> float:
    return max(float(np.abs(x.matrix - y.matrix).max()) for x, y in zip(a.cka, b.cka))


def main(argv: List[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rehearse", action="store_true",
                        help="run every step on the CPU with small sizes (no GPU needed)")
    parser.add_argument("--sections", default=",".join(SECTIONS),
                        help=f"comma-separated sections to run [all: {','.join(SECTIONS)}]")
    args = parser.parse_args(argv)
    sections = [x for x in args.sections.split(",") if x]
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        parser.error(f"unknown section(s) {', '.join(unknown)}; use some of: {', '.join(SECTIONS)}")
    if not args.rehearse and not torch.cuda.is_available():
        print("no CUDA device: dry run. On a machine with a GPU this script checks:")
        for c in CHECKS:
            print(f"  - {c}")
        print("(--rehearse runs the same steps on the CPU with small sizes)")
        return 0
    gpu = "cpu" if args.rehearse else "cuda"
    small = args.rehearse
    n = 64 if small else 846  # compare-layers images
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    name = torch.cuda.get_device_name(0) if gpu == "cuda" else "CPU (rehearsal)"
    print(f"device: {name}; torch {torch.__version__}, CUDA {torch.version.cuda}, {os.cpu_count()} CPU cores, "
          f"torch threads {torch.get_num_threads()}")
    results: List[Tuple[str, bool, str]] = []

    def check(what: str, ok: bool, detail: str) -> None:
        results.append((what, ok, detail))
        print(f"{'PASS' if ok else 'FAIL'}  {what}: {detail}", flush=True)

    def info(what: str, detail: str) -> None:
        print(f"INFO  {what}: {detail}", flush=True)

    def sync() -> None:
        if gpu == "cuda":
            torch.cuda.synchronize()

    def timed(fn: Callable[[], object]) -> float:
        sync()
        t = time.perf_counter()
        fn()
        sync()
        return time.perf_counter() - t

    with tempfile.TemporaryDirectory() as tmp:
        if "commands" in sections:
            _commands(Path(tmp), gpu, small, check)
        if "cka" in sections:
            _cka_on_device(gpu, check)
        if "comparisons" in sections:
            _comparisons(gpu, n, small, check, info)
        if "torchrun" in sections:
            _torchrun_path(Path(tmp), gpu, n, small, check, info)
        if "training" in sections:
            _training(Path(tmp), gpu, small, check, info, timed)
        if "probes" in sections:
            _probes(Path(tmp), gpu, small, check, info)
    if "throughput" in sections:
        rows = _throughput(gpu, small, timed)
        print(f"\nthroughput on {name}:")
        for what, v in rows:
            print(f"  {what:<60}{v:>14,.1f}")
    failed = [w for w, ok, _ in results if not ok]
    print(f"\n{len(results) - len(failed)} of {len(results)} checks passed" + (f"; failed: {failed}" if failed else ""))
    return 1 if failed else 0


def _commands(tmp: Path, gpu: str, small: bool, check) -> None:
    """Every command once on the device, as a user runs it."""
    k = "32" if small else "128"
    jobs = {
        "compare-layers": ["compare-layers", "--n-samples", k, "--batch-size", "16", "--steps", "2"],
        "probe-layers": ["probe-layers", "simclr-at", "--n-samples", k, "--n-train", k, "--steps", "2"],
        "audit": ["audit", "simclr-at", "--n-samples", k, "--eps", "8/255", "--attacks", "fgsm,pgd20,apgd-ce"],
        "figures": ["figures", "eps-sweep", "--n-samples", k, "--steps", "2"],
        "train": ["train", "--width", "8", "--n-train", "256", "--batch-size", "64", "--epochs", "1",
                  "--classifier-epochs", "0", "--eval-samples", k, "--out"],
        "inspect": ["inspect", "simclr-at"],
    }
    for cmd, argv in jobs.items():
        out = str(tmp / f"cmd-{cmd}")
        full = argv + [out] if argv[-1] == "--out" else argv + (["--out", out] if cmd != "inspect" else [])
        t = time.perf_counter()
        p = subprocess.run([sys.executable, "-m", "clrobust", *full, "--device", gpu, "--no-progress"]
                           if cmd != "inspect" else [sys.executable, "-m", "clrobust", *full],
                           capture_output=True, text=True)
        tail = (p.stdout + p.stderr).strip().splitlines()[-1:] or [""]
        check(f"clrobust {cmd} on {gpu}", p.returncode == 0, f"exit {p.returncode} in {time.perf_counter() - t:.1f}s;"
              f" {tail[0][:150]}")


def _cka_on_device(gpu: str, check) -> None:
    """StreamingCKA fed the device's activations keeps its Grams and sums there and gives the CPU's numbers."""
    from clrobust.cka import StreamingCKA

    g = torch.Generator().manual_seed(0)
    batches = [[torch.randn(64, 16 * (i + 1), generator=g) * 10.0 ** (i - 2) for i in range(4)] for _ in range(3)]
    weights = [torch.randint(0, 3, (8, 64), generator=g) for _ in batches]
    on_device = True
    for precision, tol in (("exact", 1e-12), ("fast", 1e-5)):
        cpu, dev = StreamingCKA(bootstrap=8, precision=precision), StreamingCKA(bootstrap=8, precision=precision)
        for i, (acts, w) in enumerate(zip(batches, weights)):
            cpu.update(acts, acts[::-1], w)
            moved = acts if i == 2 else [a.to(gpu) for a in acts]  # the last batch arrives on the CPU
            dev.update(moved, moved[::-1], w)
        on_device &= all(t is not None and t.device.type == torch.device(gpu).type for t in dev.state())
        d = max(float(np.abs(cpu.compute() - dev.compute()).max()),
                float(np.nanmax(np.abs(cpu.replicates() - dev.replicates()))))
        check(f"minibatch CKA on {gpu} activations ({precision})", d <= tol and on_device,
              f"max |dCKA| vs the CPU {d:.2e} (bound {tol:g}), incl. 8 bootstrap replicates; "
              f"sums on {gpu}: {on_device}")


def _comparisons(gpu: str, n: int, small: bool, check, info) -> None:
    from clrobust.attacks import AttackSpec
    from clrobust.checkpoints import DEFAULT_PAIR
    from clrobust.compare import CompareSettings, run_compare

    runs = {}
    for dname in ("cpu", gpu):
        for aname, spec in (("none", AttackSpec("none", 0.0, 1)), ("pgd", AttackSpec("pgd", 8 / 255, 10))):
            t = time.perf_counter()
            runs[(dname, aname)] = run_compare(CompareSettings(models=list(DEFAULT_PAIR), attack=spec, device=dname,
                                                               n_samples=n), progress=False)
            info(f"compare-layers {aname} on {dname}", f"{time.perf_counter() - t:.1f}s")
    for aname, tol in (("none", 1e-5), ("pgd", 1e-3)):
        c, g = runs[("cpu", aname)], runs[(gpu, aname)]
        d = _max_cka_diff(c, g)
        # clean predictions are continuous in rounding: equal on every device. Sign-PGD is not: a rounding
        # difference flips a pixel's step, so a few images at the decision boundary may end on the other side;
        # allow 1% of the images (far inside the accuracies' own 95% intervals)
        shift = {(lab, k): round(abs(g.accuracy[lab][k] - c.accuracy[lab][k]) * c.n_samples)
                 for lab in c.accuracy for k in c.accuracy[lab]}
        clean_equal = all(v == 0 for (_, k), v in shift.items() if k == "clean")
        ok = d <= tol and clean_equal and max(shift.values()) <= (0 if aname == "none" else 0.01 * c.n_samples)
        moved = ", ".join(f"{lab} {k} {v}" for (lab, k), v in shift.items() if v) or "none"
        check(f"compare-layers {aname}, {gpu} vs cpu", ok,
              f"max |dCKA| {d:.2e} (bound {tol:g}); images whose count moved: {moved} (of {c.n_samples})")
    grouped = run_compare(CompareSettings(models=list(DEFAULT_PAIR), device=gpu, n_samples=n,
                                          attack=AttackSpec("pgd", 8 / 255, 10, batch_size=1024)), progress=False)
    d = _max_cka_diff(grouped, runs[(gpu, "pgd")])
    check("--attack-batch-size 1024 vs batch by batch", d <= 1e-3 and grouped.accuracy == runs[(gpu, "pgd")].accuracy,
          f"max |dCKA| {d:.2e}")


def _torchrun_path(tmp: Path, gpu: str, n: int, small: bool, check, info) -> None:
    """A one-process process group (NCCL on CUDA, gloo on the CPU): every collective on the rank's device."""
    import torch.distributed as td

    from clrobust.attacks import AttackSpec
    from clrobust.audit import AuditSettings, run_audit
    from clrobust.checkpoints import DEFAULT_PAIR
    from clrobust.compare import CompareSettings, run_compare
    from clrobust.distributed import Dist
    from clrobust.train import TrainConfig, Trainer

    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29533")
    device = torch.device("cuda", 0) if gpu == "cuda" else torch.device("cpu")
    if gpu == "cuda":
        td.init_process_group("nccl", rank=0, world_size=1, device_id=device)
    else:
        td.init_process_group("gloo", rank=0, world_size=1)
    dist = Dist(0, 1, device)
    try:
        none = AttackSpec("none", 0.0, 1)
        plain = run_compare(CompareSettings(models=list(DEFAULT_PAIR), attack=none, device=gpu, n_samples=n),
                            progress=False)
        r = run_compare(CompareSettings(models=list(DEFAULT_PAIR), attack=none, device=gpu, n_samples=n),
                        progress=False, dist=dist)
        d = _max_cka_diff(r, plain)
        check("compare-layers through the process group", d <= 1e-9 and r.accuracy == plain.accuracy,
              f"max |dCKA| vs the plain run {d:.2e}")
        a_set = AuditSettings(models=["simclr-at"], eps=(8 / 255,), attacks=("fgsm", "pgd20"),
                              n_samples=64 if small else 256, batch_size=64, device=gpu)
        one = run_audit(a_set, tmp / "audit-plain", progress=False)
        grp = run_audit(a_set, tmp / "audit-group", progress=False, dist=dist)
        rows = [(x.attack, x.robust_accuracy) for x in grp.rows]
        check("audit through the process group", rows == [(x.attack, x.robust_accuracy) for x in one.rows],
              json.dumps(rows))
        # standard training, one batch: its loss is continuous in the weights, so the sums' order is all that
        # differs (sign-PGD is not: a rounding difference flips pixels; the CPU tests cover it with 2 and 3
        # processes)
        cfg = dict(scheme="simclr", scenario="st", width=8, n_train=64, batch_size=64, epochs=1,
                   classifier_epochs=0, eval_samples=64, device=gpu, amp=False)
        a = Trainer(TrainConfig(**cfg), tmp / "train-plain", progress=False).run()
        b = Trainer(TrainConfig(**cfg), tmp / "train-group", progress=False, dist=dist).run()
        la, lb = (_first_loss(tmp / f"train-{k}") for k in ("plain", "group"))
        check("train through the process group (batch norm over all processes)", abs(la - lb) <= 1e-5 * abs(la),
              f"first-epoch loss {la:.6f} vs {lb:.6f}; clean accuracy {a['metrics']['clean_accuracy']:.3f} vs "
              f"{b['metrics']['clean_accuracy']:.3f}")
    finally:
        td.destroy_process_group()


def _first_loss(out: Path) -> float:
    import csv

    with open(out.with_name(out.name + ".history.csv")) as fh:
        return float(next(csv.DictReader(fh))["loss"])


def _training(tmp: Path, gpu: str, small: bool, check, info, timed) -> None:
    from clrobust.train import TrainConfig, Trainer

    cfg = dict(scheme="supervised", scenario="at", width=16, n_train=256 if small else 1024, batch_size=128,
               epochs=1, eval_samples=64, attack_steps=3)
    meta = {}
    for label, extra in (("fp32", {"device": gpu, "amp": False}), ("amp", {"device": gpu}),
                         ("cpu", {"device": "cpu", "amp": False})):
        t = time.perf_counter()
        meta[label] = Trainer(TrainConfig(**cfg, **extra), tmp / f"train-{label}", progress=False).run()
        info(f"train supervised AT ({label})", f"{time.perf_counter() - t:.1f}s for {cfg['n_train']} images")
    amp_on = meta["amp"]["training"]["amp"]
    check("train on the device: AMP by default", amp_on is (gpu == "cuda"), f"recorded amp={amp_on}")
    l32, lamp, lcpu = (_first_loss(tmp / f"train-{k}") for k in ("fp32", "amp", "cpu"))
    info(f"train fp32, device vs CPU, mean loss of {cfg['n_train'] // cfg['batch_size']} steps", f"{l32:.5f} vs "
         f"{lcpu:.5f} (training is chaotic: a "
         "rounding difference grows about sixfold a step, so this differs by ~1e-3 even between CPU thread counts)")
    # the same seed draws the same order, augmentations and PGD starts on every device (all from the CPU
    # generator): the first batch's loss, before any update, is where the devices must agree. Standard training's
    # loss is continuous in rounding, so it must agree closely; adversarial training's passes through sign-PGD,
    # where a rounding difference flips a pixel's step (an H100 machine: 5.5116 on the GPU vs 5.5195 on its CPU;
    # 5.5124 on a 2-core CPU), so it is shown
    first = {}
    for scenario in ("st", "at"):
        one = dict(cfg, n_train=cfg["batch_size"], scenario=scenario)
        for label, dev in (("fp32", gpu), ("cpu", "cpu")):
            Trainer(TrainConfig(**one, device=dev, amp=False), tmp / f"one-{scenario}-{label}", progress=False).run()
            first[(scenario, label)] = _first_loss(tmp / f"one-{scenario}-{label}")
    a, b = first[("st", "fp32")], first[("st", "cpu")]
    check("train fp32 on the device vs CPU, same seed: the first batch's loss (standard training)",
          abs(a - b) <= 1e-4 * abs(b), f"{a:.6f} vs {b:.6f}")
    info("train fp32 on the device vs CPU, same seed: the first batch's loss (adversarial training, sign-PGD)",
         f"{first[('at', 'fp32')]:.6f} vs {first[('at', 'cpu')]:.6f}")
    check("train bf16 autocast vs fp32", abs(lamp - l32) <= 0.05 * abs(l32), f"first-epoch loss {lamp:.5f} vs "
          f"{l32:.5f}")


def _probes(tmp: Path, gpu: str, small: bool, check, info) -> None:
    from clrobust.probes import ProbeSettings, run_probe_layers

    res = {}
    for i, dname in enumerate(("cpu", gpu)):
        t = time.perf_counter()
        res[dname] = run_probe_layers(ProbeSettings("simclr-at", n_train=256 if small else 1000, n_samples=128 if small
                                                    else 256, device=dname, cache=False), tmp / f"probe-{i}-{dname}",
                                      progress=False).probes
        info(f"probe-layers on {dname}", f"{time.perf_counter() - t:.1f}s")
    diff = max(abs(a - b) for a, b in zip(res["cpu"].clean_accuracy, res[gpu].clean_accuracy))
    check("probe-layers on the device vs CPU", diff <= 0.02, f"max |d clean probe accuracy| {diff:.4f}")


def _throughput(gpu: str, small: bool, timed) -> List[Tuple[str, float]]:
    from clrobust.attacks import AttackSpec, attack_batch, attack_batches
    from clrobust.checkpoints import load
    from clrobust.cka import StreamingCKA
    from clrobust.data import load_dataset, to_float

    net = load("simclr-at", device=gpu).network
    data = load_dataset("cifar10-mini", "test")
    big = 128 if small else 1024
    x = to_float(data.images[:big]).to(gpu)
    y = data.labels[:big].to(gpu)
    rows = []
    with torch.no_grad():
        net(x)
        s = timed(lambda: [net(x) for _ in range(5)])
    rows.append((f"forward (batch {big})", 5 * big / s))
    attack_batch(AttackSpec("pgd", 8 / 255, 10), net, x[:32], y[:32])
    s = timed(lambda: attack_batch(AttackSpec("pgd", 8 / 255, 10), net, x, y))
    rows.append((f"PGD-10 (batch {big})", big / s))
    aa = AttackSpec("autoattack", 8 / 255, 100)
    k = 16 if small else 128
    s = timed(lambda: attack_batch(aa, net, x[:k], y[:k]))
    rows.append((f"AutoAttack standard, one call of {k}", k / s))
    parts = [slice(i, i + k) for i in range(0, big, k)]
    s = timed(lambda: attack_batches(aa, net, [x[p] for p in parts], [y[p] for p in parts], list(range(len(parts)))))
    rows.append((f"AutoAttack standard, one call of {big} ({len(parts)} batches)", big / s))
    nb, d, layers = 128, 2048, 10
    feats = [torch.randn(nb, d, device=gpu) for _ in range(layers)]
    m = StreamingCKA()
    m.update(feats, feats)
    reps = 3 if small else 20
    s = timed(lambda: [m.update(feats, feats) for _ in range(reps)])
    flops = reps * 2 * layers * 2 * nb * nb * d  # two sides' Gram products dominate
    a = torch.randn(2048 if small else 8192, 2048 if small else 8192, device=gpu)
    a @ a
    s_mm = timed(lambda: [a @ a for _ in range(3)])
    mm = 3 * 2 * a.shape[0] ** 3 / s_mm / 1e9
    rows.append(("CKA step, 10x10 layers, batch 128, 2048 features (GFLOP/s)", flops / s / 1e9))
    rows.append((f"float32 matmul {a.shape[0]}^3, TF32 off (GFLOP/s)", mm))
    rows.append(("CKA step / matmul (%)", 100 * flops / s / 1e9 / mm))
    return rows


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
