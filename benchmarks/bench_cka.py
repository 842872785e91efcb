"""clrobust's minibatch CKA against peer CKA libraries: wall-time ratios and numerical error.

The job: a torchvision ResNet-18 with random weights (seed 0, eval mode) compared with
itself on 10 layers (conv1, the 8 residual blocks, avgpool), n images of the embedded
cifar10-mini train split (32x32, CIFAR-normalised), batch 100, CPU. Every library
computes the 10 x 10 minibatch linear CKA (unbiased HSIC summed over batches,
Nguyen, Raghu & Kornblith 2021) through its own public API.

Two timings per library, measured in the same process, interleaved, best of --repeats:

* ``forward+CKA``: the library's whole pipeline on the real model (its own hooks and
  forward passes; some libraries run the model twice when comparing it with itself);
* ``CKA only``: the same library call on a replay model whose layers return
  activations recorded beforehand, so the forward pass costs nothing.

Ratios are relative to clrobust (``StreamingCKA`` fed by ``LayerRecorder``); absolute
seconds depend on the machine and its load, the ratios are what to compare.

Error: max |difference| over the 10 x 10 matrix from a float64 numpy reference computed
here, independently of every library, on the same float32 activations:

* ``err mb``: the minibatch formula sum_b HSIC1(K_b, L_b) / sqrt(sum_b HSIC1(K_b, K_b)
  sum_b HSIC1(L_b, L_b)), HSIC1 the unbiased estimator of Song et al. (2012) -- the
  quantity every library here estimates, so this is the numerical error;
* ``|d| full``: the full-batch unbiased CKA on all n samples -- an estimator difference
  (minibatch vs full batch), not a bug, shown for scale.

Peers (optional, never project dependencies; install by hand with --no-deps):
torch-cka (``torch_cka``), pytorch_cka (``cka``), cka-pytorch (``cka_pytorch``),
ckatorch. A peer that is not installed, or that fails, is reported and skipped.

    python benchmarks/bench_cka.py [--n 1000 2000] [--repeats 3] [--threads 1]

Run by hand, not by CI. n must be a multiple of the batch size (100) and at most 4660.
"""

from __future__ import annotations

import argparse
import copy
import os
import time
import warnings
from importlib import metadata
from typing import Callable, Dict, List, Optional

os.environ.setdefault("TQDM_DISABLE", "1")  # torch_cka and cka_pytorch have no switch for their bars
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # numpy, used only by the (untimed) references

import numpy as np
import torch
import torchvision
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from clrobust.cka import StreamingCKA
from clrobust.data import CIFAR10_MEAN, CIFAR10_STD, load_dataset, to_float
from clrobust.hooks import LayerRecorder

LAYERS = ["conv1", "layer1.0", "layer1.1", "layer2.0", "layer2.1",
          "layer3.0", "layer3.1", "layer4.0", "layer4.1", "avgpool"]
BATCH = 100


# ---------------------------------------------------------------- the job

def build_model() -> nn.Module:
    torch.manual_seed(0)
    return torchvision.models.resnet18().eval()


def load_images(n: int) -> torch.Tensor:
    data = load_dataset("cifar10-mini", "train")
    if n > len(data):
        raise SystemExit(f"--n {n} is more than the {len(data)} cifar10-mini train images.")
    x = to_float(data.images[:n])
    mean = torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR10_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def record_features(model: nn.Module, loader: DataLoader) -> Dict[str, torch.Tensor]:
    """Every layer's output for all samples, (n, ...) float32, with plain forward hooks."""
    modules = dict(model.named_modules())
    out: Dict[str, List[torch.Tensor]] = {name: [] for name in LAYERS}
    handles = [modules[name].register_forward_hook(lambda m, i, o, name=name: out[name].append(o.detach()))
               for name in LAYERS]
    try:
        with torch.no_grad():
            for x, _ in loader:
                model(x)
    finally:
        for h in handles:
            h.remove()
    return {name: torch.cat(chunks) for name, chunks in out.items()}


class _Tap(nn.Module):
    """Returns the recorded activations of the samples whose indices it is given."""

    def __init__(self, feats: torch.Tensor):
        super().__init__()
        self.feats = feats

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.feats[idx]


