"""GPU check: the jobs on CUDA, CUDA against CPU on the same seed, NCCL collectives, throughput.

Run on a machine with a GPU (``bash benchmarks/gpu_check.sh``); on one without, it
says what it would check and exits 0. Prints one line per check (PASS / FAIL /
INFO) and a throughput table; exit 1 when a check fails.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, List, Tuple

import numpy as np
import torch

CHECKS = [
    "compare-layers --attack none: CUDA vs CPU, max |dCKA| <= 1e-5 and equal clean accuracy",
    "compare-layers PGD-10 8/255: CUDA vs CPU, max |dCKA| and accuracies (<= 1e-3 once random starts "
    "come from a CPU generator)",
    "torchrun path with NCCL: compare-layers and audit through a one-process NCCL group equal the plain "
    "CUDA run (every collective tensor on the rank's GPU)",
    "probe-layers on CUDA: runs, probe accuracies close to CPU's",
    "throughput (images/s): forward, PGD-10, AutoAttack; the CKA step; float32 matmul GFLOP/s",
]


def _max_cka_diff(a, b) -> float:
    return max(float(np.abs(x.matrix - y.matrix).max()) for x, y in zip(a.cka, b.cka))


def _timed(fn: Callable[[], object], sync: bool = True) -> float:
    if sync:
        torch.cuda.synchronize()
    t = time.perf_counter()
    fn()
    if sync:
        torch.cuda.synchronize()
    return time.perf_counter() - t


def main() -> int:
    if not torch.cuda.is_available():
        print("no CUDA device: dry run. On a machine with a GPU this script checks:")
        for c in CHECKS:
            print(f"  - {c}")
        return 0
    import torch.distributed as td

    from clrobust.attacks import AttackSpec, attack_batch
    from clrobust.audit import AuditSettings, run_audit
    from clrobust.checkpoints import DEFAULT_PAIR, load
    from clrobust.cka import StreamingCKA
    from clrobust.compare import CompareSettings, run_compare
    from clrobust.data import load_dataset, to_float
    from clrobust.distributed import Dist
    from clrobust.probes import ProbeSettings, run_probe_layers

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    dev = torch.cuda.get_device_name(0)
    print(f"device: {dev}; torch {torch.__version__}, CUDA {torch.version.cuda}, "
          f"{os.cpu_count()} CPU cores, torch threads {torch.get_num_threads()}")
    results: List[Tuple[str, bool, str]] = []

    def check(name: str, ok: bool, detail: str) -> None:
        results.append((name, ok, detail))
        print(f"{'PASS' if ok else 'FAIL'}  {name}: {detail}", flush=True)

    def info(name: str, detail: str) -> None:
        print(f"INFO  {name}: {detail}", flush=True)

    models = list(DEFAULT_PAIR)
    none = AttackSpec("none", 0.0, 1)
    runs = {}
    for dname in ("cpu", "cuda"):
        for aname, spec in (("none", none), ("pgd", AttackSpec("pgd", 8 / 255, 10))):
            t = time.perf_counter()
            runs[(dname, aname)] = run_compare(CompareSettings(models=models, attack=spec, device=dname),
                                               progress=False)
            info(f"compare-layers {aname} on {dname}", f"{time.perf_counter() - t:.1f}s "
                 f"(timings {runs[(dname, aname)].timings_seconds})")
    c, g = runs[("cpu", "none")], runs[("cuda", "none")]
    d = _max_cka_diff(c, g)
    check("compare-layers --attack none, CUDA vs CPU", d <= 1e-5 and c.accuracy == g.accuracy,
          f"max |dCKA| {d:.2e}; accuracy CPU {c.accuracy} CUDA {g.accuracy}")
    c, g = runs[("cpu", "pgd")], runs[("cuda", "pgd")]
    d = _max_cka_diff(c, g)
    acc = {lab: {k: round(g.accuracy[lab][k] - c.accuracy[lab][k], 4) for k in c.accuracy[lab]} for lab in c.labels}
    info("compare-layers PGD-10, CUDA vs CPU", f"max |dCKA| {d:.2e}; accuracy CUDA - CPU {acc}")

    # The torchrun path: a one-process NCCL group; every collective must run on the rank's GPU.
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29533")
    td.init_process_group("nccl", rank=0, world_size=1, device_id=torch.device("cuda", 0))
    dist = Dist(0, 1, torch.device("cuda", 0))
    try:
        r = run_compare(CompareSettings(models=models, attack=none, device="cuda"), progress=False, dist=dist)
        d = _max_cka_diff(r, runs[("cuda", "none")])
        check("compare-layers --attack none through NCCL", d <= 1e-9 and r.accuracy == runs[("cuda", "none")].accuracy,
              f"max |dCKA| vs the plain CUDA run {d:.2e}")
        pgd = AttackSpec("pgd", 8 / 255, 10)
        again = run_compare(CompareSettings(models=models, attack=pgd, device="cuda"), progress=False)
        noise = _max_cka_diff(again, runs[("cuda", "pgd")])
        r = run_compare(CompareSettings(models=models, attack=pgd, device="cuda"), progress=False, dist=dist)
        d = _max_cka_diff(r, runs[("cuda", "pgd")])
        check("compare-layers PGD-10 through NCCL", r.accuracy == runs[("cuda", "pgd")].accuracy,
              f"same accuracies; max |dCKA| vs the plain CUDA run {d:.2e}, between two plain CUDA runs "
              f"{noise:.2e} (cuDNN's backward is not bitwise deterministic)")
        with tempfile.TemporaryDirectory() as tmp:
            a_set = AuditSettings(models=["simclr-at"], eps=(8 / 255,), attacks=("fgsm", "pgd20"), n_samples=256,
                                  batch_size=128, device="cuda")
            t = time.perf_counter()
            plain = run_audit(a_set, Path(tmp) / "plain", progress=False)
            info("audit fgsm+pgd20, 256 images, CUDA", f"{time.perf_counter() - t:.1f}s")
            nccl = run_audit(a_set, Path(tmp) / "nccl", progress=False, dist=dist)
            same = [(x.attack, x.robust_accuracy) for x in plain.rows] == [(x.attack, x.robust_accuracy)
                                                                           for x in nccl.rows]
            check("audit through NCCL", same, json.dumps([(x.attack, x.robust_accuracy) for x in nccl.rows]))
    finally:
        td.destroy_process_group()

    with tempfile.TemporaryDirectory() as tmp:
        res = {}
        for dname in ("cpu", "cuda"):
            t = time.perf_counter()
            res[dname] = run_probe_layers(ProbeSettings("simclr-at", n_train=1000, n_samples=256, device=dname,
                                                        cache=False), Path(tmp) / dname, progress=False).probes
            info(f"probe-layers on {dname}", f"{time.perf_counter() - t:.1f}s")
        diff = max(abs(a - b) for a, b in zip(res["cpu"].clean_accuracy, res["cuda"].clean_accuracy))
        check("probe-layers on CUDA", diff <= 0.02, f"max |d clean probe accuracy| vs CPU {diff:.4f} (256 images)")

    # Throughput.
    net = load("simclr-at", device="cuda").network
    data = load_dataset("cifar10-mini", "test")
    x = to_float(data.images[:512]).cuda()
    y = data.labels[:512].cuda()
    rows = []
    with torch.no_grad():
        net(x)
        s = _timed(lambda: [net(x) for _ in range(10)])
    rows.append(("forward (batch 512)", 5120 / s))
    attack_batch(AttackSpec("pgd", 8 / 255, 10), net, x[:128], y[:128])
    s = _timed(lambda: attack_batch(AttackSpec("pgd", 8 / 255, 10), net, x, y))
    rows.append(("PGD-10 (batch 512)", 512 / s))
    s = _timed(lambda: attack_batch(AttackSpec("autoattack", 8 / 255, 100), net, x[:64], y[:64]))
    rows.append(("AutoAttack standard (64 images, one batch)", 64 / s))
    feats = [torch.randn(128, 2048, device="cuda") for _ in range(10)]
    m = StreamingCKA()
    g1 = m.prepare(feats)
    s = _timed(lambda: [m.update_prepared(g1, g1) for _ in range(20)])
    rows.append(("CKA update, 10x10 layers, batch 128 (updates/s)", 20 / s))
    a = torch.randn(8192, 8192, device="cuda")
    a @ a
    s = _timed(lambda: [a @ a for _ in range(10)])
    rows.append(("float32 matmul 8192^3, TF32 off (GFLOP/s)", 10 * 2 * 8192 ** 3 / s / 1e9))
    print(f"\nthroughput on {dev}:")
    for name, v in rows:
        print(f"  {name:<52}{v:>14,.1f}")
    failed = [n for n, ok, _ in results if not ok]
    print(f"\n{len(results) - len(failed)} of {len(results)} checks passed" + (f"; failed: {failed}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
