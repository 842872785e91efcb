"""The bad-input matrix: hostile or mistaken input to every command and to the Python API.

Each row is one bad input. A command row asserts the exit status (2: bad usage or
input, 1: the run could not finish), exactly one line on stderr that names the
problem (matched by a pattern) and is not the catch-all for unanticipated errors,
no traceback, no file changed outside the run's own ``--out``, and no marker file
from any payload. An API row asserts a :class:`ClrobustError` with a one-line message.
Everything runs in-process on tiny data, except the signal rows (a real process).
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
import signal
import struct
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import numpy as np
import pytest
import torch

from clrobust.errors import ClrobustError

MARKER = "PWNED"
ROOT = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- inputs the rows build
class Payload:
    """Unpickling this runs ``func(*args)``: the classic malicious checkpoint."""

    def __init__(self, func: Callable, *args: Any):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def marker(d: Path) -> str:
    return str(d / MARKER)


def payloads(d: Path) -> Dict[str, Payload]:
    import builtins

    code = f"open({marker(d)!r}, 'w').write('x')"
    return {"os-system": Payload(os.system, f"touch {marker(d)}"),
            "exec": Payload(builtins.exec, code),
            "eval": Payload(builtins.eval, code),
            "subprocess": Payload(subprocess.call, ["touch", marker(d)]),
            "open-write": Payload(builtins.open, marker(d), "w")}


def torch_payload(d: Path, kind: str, nested: bool = True) -> str:
    """A torch.save zip whose state dict hides a payload (next to real tensors)."""
    obj = {"state_dict": {"conv1.weight": torch.zeros(4, 3, 3, 3), "evil": payloads(d)[kind]}} if nested \
        else payloads(d)[kind]
    path = d / f"evil-{kind}.pt"
    torch.save(obj, path)
    return str(path)


def legacy_payload(d: Path) -> str:
    """A bare pickle (the pre-1.6 torch.save layout) that runs a command."""
    path = d / "evil-legacy.pth"
    path.write_bytes(pickle.dumps(payloads(d)["os-system"], protocol=2))
    return str(path)


_TINY: Dict[str, bytes] = {}


def tiny(d: Path, name: str = "tiny", mutate: Optional[Callable[[Dict[str, torch.Tensor]], None]] = None) -> str:
    """A tiny native checkpoint (width 4) written into ``d``; ``mutate`` edits its tensors."""
    if not _TINY:
        from conftest import tiny_network

        from clrobust.checkpoints import save_network

        tmp = d / ".tiny-src"
        save_network(tmp / "t", tiny_network(0))
        _TINY["st"] = (tmp / "t.safetensors").read_bytes()
        _TINY["json"] = (tmp / "t.json").read_bytes()
        for p in tmp.iterdir():
            p.unlink()
        tmp.rmdir()
    (d / f"{name}.safetensors").write_bytes(_TINY["st"])
    (d / f"{name}.json").write_bytes(_TINY["json"])
    if mutate is not None:
        from safetensors import safe_open
        from safetensors.torch import save_file

        path = d / f"{name}.safetensors"
        with safe_open(str(path), "pt") as f:
            meta, state = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
        mutate(state)
        save_file(state, str(path), metadata=meta)
    return str(d / f"{name}.safetensors")


def nan_weights(state):
    state["encoder.layer2.0.conv1.weight"][0, 0, 0, 0] = float("nan")


def inf_weights(state):
    state["classifier.weight"][1, 2] = float("inf")


def drop_tensor(state):
    del state["encoder.layer1.0.bn1.weight"]


def native_with_config(d: Path, config: Any, raw: bool = False) -> str:
    """The tiny checkpoint's tensors under another model config in the header."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    src = Path(tiny(d, "src"))
    with safe_open(str(src), "pt") as f:
        state = {k: f.get_tensor(k) for k in f.keys()}
        model = json.loads(f.metadata()["model"])
    path = d / "config.safetensors"
    text = config if raw else json.dumps({**model, **config} if isinstance(config, dict) else config)
    save_file(state, str(path), metadata={"format": "clrobust-v1", "model": text})
    return str(path)


def raw_safetensors(d: Path, header: bytes, length: Optional[int] = None, data: bytes = b"") -> str:
    """A safetensors file written byte by byte: 8-byte header length, header, data."""
    path = d / "raw.safetensors"
    path.write_bytes(struct.pack("<Q", len(header) if length is None else length) + header + data)
    return str(path)