class Replay(nn.Module):
    """A model with the same layer names whose forward replays recorded activations.

    Input: a batch of sample indices. Lets each library run its own pipeline (hooks,
    loop, CKA) with a forward pass that costs only an index copy.
    """

    def __init__(self, feats: Dict[str, torch.Tensor]):
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(1))  # libraries that read the device from a parameter
        self.taps: List[_Tap] = []
        for name in LAYERS:
            parent: nn.Module = self
            *path, leaf = name.split(".")
            for part in path:
                if not hasattr(parent, part):
                    parent.add_module(part, nn.Module())
                parent = getattr(parent, part)
            tap = _Tap(feats[name])
            parent.add_module(leaf, tap)
            self.taps.append(tap)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        out = idx
        for tap in self.taps:
            out = tap(idx)
        return out


# ---------------------------------------------------------------- float64 references (numpy)

def _grams(feats: Dict[str, torch.Tensor], lo: int, hi: int) -> List[np.ndarray]:
    """Linear Grams of samples lo:hi, features centred first (HSIC1 does not change; less cancellation)."""
    grams = []
    for name in LAYERS:
        x = feats[name][lo:hi].reshape(hi - lo, -1).numpy().astype(np.float64)
        x -= x.mean(0, keepdims=True)
        grams.append(x @ x.T)
    return grams


def _hsic1_all(grams: List[np.ndarray]) -> np.ndarray:
    """HSIC1 (Song et al. 2012, eq. 5) of every pair of Grams:
    [tr(K~L~) + 1'K~1 1'L~1 / ((n-1)(n-2)) - 2/(n-2) 1'K~L~1] / (n(n-3)), K~ = K with zero diagonal.
    Grams are symmetric, so tr(K~L~) is the sum of the elementwise product."""
    n = grams[0].shape[0]
    z = np.stack(grams)
    z[:, np.arange(n), np.arange(n)] = 0.0
    rows = z.sum(2)                                   # (layers, n): K~1
    total = rows.sum(1)                               # (layers,):  1'K~1
    flat = z.reshape(len(grams), -1)
    trace = flat @ flat.T
    return (trace + np.outer(total, total) / ((n - 1) * (n - 2)) - 2.0 / (n - 2) * (rows @ rows.T)) / (n * (n - 3))


def _cka(h: np.ndarray) -> np.ndarray:
    d = np.diag(h)
    return h / np.sqrt(np.outer(d, d))


def reference_minibatch(feats: Dict[str, torch.Tensor], n: int) -> np.ndarray:
    return _cka(sum(_hsic1_all(_grams(feats, lo, lo + BATCH)) for lo in range(0, n, BATCH)))


def reference_full(feats: Dict[str, torch.Tensor], n: int) -> np.ndarray:
    return _cka(_hsic1_all(_grams(feats, 0, n)))


# ---------------------------------------------------------------- adapters
# Each adapter: (model, loader) -> 10 x 10 CKA matrix, rows and columns in LAYERS order.
# `model` is a fresh copy of the ResNet or a Replay; `loader` yields (input, label) batches.

def run_clrobust(model: nn.Module, loader: DataLoader) -> np.ndarray:
    acc = StreamingCKA()
    with LayerRecorder(model, LAYERS) as rec:
        for x, _ in loader:
            acts = list(rec.record(x).values())
            acc.update(acts, acts)  # same list: its Grams are computed once
    return acc.compute()


def run_clrobust_fast(model: nn.Module, loader: DataLoader) -> np.ndarray:
    """clrobust with ``precision="fast"``: float32 Gram products, float64 everything else."""
    acc = StreamingCKA(precision="fast")
    with LayerRecorder(model, LAYERS) as rec:
        for x, _ in loader:
            acts = list(rec.record(x).values())
            acc.update(acts, acts)
    return acc.compute()


