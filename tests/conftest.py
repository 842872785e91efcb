"""Shared fixtures: tiny networks saved as clrobust checkpoints."""

from __future__ import annotations

import os

import pytest
import torch

from clrobust.checkpoints import save_network
from clrobust.data import CIFAR10_MEAN, CIFAR10_STD
from clrobust.models import ModelConfig, create_model


def _pin_xdist_worker() -> None:
    """Under pytest-xdist (``-n N``), give worker i its own share of the CPUs: the commands size their thread
    pools from the CPUs a process may run on, so N workers do not each start a pool over every core."""
    worker, count = os.environ.get("PYTEST_XDIST_WORKER", ""), os.environ.get("PYTEST_XDIST_WORKER_COUNT", "")
    if not (worker.startswith("gw") and count.isdigit() and hasattr(os, "sched_setaffinity")):
        return
    cpus = sorted(os.sched_getaffinity(0))
    n, i = int(count), int(worker[2:])
    if n <= 1 or len(cpus) < n:
        return
    share = len(cpus) // n
    os.sched_setaffinity(0, cpus[i * share:(i + 1) * share])


_pin_xdist_worker()
torch.set_num_threads(min(2, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 2))


def torchrun(args, processes=2):
    """``python -m torch.distributed.run --nproc_per_node N -m clrobust ARGS`` (gloo, one thread each):
    (exit code, output)."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                        str(processes), "-m", "clrobust", *args], capture_output=True, text=True, env=env,
                       timeout=600)
    return p.returncode, p.stdout + p.stderr


def tiny_network(seed: int = 0, width: int = 4, **kw):
    torch.manual_seed(seed)
    cfg = ModelConfig(arch="resnet18", width=width, num_classes=10, proj_dim=16,
                      mean=CIFAR10_MEAN, std=CIFAR10_STD, **kw)
    net = create_model(cfg)
    # Nontrivial BN statistics so eval-mode outputs are not degenerate.
    net.train()
    with torch.no_grad():
        for _ in range(2):
            net(torch.rand(16, 3, 32, 32))
    return net.eval()


def supcontrast_file(path, seed: int = 3):
    """A head-less SupContrast checkpoint (kuangliu encoder keys + projection head, no classifier) at ``path``."""
    import argparse

    net = tiny_network(seed)
    sd = {f"encoder.{k.replace('stem.conv.', 'conv1.').replace('stem.bn.', 'bn1.')}": v
          for k, v in net.encoder.state_dict().items()}
    sd.update({"head.0.weight": torch.randn(32, 32), "head.0.bias": torch.randn(32),
               "head.2.weight": torch.randn(16, 32), "head.2.bias": torch.randn(16)})
    torch.save({"opt": argparse.Namespace(model="resnet18"), "model": sd, "epoch": 3}, path)
    return path


def hooked_forward(net, x, names):
    """One forward pass of ``net`` on ``x`` with plain forward hooks written here (not clrobust's recorder):
    ``({name: output of net.encoder's module name}, logits)``."""
    outputs = {}
    modules = dict(net.encoder.named_modules())
    handles = [modules[n].register_forward_hook(lambda m, i, o, n=n: outputs.__setitem__(n, o.detach().clone()))
               for n in names]
    try:
        with torch.no_grad():
            logits = net(x)
    finally:
        for h in handles:
            h.remove()
    return {n: outputs[n] for n in names}, logits


def assert_real_png(path, min_side=300, max_side=None, min_colours=20, ink=True):
    """A readable PNG of a sensible size with a drawing on it (many colours, not a blank canvas)."""
    import matplotlib.image as mpimg
    import numpy as np

    img = mpimg.imread(str(path))
    h, w = img.shape[:2]
    assert img.ndim == 3 and min(h, w) >= min_side, (path.name, img.shape)
    assert max_side is None or max(h, w) <= max_side, (path.name, img.shape)
    rgb = img[..., :3].reshape(-1, 3)
    assert len(np.unique(rgb, axis=0)) >= min_colours, path.name
    if ink:
        assert 0.005 < (rgb.min(1) < 0.9).mean() < 0.9, path.name  # some ink, on a light background


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory):
    """Two tiny clrobust checkpoints (different seeds); returns their .safetensors paths."""
    d = tmp_path_factory.mktemp("ckpt")
    paths = []
    for seed in (0, 1):
        net = tiny_network(seed)
        paths.append(save_network(d / f"tiny{seed}", net, {"training": {"scheme": "test"}}))
    return paths


@pytest.fixture(scope="session")
def trained_checkpoint(tmp_path_factory):
    """A tiny supervised ResNet-18 (width 4) actually trained on 1,024 embedded CIFAR-10 images.

    Trained once per test session in seconds: clean accuracy is well above chance
    (about 35% on the embedded test images) and PGD at 1-4/255 leaves a robust
    accuracy strictly between 0 and clean, so robust-accuracy counts are non-trivial
    numbers. Returns the native ``.safetensors`` path.
    """
    from filelock import FileLock  # torch's own dependency

    from clrobust.train import TrainConfig, Trainer

    # Under pytest-xdist the workers share one session folder: the first trains, the others wait and read.
    shared = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        shared = shared.parent
    out = shared / "trained-fixture" / "trained"
    with FileLock(str(shared / "trained-fixture.lock")):
        if not out.with_suffix(".safetensors").exists():
            cfg = TrainConfig(scheme="supervised", scenario="st", width=4, n_train=1024, epochs=4, batch_size=64,
                              lr=0.05, eval_samples=8, eval_steps=1, seed=0)
            Trainer(cfg, out, progress=False).run()
    return out.with_suffix(".safetensors")


@pytest.fixture
def one_thread():
    """Tiny tensors: one thread avoids oversubscription when the machine is busy."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