def header_claiming(d: Path, width: int) -> str:
    """100-odd bytes whose clrobust header claims a model of ``width`` (a 360 GB net at 100000)."""
    meta = {"format": "clrobust-v1", "model": json.dumps({"arch": "resnet18", "width": width, "num_classes": 10})}
    header = json.dumps({"__metadata__": meta, "w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}})
    return raw_safetensors(d, header.encode(), data=b"\0" * 4)


def write(d: Path, name: str, content: bytes | str) -> str:
    path = d / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    return str(path)


def cifar_root(d: Path, batch: Any = None, raw: Optional[bytes] = None) -> str:
    """An official-layout cifar-10-batches-py folder whose test batch is ``batch`` (or ``raw`` bytes)."""
    folder = d / "cifar" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    good = {"data": np.zeros((5, 3072), np.uint8), "labels": [0, 1, 2, 3, 4]}
    for name in ["data_batch_%d" % i for i in range(1, 6)] + ["test_batch"]:
        (folder / name).write_bytes(pickle.dumps(good))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": [f"c{i}" for i in range(10)]}))
    if raw is not None:
        (folder / "test_batch").write_bytes(raw)
    elif batch is not None:
        (folder / "test_batch").write_bytes(pickle.dumps(batch))
    return str(d / "cifar")


def image_root(d: Path, broken: bool = False, empty: bool = False) -> str:
    from PIL import Image

    root = d / "images"
    for cls in ("cat", "dog"):
        (root / cls).mkdir(parents=True)
        if not empty:
            for i in range(3):
                Image.fromarray(np.full((32, 32, 3), 40 * i, np.uint8)).save(root / cls / f"{i}.png")
    if broken:
        (root / "dog" / "3.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
    return str(root)


def finished_out(d: Path) -> str:
    """--out holding a finished result (a manifest naming its files)."""
    out = d / "out"
    out.mkdir()
    (out / "results.json").write_text("{}")
    (out / "manifest.json").write_text(json.dumps({"files": ["results.json"], "complete": True}))
    return "out"


def zoo_dir(d: Path, manifest: str) -> str:
    write(d, "zoo/manifest.json", manifest)
    return str(d / "zoo")


NP = "--no-progress"
FAST = ["--n-samples", "8", "--batch-size", "8", NP]


# ----------------------------------------------------------------------------- the matrix
@dataclass
class Row:
    group: str
    id: str
    build: Callable[[Path], List[str]]  # the argv, given a scratch folder to write inputs into
    code: int
    match: str
    env: Optional[Dict[str, str]] = None


ROWS: List[Row] = []


def row(group: str, id: str, build: Callable[[Path], List[str]], code: int, match: str, **kw: Any) -> None:
    ROWS.append(Row(group, id, build, code, match, **kw))


# Checkpoints: payloads never run, damaged files are named, headers are checked before allocation.
for kind in ("os-system", "exec", "eval", "subprocess", "open-write"):
    row("checkpoints", f"torch-zip-payload-{kind}", lambda d, k=kind: ["inspect", torch_payload(d, k)], 2,
        r"refus|unsafe|not allowed|weights-only|--trust-checkpoint")
row("checkpoints", "torch-zip-bare-payload", lambda d: ["inspect", torch_payload(d, "os-system", nested=False)], 2,
    r"refus|unsafe|not allowed|weights-only|--trust-checkpoint")
row("checkpoints", "legacy-pickle-payload", lambda d: ["inspect", legacy_payload(d)], 2,
    r"refus|unsafe|not allowed|weights-only|--trust-checkpoint")
row("checkpoints", "payload-via-compare", lambda d: ["compare-layers", torch_payload(d, "exec"), *FAST], 2,
    r"refus|unsafe|not allowed|weights-only|--trust-checkpoint")
row("checkpoints", "payload-via-audit", lambda d: ["audit", legacy_payload(d), *FAST], 2,
    r"refus|unsafe|not allowed|weights-only|--trust-checkpoint")
row("checkpoints", "payload-via-probe-layers", lambda d: ["probe-layers", torch_payload(d, "eval"), *FAST], 2,
    r"refus|unsafe|not allowed|weights-only|--trust-checkpoint")
row("checkpoints", "payload-via-convert", lambda d: ["convert", torch_payload(d, "subprocess"), "out/c"], 2,
    r"refus|unsafe|not allowed|weights-only|--trust-checkpoint")
row("checkpoints", "payload-via-train-init",
    lambda d: ["train", "--init", legacy_payload(d), "--out", "out/m", "--epochs", "0", NP], 2,
    r"refus|unsafe|not allowed|weights-only|--trust-checkpoint")
row("checkpoints", "missing-file", lambda d: ["inspect", str(d / "nope.pt")], 2, r"not found|does not exist")
row("checkpoints", "unknown-zoo-name", lambda d: ["compare-layers", "no-such-model", *FAST], 2,
    r"unknown model 'no-such-model'")
row("checkpoints", "empty-file", lambda d: ["inspect", write(d, "empty.pt", b"")], 2, r"empty\.pt")
row("checkpoints", "random-bytes", lambda d: ["inspect", write(d, "noise.pt", os.urandom(300))], 2, r"noise\.pt")
row("checkpoints", "text-file", lambda d: ["inspect", write(d, "notes.pth", "just some notes\n")], 2, r"notes\.pth")
row("checkpoints", "truncated-zip",
    lambda d: ["inspect", write(d, "cut.pt", Path(torch_payload(d, "exec")).read_bytes()[:200])], 2, r"cut\.pt")
row("checkpoints", "zip-not-torch", lambda d: ["inspect", write(d, "x.pt", b"PK\x05\x06" + b"\0" * 18)], 2, r"x\.pt")
row("checkpoints", "pt-holding-a-list",
    lambda d: [torch.save([1, 2, 3], d / "list.pt"), "inspect", str(d / "list.pt")][1:], 2,
    r"holds a list, not a dict of weights")
row("checkpoints", "pt-unknown-layout",
    lambda d: [torch.save({"foo.bar": torch.zeros(3)}, d / "odd.pt"), "inspect", str(d / "odd.pt")][1:], 2,
    r"format|layout|recognis")
row("checkpoints", "nan-weights", lambda d: ["inspect", tiny(d, "nan", nan_weights)], 2,
    r"NaN or Inf.*encoder\.layer2\.0\.conv1\.weight")
row("checkpoints", "inf-weights-compare", lambda d: ["compare-layers", tiny(d, "inf", inf_weights), *FAST], 2,
    r"NaN or Inf.*classifier\.weight")
row("checkpoints", "nan-weights-audit", lambda d: ["audit", tiny(d, "nan", nan_weights), *FAST], 2,
    r"NaN or Inf")
row("checkpoints", "missing-tensor", lambda d: ["inspect", tiny(d, "cut", drop_tensor)], 2,
    r"does not match its own model config .*missing.*damaged")
row("checkpoints", "metadata-json-corrupt",
    lambda d: [tiny(d, "m"), write(d, "m.json", "{not json"), "inspect", str(d / "m.safetensors")][2:], 2,
    r"m\.json.*not valid JSON")
row("checkpoints", "header-width-100000", lambda d: ["inspect", header_claiming(d, 100000)], 2,
    r"width=100000 is not an integer from 1 to 1024")
row("checkpoints", "header-width-negative", lambda d: ["inspect", header_claiming(d, -3)], 2, r"width=-3")
row("checkpoints", "header-model-not-json",
    lambda d: ["inspect", native_with_config(d, "{arch: resnet18", raw=True)], 2, r"model config .* not JSON")
row("checkpoints", "header-model-a-list", lambda d: ["inspect", native_with_config(d, [1, 2])], 2,
    r"model config is a JSON list, not an object")
row("checkpoints", "header-width-a-string", lambda d: ["inspect", native_with_config(d, {"width": "4"})], 2,
    r"width='4' is not an integer")
row("checkpoints", "header-unknown-key", lambda d: ["inspect", native_with_config(d, {"depth": 9000})], 2,
    r"unknown keys 'depth'")
row("checkpoints", "header-unknown-arch", lambda d: ["inspect", native_with_config(d, {"arch": "resnet9000"})], 2,
    r"arch: unknown architecture 'resnet9000'")
row("checkpoints", "header-huge-wrn", lambda d: ["inspect", native_with_config(d, {"arch": "wrn-6004-10"})], 2,
    r"depth up to 406")
row("checkpoints", "header-bad-stem", lambda d: ["inspect", native_with_config(d, {"stem": "giant"})], 2,
    r"stem='giant' is not one of")
row("checkpoints", "header-nan-mean",
    lambda d: ["inspect", native_with_config(d, {"mean": [float("nan"), 0.5, 0.5]})], 2, r"mean=.*finite numbers")
row("checkpoints", "header-zero-std", lambda d: ["inspect", native_with_config(d, {"std": [0.2, 0.0, 0.2]})], 2,
    r"std=.*not above 0")
row("checkpoints", "header-zero-classes", lambda d: ["inspect", native_with_config(d, {"num_classes": 0})], 2,
    r"num_classes=0")
row("checkpoints", "header-config-other-width", lambda d: ["inspect", native_with_config(d, {"width": 8})], 2,
    r"does not match its own model config .*shape.*damaged")
row("checkpoints", "header-too-big-for-limit", lambda d: ["inspect", native_with_config(d, {"width": 1024})], 2,
    r"GiB for its weights alone, above the 0\.01 GiB limit; set CLROBUST_MAX_MODEL_GB",
    env={"CLROBUST_MAX_MODEL_GB": "0.01"})
row("checkpoints", "safetensors-header-longer-than-file",
    lambda d: ["inspect", raw_safetensors(d, b'{"a":1}', length=10 ** 12)], 2, r"raw\.safetensors")
row("checkpoints", "safetensors-header-not-json", lambda d: ["inspect", raw_safetensors(d, b"\xff\xfe{{{{")], 2,
    r"raw\.safetensors")
row("checkpoints", "safetensors-header-a-list", lambda d: ["inspect", raw_safetensors(d, b"[1, 2, 3]")], 2,
    r"raw\.safetensors")
row("checkpoints", "safetensors-offsets-outside",
    lambda d: ["inspect", raw_safetensors(d, json.dumps({"w": {"dtype": "F32", "shape": [1000],
                                                             "data_offsets": [0, 4000]}}).encode(), data=b"\0" * 4)],
    2, r"raw\.safetensors")
row("checkpoints", "safetensors-not-clrobust",
    lambda d: ["inspect", raw_safetensors(d, json.dumps({"w": {"dtype": "F32", "shape": [1],
                                                             "data_offsets": [0, 4]}}).encode(), data=b"\0" * 4)],
    2, r"raw\.safetensors|format|layout")
row("checkpoints", "a-folder-as-model", lambda d: ["inspect", str(d)], 2, r"directory|folder|not a file")
row("checkpoints", "bad-format-name", lambda d: ["inspect", tiny(d), "--format", "nonsense-format"], 2,
    r"nonsense-format")
row("checkpoints", "bad-arch-name",
    lambda d: [torch.save({"conv1.weight": torch.zeros(4, 3, 3, 3)}, d / "k.pt"), "inspect", str(d / "k.pt"),
               "--arch", "resnet1000"][1:], 2, r"unknown architecture 'resnet1000'")
row("checkpoints", "bad-normalize-text", lambda d: ["inspect", tiny(d), "--normalize", "1,2"], 2, r"normali")
row("checkpoints", "bad-normalize-zero-std", lambda d: ["inspect", tiny(d), "--normalize", "0,0,0,1,0,1"], 2,
    r"normali|std")
row("checkpoints", "adversarial-bn-without-dual-bn", lambda d: ["inspect", tiny(d), "--bn", "adversarial"], 2,
    r"adversarial batch-norm|--bn")

# Data: untrusted files, missing folders, broken images.
row("data", "cifar-without-root", lambda d: ["compare-layers", tiny(d), "--data", "cifar10", *FAST], 2,
    r"needs --data-root")
row("data", "cifar-root-missing", lambda d: ["compare-layers", tiny(d), "--data", "cifar10", "--data-root",
                                             str(d / "nowhere"), *FAST], 2, r"nowhere")
row("data", "cifar-root-empty", lambda d: [(d / "e").mkdir(), "compare-layers", tiny(d), "--data", "cifar10",
                                           "--data-root", str(d / "e"), *FAST][1:], 2, r"not found under")
row("data", "cifar-batch-payload",
    lambda d: ["compare-layers", tiny(d), "--data", "cifar10", "--data-root",
               cifar_root(d, payloads(d)["os-system"]), *FAST], 2, r"test_batch.*(posix|os)\.system")
row("data", "cifar-batch-exec-payload",
    lambda d: ["audit", tiny(d), "--data", "cifar10", "--data-root", cifar_root(d, payloads(d)["exec"]), *FAST], 2,
    r"test_batch.*builtins\.exec")
row("data", "cifar-batch-truncated",
    lambda d: ["compare-layers", tiny(d), "--data", "cifar10", "--data-root",
               cifar_root(d, raw=pickle.dumps({"data": np.zeros((5, 3072), np.uint8)})[:40]), *FAST], 2,
    r"test_batch")
row("data", "cifar-batch-wrong-shape",
    lambda d: ["compare-layers", tiny(d), "--data", "cifar10", "--data-root",
               cifar_root(d, {"data": np.zeros((5, 100), np.uint8), "labels": [0] * 5}), *FAST], 2, r"test_batch")
row("data", "cifar-batch-label-out-of-range",
    lambda d: ["compare-layers", tiny(d), "--data", "cifar10", "--data-root",
               cifar_root(d, {"data": np.zeros((5, 3072), np.uint8), "labels": [0, 1, 2, 3, 99]}), *FAST], 2,
    r"labels under .* lie outside 0\.\.9")
row("data", "cifar-batch-not-a-dict",
    lambda d: ["compare-layers", tiny(d), "--data", "cifar10", "--data-root", cifar_root(d, [1, 2, 3]), *FAST], 2,
    r"test_batch")
row("data", "imagefolder-broken-image",
    lambda d: ["compare-layers", tiny(d), "--data", "imagefolder", "--data-root", image_root(d, broken=True),
               *FAST], 2, r"image '.*3\.png' cannot be read .*--skip-bad-images")
row("data", "imagefolder-no-classes",
    lambda d: [write(d, "flat/a.txt", "x"), "compare-layers", tiny(d), "--data", "imagefolder", "--data-root",
               str(d / "flat"), *FAST][1:], 2, r"no images|empty")
row("data", "imagefolder-empty-classes",
    lambda d: ["compare-layers", tiny(d), "--data", "imagefolder", "--data-root", image_root(d, empty=True), *FAST],
    2, r"empty|no images")
row("data", "unknown-data-set", lambda d: ["compare-layers", tiny(d), "--data", "mnist", *FAST], 2,
    r"unknown data set 'mnist'")
row("data", "data-root-is-a-file", lambda d: ["compare-layers", tiny(d), "--data", "cifar10", "--data-root",
                                              write(d, "f.txt", "x"), *FAST], 2, r"f\.txt")
row("data", "unknown-split", lambda d: ["compare-layers", tiny(d), "--split", "val", *FAST], 2, r"val")
row("data", "train-data-root-missing",
    lambda d: ["train", "--data", "cifar10", "--data-root", str(d / "nowhere"), "--out", "out/m", NP], 2, r"nowhere")
row("data", "probe-imagefolder-broken",
    lambda d: ["probe-layers", tiny(d), "--data", "imagefolder", "--data-root", image_root(d, broken=True), *FAST],
    2, r"cannot be read")
row("data", "figures-cifar-payload",
    lambda d: ["figures", "st-clean-vs-adv", "--data", "cifar10", "--data-root",
               cifar_root(d, payloads(d)["subprocess"]), "--out", "out", NP], 2, r"subprocess|refus")

# Option values: one line before any work.
for cmd in ("compare-layers", "probe-layers", "audit"):
    row("options", f"{cmd}-batch-size-0", lambda d, c=cmd: [c, tiny(d), "--batch-size", "0", NP], 2,
        r"--batch-size.*0 is not in the range x>=1")
    row("options", f"{cmd}-attack-batch-size-0",
        lambda d, c=cmd: [c, tiny(d), "--attack-batch-size", "0", NP], 2,
        r"--attack-batch-size.*0 is not in the range x>=1")
    row("options", f"{cmd}-n-samples-negative", lambda d, c=cmd: [c, tiny(d), "--n-samples", "-5", NP], 2,
        r"--n-samples.*-5 is not in the range x>=1")
    row("options", f"{cmd}-seed-too-big", lambda d, c=cmd: [c, tiny(d), "--seed", "99999999999999999999", NP], 2,
        r"--seed.*99999999999999999999 is not in the range")
    row("options", f"{cmd}-device-nonsense", lambda d, c=cmd: [c, tiny(d), "--device", "nonsense", NP], 2,
        r"'nonsense' is not a device; use auto, cpu, cuda or cuda:N")
    row("options", f"{cmd}-device-cuda-without-gpu", lambda d, c=cmd: [c, tiny(d), "--device", "cuda", NP], 2,
        r"CUDA is not available on this machine; use --device cpu")
row("options", "seed-negative", lambda d: ["compare-layers", tiny(d), "--seed", "-1", NP], 2, r"--seed")
row("options", "seed-not-a-number", lambda d: ["compare-layers", tiny(d), "--seed", "abc", NP], 2, r"--seed")
row("options", "device-tpu", lambda d: ["compare-layers", tiny(d), "--device", "tpu", NP], 2,
    r"not a device|cpu or cuda")
row("options", "device-mps", lambda d: ["compare-layers", tiny(d), "--device", "mps", NP], 2, r"cpu or cuda")
row("options", "device-bad-index", lambda d: ["compare-layers", tiny(d), "--device", "cuda:x", NP], 2,
    r"not a device")
row("options", "layers-empty", lambda d: ["compare-layers", tiny(d), "--layers", "", *FAST], 2,
    r"no layers given \(--layers is empty\)")
row("options", "layers-only-commas", lambda d: ["compare-layers", tiny(d), "--layers", ",,", *FAST], 2,
    r"no layers given")
row("options", "layers-no-match", lambda d: ["compare-layers", tiny(d), "--layers", "layer9.*", *FAST], 2,
    r"layer 'layer9\.\*' matches no module")
row("options", "probe-layers-empty", lambda d: ["probe-layers", tiny(d), "--layers", " ", *FAST], 2,
    r"no layers given")
row("options", "steps-0", lambda d: ["compare-layers", tiny(d), "--steps", "0", *FAST], 2, r"--steps")
row("options", "alpha-nan", lambda d: ["compare-layers", tiny(d), "--alpha", "nan", *FAST], 2,
    r"--alpha.*'nan' is not a finite number")
row("options", "alpha-negative", lambda d: ["compare-layers", tiny(d), "--alpha", "-0.1", *FAST], 2,
    r"--alpha.*must be above 0")
row("options", "alpha-inf", lambda d: ["compare-layers", tiny(d), "--alpha", "inf", *FAST], 2, r"not a finite")
row("options", "eps-8-linf", lambda d: ["compare-layers", tiny(d), "--eps", "8", *FAST], 2, r"8/255")
row("options", "eps-text", lambda d: ["compare-layers", tiny(d), "--eps", "abc", *FAST], 2, r"--eps")
row("options", "eps-negative", lambda d: ["compare-layers", tiny(d), "--eps", "-0.1", *FAST], 2, r"--eps")
row("options", "eps-divide-by-zero", lambda d: ["compare-layers", tiny(d), "--eps", "8/0", *FAST], 2, r"--eps")
row("options", "attack-unknown", lambda d: ["compare-layers", tiny(d), "--attack", "cw", *FAST], 2, r"--attack")
row("options", "metric-unknown", lambda d: ["compare-layers", tiny(d), "--metric", "rbf-cka", *FAST], 2,
    r"--metric")
row("options", "unknown-option", lambda d: ["compare-layers", tiny(d), "--frobnicate", *FAST], 2,
    r"No such option '--frobnicate'")
row("options", "unknown-command", lambda d: ["compare"], 2, r"No such command 'compare'")
row("options", "probe-train-0", lambda d: ["compare-layers", tiny(d), "--probe-train", "0", *FAST], 2,
    r"--probe-train")
row("options", "audit-attacks-unknown", lambda d: ["audit", tiny(d), "--attacks", "cw", *FAST], 2, r"cw")
row("options", "audit-attacks-empty", lambda d: ["audit", tiny(d), "--attacks", ",", *FAST], 2, r"no attack given")
row("options", "audit-eps-empty", lambda d: ["audit", tiny(d), "--eps", "", *FAST], 2, r"eps")
row("options", "audit-l2-eps-text", lambda d: ["audit", tiny(d), "--l2-eps", "big", *FAST], 2, r"--l2-eps")
row("options", "audit-no-models", lambda d: ["audit", *FAST], 2, r"Missing argument")
row("options", "probe-n-train-0", lambda d: ["probe-layers", tiny(d), "--n-train", "0", *FAST], 2, r"--n-train")
row("options", "figures-unknown-family", lambda d: ["figures", "all-of-them"], 2, r"FAMILY|all-of-them")
row("options", "figures-models-malformed", lambda d: ["figures", "st-clean-vs-adv", "--models", "justaname",
                                                       "--out", "out", NP], 2, r"needs 3 models .* got 1")
row("options", "figures-models-missing-file",
    lambda d: ["figures", "st-clean-vs-adv", "--models", f"simclr-st={d / 'gone.safetensors'}", "--out", "out", NP],
    2, r"gone")
row("options", "train-epochs-negative", lambda d: ["train", "--epochs", "-1", "--out", "out/m", NP], 2,
    r"--epochs")
row("options", "train-batch-size-0", lambda d: ["train", "--batch-size", "0", "--out", "out/m", NP], 2,
    r"--batch-size")
row("options", "train-lr-0", lambda d: ["train", "--lr", "0", "--out", "out/m", NP], 2, r"--lr.*above 0")
row("options", "train-lr-nan", lambda d: ["train", "--lr", "nan", "--out", "out/m", NP], 2, r"--lr.*finite")
row("options", "train-temperature-0", lambda d: ["train", "--temperature", "0", "--out", "out/m", NP], 2,
    r"--temperature")
row("options", "train-width-0", lambda d: ["train", "--width", "0", "--out", "out/m", NP], 2, r"--width")
row("options", "train-scheme-unknown", lambda d: ["train", "--scheme", "byol", "--out", "out/m", NP], 2,
    r"--scheme")
row("options", "train-clae-weight-negative", lambda d: ["train", "--clae-weight", "-1", "--out", "out/m", NP], 2,
    r"--clae-weight")
row("options", "train-init-missing", lambda d: ["train", "--init", str(d / "gone.pt"), "--out", "out/m", NP], 2,
    r"gone\.pt")
row("options", "train-arch-unknown", lambda d: ["train", "--arch", "vgg11", "--out", "out/m", NP], 2,
    r"unknown architecture 'vgg11'")

# Output folders and caches: refused before any work, nothing of the user's touched.
row("outputs", "out-is-a-file", lambda d: [write(d, "out", "mine"), "compare-layers", tiny(d), "--out", "out",
                                           *FAST][1:], 2, r"out")
row("outputs", "out-under-a-file", lambda d: [write(d, "out", "mine"), "compare-layers", tiny(d), "--out",
                                              "out/sub", *FAST][1:], 2, r"out")
row("outputs", "finished-result-without-overwrite",
    lambda d: [finished_out(d), "compare-layers", tiny(d), "--out", "out", *FAST][1:], 2, r"--overwrite")
row("outputs", "finished-probe-without-overwrite",
    lambda d: [finished_out(d), "probe-layers", tiny(d), "--out", "out", *FAST][1:], 2, r"--overwrite")
row("outputs", "finished-audit-without-overwrite",
    lambda d: [finished_out(d), "audit", tiny(d), "--out", "out", *FAST][1:], 2, r"--overwrite")
row("outputs", "finished-figures-without-overwrite",
    lambda d: [finished_out(d), "figures", "st-clean-vs-adv", "--out", "out", NP][1:], 2, r"--overwrite")
row("outputs", "corrupt-manifest",
    lambda d: [write(d, "out/manifest.json", "{oops"), "compare-layers", tiny(d), "--out", "out", *FAST][1:], 2,
    r"already holds results \(manifest\.json\); choose another folder or pass --overwrite")
row("outputs", "convert-out-exists",
    lambda d: [tiny(d, "dst"), "convert", tiny(d), str(d / "dst")][1:], 2, r"exists; choose another OUT or pass "
                                                                          r"--overwrite")
row("outputs", "convert-out-json-exists",
    lambda d: [tiny(d, "dst"), "convert", tiny(d), str(d / "dst.json")][1:], 2, r"--overwrite")
row("outputs", "convert-only-out-json-exists",
    lambda d: [write(d, "notes.json", '{"mine": 1}'), "convert", tiny(d), str(d / "notes")][1:], 2,
    r"notes\.json' exists; choose another OUT or pass --overwrite")
row("outputs", "train-only-out-json-exists",
    lambda d: [write(d, "m.json", '{"mine": 1}'), "train", "--out", str(d / "m"), "--epochs", "1", NP][1:], 2,
    r"m\.json' exists; choose another --out or pass --overwrite")
row("outputs", "train-out-exists",
    lambda d: [tiny(d, "m"), "train", "--out", str(d / "m"), "--epochs", "1", NP][1:], 2, r"--overwrite|--resume")
row("outputs", "train-resume-garbage-state",
    lambda d: [write(d, "m.state.pt", os.urandom(64)), "train", "--resume", "--out", str(d / "m"), "--epochs", "1",
               "--n-train", "64", "--eval-samples", "8", NP][1:], 2,
    r"cannot resume from '.*m\.state\.pt': the file is unreadable .*; delete it to start from scratch")
row("outputs", "train-resume-payload-state",
    lambda d: [write(d, "m.state.pt", Path(torch_payload(d, "os-system")).read_bytes()), "train", "--resume",
               "--out", str(d / "m"), "--epochs", "1", "--n-train", "64", "--eval-samples", "8", NP][1:], 2,
    r"cannot resume from .*unreadable")
row("outputs", "train-resume-wrong-structure",
    lambda d: [torch.save({"phase": "pretrain"}, d / "m.state.pt"), "train", "--resume", "--out", str(d / "m"),
               "--epochs", "1", "--n-train", "64", "--eval-samples", "8", NP][1:], 2,
    r"cannot resume from .*lacks or mistypes epoch")
row("outputs", "zoo-manifest-not-json", lambda d: ["zoo", "--dir", zoo_dir(d, "{models: ")], 2,
    r"zoo manifest .* unreadable .*--rebuild-manifest")
row("outputs", "zoo-manifest-a-list", lambda d: ["zoo", "--dir", zoo_dir(d, "[1, 2]")], 2,
    r"not an object with a list of models")
row("outputs", "zoo-manifest-entry-without-name", lambda d: ["zoo", "--dir", zoo_dir(d, '{"models": [{"x": 1}]}')],
    2, r"model entry 0 lacks a name or a file")
row("outputs", "zoo-manifest-accuracy-a-string",
    lambda d: ["zoo", "--dir", zoo_dir(d, '{"models": [{"name": "a", "file": "a.safetensors", '
                                          '"clean_accuracy": "high"}]}')], 2, r"clean_accuracy that is not a number")
row("outputs", "zoo-empty", lambda d: ["zoo", "--dir", zoo_dir(d, '{"models": []}')], 2, r"zoo .* is empty")
row("outputs", "zoo-manifest-breaks-model-lookup",
    lambda d: ["compare-layers", "no-such-model", *FAST], 2, r"zoo manifest .* unreadable",
    env={"CLROBUST_ZOO": "{zoo}"})


def _snapshot(d: Path) -> Dict[str, str]:
    return {str(p.relative_to(d)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(d.rglob("*"))}


def _own(path: str) -> bool:
    """Whether a path belongs to the run's own output: --out (``out``) and its staging and lock files."""
    return path == "out" or path.startswith(("out/", ".out."))


@pytest.mark.filterwarnings("ignore:cifar10 files under")  # the planted batches differ from the release
@pytest.mark.parametrize("r", ROWS, ids=[f"{r.group}:{r.id}" for r in ROWS])
def test_bad_input(r: Row, tmp_path, monkeypatch, capsys):
    from clrobust.cli import main

    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    for k, v in (r.env or {}).items():
        if v == "{zoo}":
            v = zoo_dir(work, "{broken")
        monkeypatch.setenv(k, v)
    argv = r.build(work)
    before = _snapshot(work)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main(argv)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err
    assert len(lines) == 1, err
    assert exc.value.code == r.code, err
    assert lines[0].startswith("error: ") and "unexpected" not in lines[0], lines[0]
    assert re.search(r.match, lines[0]), lines[0]
    after = _snapshot(work)
    changed = {p for p in set(before) | set(after) if before.get(p) != after.get(p) and not _own(p)}
    assert not changed, changed
    assert not (work / MARKER).exists() and not Path(MARKER).exists()


# ----------------------------------------------------------------------------- the Python API
def _cka(x, y, **kw):
    from clrobust.cka import linear_cka

    return linear_cka(x, y, **kw)


def _api_rows() -> List[Any]:
    from clrobust.attacks import parse_eps
    from clrobust.checkpoints import load
    from clrobust.cka import StreamingCKA, disparity
    from clrobust.compare import CompareResult
    from clrobust.data import load_dataset
    from clrobust.metrics import metric

    x = np.random.default_rng(0).normal(size=(12, 5))
    return [
        ("cka-nan", lambda d: _cka(np.where(x > 1.5, np.nan, x), x), r"x: NaN or Inf"),
        ("cka-inf", lambda d: _cka(x, np.where(x > 1.5, np.inf, x)), r"y: NaN or Inf"),
        ("cka-empty", lambda d: _cka(x[:0], x[:0]), r"empty"),
        ("cka-0d", lambda d: _cka(np.float64(1.0), x), r"0-d"),
        ("cka-complex", lambda d: _cka(x * 1j, x), r"complex"),
        ("cka-rows-differ", lambda d: _cka(x, x[:6]), r"12 vs 6 rows"),
        ("cka-constant", lambda d: _cka(np.ones_like(x), x), r"constant"),
        ("cka-strings", lambda d: _cka([["a"]] * 12, x), r"not a numeric array"),
        ("streaming-no-layers", lambda d: StreamingCKA().update([], []), r"no layers"),
        ("streaming-nothing-added", lambda d: StreamingCKA().compute(), r"no batch"),
        ("disparity-not-square", lambda d: disparity(np.ones((2, 3))), r"square"),
        ("metric-unknown", lambda d: metric("rbf"), r"unknown metric 'rbf'"),
        ("eps-bad", lambda d: parse_eps("lots", "Linf"), r"lots"),
        ("load-payload", lambda d: load(torch_payload(d, "exec")), r"refus|unsafe|not allowed|--trust"),
        ("load-legacy-payload", lambda d: load(legacy_payload(d)), r"refus|unsafe|not allowed|--trust"),
        ("load-header-width", lambda d: load(header_claiming(d, 100000)), r"width=100000"),
        ("data-cifar-payload", lambda d: load_dataset("cifar10", "test", cifar_root(d, payloads(d)["eval"])),
         r"builtins\.eval"),
        ("data-unknown-split", lambda d: load_dataset("cifar10-mini", "validation"), r"unknown split"),
        ("result-other-schema", lambda d: CompareResult.read(Path(write(d, "r.json", '{"schema": "x/1"}'))),
         r"schema 'x/1'"),
        ("result-not-json", lambda d: CompareResult.read(Path(write(d, "r.json", "{"))), r"cannot read"),
    ]


API_ROWS = _api_rows()


@pytest.mark.parametrize("name, call, match", API_ROWS, ids=[f"api:{r[0]}" for r in API_ROWS])
def test_bad_api_input(name, call, match, tmp_path):
    with pytest.raises(ClrobustError) as exc:
        call(tmp_path)
    message = str(exc.value)
    assert "\n" not in message and re.search(match, message), message
    assert not (tmp_path / MARKER).exists()


# ----------------------------------------------------------------------------- signals (a real process)
def _process(args: List[str], cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "clrobust", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.parametrize("sig, code, word", [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")])
def test_a_signal_during_start_up_is_one_line(tmp_path, sig, code, word):
    p = _process(["zoo"], tmp_path)
    time.sleep(0.4)  # importing torch takes longer than this
    p.send_signal(sig)
    _, err = p.communicate(timeout=60)
    lines = [line for line in err.splitlines() if line.strip()]
    assert p.returncode == code and len(lines) == 1 and lines[0].startswith(word), err
    assert "Traceback" not in err and list(tmp_path.iterdir()) == []


def test_the_matrix_is_large_and_covers_every_group():
    groups: Dict[str, int] = {}
    for r in ROWS:
        groups[r.group] = groups.get(r.group, 0) + 1
    groups["api"] = len(API_ROWS)
    groups["signals"] = 2 + 1  # start-up SIGINT and SIGTERM here; mid-run SIGTERM in test_outputs
    assert sum(groups.values()) >= 100 and set(groups) == {"checkpoints", "data", "options", "outputs", "api",
                                                         "signals"}, groups