def run_torch_cka(model: nn.Module, loader: DataLoader) -> np.ndarray:
    from torch_cka import CKA

    cka = CKA(model, model, "a", "b", model1_layers=LAYERS, model2_layers=LAYERS, device="cpu")
    cka.compare(loader, loader)  # as shipped: compare() runs the model with autograd on
    return cka.export()["CKA"].numpy()


def run_pytorch_cka(model: nn.Module, loader: DataLoader) -> np.ndarray:
    from cka import compute_cka

    return compute_cka(model, model, loader, layers=LAYERS, device="cpu", progress=False)[0].numpy()


class _Prefixed(nn.Module):
    """cka_pytorch matches a layer by its short name too, so "conv1" would also hook every
    block's conv1; under a common prefix the full names are unique."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def run_cka_pytorch(model: nn.Module, loader: DataLoader) -> np.ndarray:
    from cka_pytorch import CKACalculator

    wrapped = _Prefixed(model)
    names = ["net." + n for n in LAYERS]
    calc = CKACalculator(wrapped, wrapped, model1_layers=names, verbose=False)
    if calc.hook_manager1.module_names != names:
        raise RuntimeError(f"hooked {calc.hook_manager1.module_names}")
    return calc.calculate_cka_matrix(loader, num_epochs=1).numpy()


def run_ckatorch(model: nn.Module, loader: DataLoader) -> np.ndarray:
    # ckatorch.CKA cannot take this job (see probe_ckatorch_class); its functional minibatch
    # CKA takes all batches at once as (batches, batch, D) and returns one pair's value.
    from ckatorch import cka_batch

    feats = record_features(model, loader)
    nb = len(loader)
    stacked = [feats[n].reshape(nb, BATCH, -1) for n in LAYERS]
    return np.array([[float(cka_batch(x, y)) for y in stacked] for x in stacked])


METHODS = [  # label, distribution (for the version), adapter
    ("clrobust", "clrobust", run_clrobust),
    ("clrobust --precision fast", "clrobust", run_clrobust_fast),
    ("torch-cka (torch_cka.CKA)", "torch-cka", run_torch_cka),
    ("pytorch_cka (cka.compute_cka)", "pytorch_cka", run_pytorch_cka),
    ("cka-pytorch (CKACalculator)", "cka-pytorch", run_cka_pytorch),
    ("ckatorch (cka_batch)", "ckatorch", run_ckatorch),
]
_MODULES = {"clrobust": "clrobust", "torch-cka": "torch_cka", "pytorch_cka": "cka",
            "cka-pytorch": "cka_pytorch", "ckatorch": "ckatorch"}


def available() -> List[tuple]:
    found = []
    for label, dist, fn in METHODS:
        try:
            __import__(_MODULES[dist])
            found.append((label, metadata.version(dist), fn))
        except Exception as exc:  # not installed, or broken import
            print(f"note: {label} skipped: {type(exc).__name__}: {exc}")
    return found


def probe_ckatorch_class(model: nn.Module, images: torch.Tensor) -> Optional[str]:
    """Whether ckatorch's model-level CKA class can run this job (it needs dict batches)."""
    try:
        from ckatorch import CKA
    except Exception:
        return None

    class Dicts(torch.utils.data.Dataset):
        def __len__(self):
            return 8

        def __getitem__(self, i):
            return {"x": images[i]}

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            CKA(copy.deepcopy(model), copy.deepcopy(model), layers=LAYERS)(DataLoader(Dicts(), batch_size=8), epochs=1)
        return None
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"


# ---------------------------------------------------------------- measurement

def timed(fn: Callable, *args) -> tuple:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t = time.perf_counter()
        out = fn(*args)
        return out, time.perf_counter() - t


def bench_n(n: int, base: nn.Module, methods: List[tuple], repeats: int) -> None:
    images = load_images(n)
    real_loader = DataLoader(TensorDataset(images, torch.zeros(n)), batch_size=BATCH, shuffle=False)
    index_loader = DataLoader(TensorDataset(torch.arange(n), torch.zeros(n)), batch_size=BATCH, shuffle=False)

    feats, t_fwd = timed(record_features, copy.deepcopy(base), real_loader)
    t = time.perf_counter()
    ref_mb = reference_minibatch(feats, n)
    t_mb = time.perf_counter() - t
    t = time.perf_counter()
    ref_full = reference_full(feats, n)
    print(f"\nn = {n}: references (numpy float64) in {t_mb:.1f} s (minibatch) and "
          f"{time.perf_counter() - t:.1f} s (full batch)")

    warm = DataLoader(TensorDataset(torch.arange(2 * BATCH), torch.zeros(2 * BATCH)), batch_size=BATCH)
    for _, _, fn in methods:  # untimed: lazy imports and first-call set-up
        try:
            timed(fn, Replay(feats), warm)
        except Exception:
            pass  # reported by the timed runs
    best: Dict[str, Dict[str, float]] = {m[0]: {} for m in methods}
    errors: Dict[str, Dict[str, float]] = {m[0]: {"mb": 0.0, "full": 0.0} for m in methods}
    failed: Dict[str, str] = {}
    best["forward only (hooks)"] = {"full": t_fwd}
    for r in range(repeats):
        order = methods[r % len(methods):] + methods[:r % len(methods)]  # rotate who goes first
        for label, _, fn in order:
            if label in failed:
                continue
            for mode in ("cka", "full"):
                model = Replay(feats) if mode == "cka" else copy.deepcopy(base)  # fresh: some peers never remove hooks
                loader = index_loader if mode == "cka" else real_loader
                try:
                    mat, secs = timed(fn, model, loader)
                except Exception as exc:
                    failed[label] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:120]}"
                    break
                best[label][mode] = min(secs, best[label].get(mode, float("inf")))
                mat = np.asarray(mat, dtype=np.float64)
                for key, ref in (("mb", ref_mb), ("full", ref_full)):
                    errors[label][key] = max(errors[label][key], float(np.abs(mat - ref).max()))
        _, secs = timed(record_features, copy.deepcopy(base), real_loader)
        best["forward only (hooks)"]["full"] = min(secs, best["forward only (hooks)"]["full"])

    base_cka = best[methods[0][0]].get("cka")
    base_full = best[methods[0][0]].get("full")
    head = (f"{'method':<31}{'version':>9}{'CKA only s':>12}{'ratio':>7}{'fwd+CKA s':>11}{'ratio':>7}"
            f"{'err mb':>10}{'|d| full':>10}")
    print(f"batch {BATCH}, 10 layers, best of {repeats}, {torch.get_num_threads()} threads")
    print(head)
    print("-" * len(head))
    for label, version, _ in methods:
        if label in failed:
            print(f"{label:<31}{version:>9}  failed: {failed[label]}")
            continue
        b, mb, full = best[label], errors[label]["mb"], errors[label]["full"]
        print(f"{label:<31}{version:>9}{b['cka']:>12.2f}{b['cka'] / base_cka:>7.1f}"
              f"{b['full']:>11.2f}{b['full'] / base_full:>7.1f}{mb:>10.1e}{full:>10.1e}")
    fwd = best["forward only (hooks)"]["full"]
    print(f"{'forward only (plain hooks)':<31}{'':>9}{'':>12}{'':>7}{fwd:>11.2f}{fwd / base_full:>7.1f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, nargs="+", default=[1000, 2000], help="sample counts (multiples of 100)")
    ap.add_argument("--repeats", type=int, default=3, help="interleaved runs to take the best of")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (default 1: with another job on the cores, more threads than "
                         "free cores makes small ops wait on each other and the timings erratic)")
    args = ap.parse_args()
    if any(n % BATCH or n < BATCH for n in args.n):
        ap.error(f"every --n must be a positive multiple of the batch size {BATCH}.")
    torch.set_num_threads(args.threads)

    print(f"torch {torch.__version__}, torchvision {torchvision.__version__}, numpy {np.__version__}")
    methods = available()
    base = build_model()
    why = probe_ckatorch_class(base, load_images(8))
    if why:
        print(f"note: ckatorch.CKA (model-level class) cannot run this job ({why}); "
              "timing ckatorch.cka_batch on features recorded with plain hooks instead.")
    for n in args.n:
        bench_n(n, base, methods, args.repeats)


if __name__ == "__main__":
    main()
