"""Per-layer linear probes: how linearly decodable the labels are at every layer, clean and adversarial.

For one model and a layer set, the activations stage (:mod:`clrobust.activations`:
the same batches, attack seeds and recording as ``compare-layers``) records every
layer on the train split (clean) and on the test split, clean and adversarial
(inputs crafted end to end against the model). Convolutional maps are average
pooled to 2x2 and flattened. Features are computed once per setting and cached in
memory and, optionally, as ``.npz`` on disk. A seeded multinomial logistic
regression (standardised features, full-batch L-BFGS, float64) is fitted per layer.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import OrderedDict
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, ClassVar, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from clrobust.activations import POOL_SIZE, POOLING, Stage, pool_flatten
from clrobust.attacks import AttackSpec
from clrobust.checkpoints import LoadOptions
from clrobust.data import ImageData, SampledDataOptions, data_fields
from clrobust.distributed import Dist
from clrobust.errors import ClrobustError
from clrobust.hooks import layer_names
from clrobust.linear_probe import fit_linear_probe
from clrobust.provenance import versions, weights_hash
from clrobust.results import Drawer, OutputFolder, Result, Table
from clrobust.robustness import right_counts
from clrobust.uncertainty import wilson_interval, with_interval

#: Spatial size conv maps are average pooled to before flattening.
#: Feature sets kept in memory (least recently used dropped first).
MEMORY_CACHE_SIZE = 4
_MEMORY: "OrderedDict[str, LayerFeatures]" = OrderedDict()


@dataclass
class LayerFeatures:
    """Pooled, flattened features of every layer: train (clean), test clean and test adversarial."""

    layers: List[str]
    train: Dict[str, np.ndarray]
    test_clean: Dict[str, np.ndarray]
    test_adversarial: Dict[str, np.ndarray]
    train_labels: np.ndarray
    test_labels: np.ndarray
    model_accuracy: Dict[str, float] = field(default_factory=dict)
    cache_file: Optional[str] = None
    from_cache: str = "computed"


@dataclass
class ProbeResult:
    """Accuracy of a linear probe at every layer."""

    layers: List[str]
    train_accuracy: List[float]
    clean_accuracy: List[float]
    adversarial_accuracy: List[float]
    feature_dims: List[int]
    n_train: int
    n_test: int
    n_classes: int
    attack: Dict[str, Any]
    seed: int
    model_accuracy: Dict[str, float]
    pooling: str = POOLING
    probe: str = ("multinomial logistic regression on standardised features, full-batch L-BFGS "
                  "(float64), L2 weight decay 1e-4, seeded init")
    features: str = "computed"
    cache_file: Optional[str] = None
    timings_seconds: Dict[str, float] = field(default_factory=dict)
    #: per layer, the 95% Wilson interval [low, high] of each accuracy (train: of the n_train images)
    train_ci: List[List[float]] = field(default_factory=list)
    clean_ci: List[List[float]] = field(default_factory=list)
    adversarial_ci: List[List[float]] = field(default_factory=list)
    #: how the test images were chosen
    sampling: str = ""
    #: per layer, the probe right on a test image both clean and adversarial ([] in files written before it)
    robust_accuracy: List[float] = field(default_factory=list)
    robust_ci: List[List[float]] = field(default_factory=list)

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)

    def interval(self, which: str, i: int) -> Tuple[Optional[float], Optional[float]]:
        ci = getattr(self, f"{which}_ci")
        return (ci[i][0], ci[i][1]) if ci else (None, None)


def feature_key(net: nn.Module, layers: Sequence[str], train: ImageData, test: ImageData,
                attack: AttackSpec, batch_size: int) -> str:
    """Cache key: the model's weights, the layers, the images (their pixels and labels, so any data root,
    split or subset), the attack and its seed, batching, pooling and the library versions."""
    desc = {"model": weights_hash(net), "layers": list(layers),
            "train": [train.name, train.split, len(train), train.fingerprint()],
            "test": [test.name, test.split, len(test), test.fingerprint()],
            "attack": attack.to_dict(), "batch_size": batch_size, "pool": POOL_SIZE, "versions": versions(),
            "v": 2}
    return hashlib.sha256(json.dumps(desc, sort_keys=True).encode()).hexdigest()[:16]


def _pooled(stage: Stage, data: ImageData, batch_size: int, inputs: Sequence[str], desc: str, progress: bool,
            dist: Optional[Dist] = None) -> Tuple[Dict[str, Dict[str, np.ndarray]], Dict[str, int]]:
    """Pooled features of every layer per input (``clean``, ``adversarial``), and the model's correct counts
    (with both inputs also ``robust``: right both clean and adversarial).

    Under torchrun each process records its batches into its rows, and a sum over the processes (every
    other process holds zeros there) gives every process all rows.
    """
    names = stage.layers["model"]
    rows: Dict[str, Dict[str, torch.Tensor]] = {i: {} for i in inputs}
    keys = list(inputs) + (["robust"] if {"clean", "adversarial"} <= set(inputs) else [])
    correct = torch.zeros(len(keys), dtype=torch.int64)
    for batch in stage.batches(data, batch_size, inputs=inputs, progress=progress, desc=desc, dist=dist):
        lo, hi = batch.start, batch.start + len(batch.y)
        right: Dict[str, torch.Tensor] = {}
        for rec in batch.recordings:
            for name, act in rec.layers.items():
                f = pool_flatten(act).float().cpu()
                if name not in rows[rec.input]:
                    rows[rec.input][name] = torch.zeros(len(data), f.shape[1])
                rows[rec.input][name][lo:hi] = f
            right[rec.input] = (rec.logits.argmax(1) == batch.y).cpu()
        counts = right_counts(right)
        correct += torch.tensor([counts[k] for k in keys], dtype=torch.int64)
    if dist is not None:
        # a process without a batch learns every layer's width from the others, then joins the sum
        dims = torch.tensor([rows[i][n].shape[1] if n in rows[i] else 0 for i in inputs for n in names])
        dist.all_reduce([dims], op="max")
        widths = iter(dims.tolist())
        for i in inputs:
            for n in names:
                width = next(widths)
                rows[i].setdefault(n, torch.zeros(len(data), width))
        dist.all_reduce([rows[i][n] for i in inputs for n in names] + [correct])
    counts = {k: int(c) for k, c in zip(keys, correct.tolist())}
    return {i: {n: rows[i][n].numpy() for n in names} for i in inputs}, counts


def extract_features(net: nn.Module, train: ImageData, test: ImageData, layers: Union[str, Sequence[str]],
                     attack: AttackSpec, batch_size: int = 128, progress: bool = True,
                     cache_dir: Optional[Path] = None, device: str = "cpu",
                     dist: Optional[Dist] = None) -> LayerFeatures:
    """Record every layer on train (clean) and test (clean and adversarial), once per setting.

    Looks in the in-memory cache, then in ``cache_dir`` (``features-<key>.npz``), and
    computes (and stores) only when both miss. Under torchrun (``dist``) the processes share
    the batches and all end with every feature; rank 0 writes the cache.
    """
    if batch_size < 1:
        raise ClrobustError(f"--batch-size must be at least 1, got {batch_size}.")
    net.eval()
    names = layer_names(net, layers) if isinstance(layers, str) else layer_names(net, list(layers))
    key = feature_key(net, names, train, test, attack, batch_size)
    if key in _MEMORY:
        _MEMORY.move_to_end(key)
        feats = _MEMORY[key]
        return replace(feats, from_cache="memory")
    path = Path(cache_dir) / f"features-{key}.npz" if cache_dir is not None else None
    feats_read = _load_npz(path, names) if path is not None and path.exists() else None
    if feats_read is not None:
        feats = feats_read
        feats.from_cache = "disk"
    else:
        stage = Stage({"model": net}, {"model": names}, attack, device)
        tr, _ = _pooled(stage, train, batch_size, ("clean",), "probe features train", progress, dist)
        te, correct = _pooled(stage, test, batch_size, ("clean", "adversarial"), "probe features test", progress,
                              dist)
        acc = {k: v / len(test) for k, v in correct.items()}
        feats = LayerFeatures(names, tr["clean"], te["clean"], te["adversarial"], train.labels.numpy().copy(),
                              test.labels.numpy().copy(), acc)
        if path is not None and (dist is None or dist.is_main):
            path.parent.mkdir(parents=True, exist_ok=True)
            _save_npz(path, feats)
    if path is not None:
        feats.cache_file = str(path)
    _MEMORY[key] = feats
    while len(_MEMORY) > MEMORY_CACHE_SIZE:
        _MEMORY.popitem(last=False)
    return feats


def clear_memory_cache() -> None:
    """Forget every feature set held in memory."""
    _MEMORY.clear()


def _save_npz(path: Path, f: LayerFeatures) -> None:
    arrays = {"train_labels": f.train_labels, "test_labels": f.test_labels}
    for i, n in enumerate(f.layers):
        arrays[f"train_{i}"] = f.train[n]
        arrays[f"clean_{i}"] = f.test_clean[n]
        arrays[f"adv_{i}"] = f.test_adversarial[n]
    meta = {"layers": f.layers, "model_accuracy": f.model_accuracy, "pooling": POOLING}
    tmp = path.with_name(path.name + ".tmp.npz")
    # numpy's stub has allow_pickle: bool before **kwds, and mypy matches **arrays against it too;
    # the keys here are only *_labels, train_i, clean_i and adv_i.
    np.savez(tmp, meta=np.array(json.dumps(meta)), **arrays)  # type: ignore[arg-type]
    tmp.replace(path)


def _load_npz(path: Path, names: List[str]) -> Optional[LayerFeatures]:
    """The cached features at ``path``; None (after a one-line warning) when the file is unreadable."""
    import warnings
    import zipfile

    try:
        with np.load(path) as z:
            meta = json.loads(str(z["meta"]))
            if meta["layers"] != names:
                raise KeyError("layers")
            n = len(names)
            return LayerFeatures(names, {names[i]: z[f"train_{i}"] for i in range(n)},
                                 {names[i]: z[f"clean_{i}"] for i in range(n)},
                                 {names[i]: z[f"adv_{i}"] for i in range(n)},
                                 z["train_labels"], z["test_labels"], meta["model_accuracy"])
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        warnings.warn(f"feature cache {str(path)!r} is unreadable ({' '.join(str(exc).split())[:120]}); "
                      "recomputing it.", stacklevel=3)
        return None


def fit_probe(train_x: np.ndarray, train_y: np.ndarray, tests: Mapping[str, Tuple[np.ndarray, np.ndarray]],
              n_classes: Optional[int] = None, seed: int = 0, weight_decay: float = 1e-4,
              max_iter: int = 200, robust: Optional[Tuple[str, str]] = None) -> Dict[str, float]:
    """Fit :func:`clrobust.linear_probe.fit_linear_probe` on ``train_x``; accuracy on train and each test set.

    Args:
        robust: names of two test sets of the same images in the same order (clean, adversarial): adds
            ``"robust"``, the fraction of images predicted right in both.

    Returns:
        ``{"train": acc, <name>: acc for each entry of tests}`` (and ``"robust"``).
    """
    probe = fit_linear_probe(train_x, train_y, n_classes, weight_decay, seed, max_iter)
    out = {"train": probe.accuracy(train_x, train_y)}
    right = {}
    for name, (xt, yt) in tests.items():
        right[name] = probe.predict(xt) == torch.as_tensor(np.asarray(yt), dtype=torch.long)
        out[name] = float(right[name].double().mean())
    if robust is not None:
        out["robust"] = float((right[robust[0]] & right[robust[1]]).double().mean())
    return out


def fit_layers(feats: LayerFeatures, n_classes: int, seed: int = 0, progress: bool = True) -> Dict[str, List[float]]:
    """One probe per layer of ``feats``: lists of train, clean test, adversarial test and robust accuracy
    (the probe right on an image both clean and adversarial; the attack targets the model's classifier, so a
    layer's probe can be right on the adversarial image only, and that does not count as robust)."""
    res: Dict[str, List[float]] = {"train": [], "clean": [], "adversarial": [], "robust": []}
    for name in tqdm(feats.layers, desc="fit probes", disable=not progress, unit="layer", leave=False):
        r = fit_probe(feats.train[name], feats.train_labels,
                      {"clean": (feats.test_clean[name], feats.test_labels),
                       "adversarial": (feats.test_adversarial[name], feats.test_labels)},
                      n_classes=n_classes, seed=seed, robust=("clean", "adversarial"))
        for k in res:
            res[k].append(r[k])
    return res


def probe_layers(model: nn.Module, train_data: ImageData, test_data: ImageData,
                 layers: Union[str, Sequence[str]] = "blocks", attack: Optional[AttackSpec] = None,
                 batch_size: int = 128, seed: int = 0, progress: bool = True,
                 cache_dir: Optional[Path] = None, device: str = "cpu", dist: Optional[Dist] = None) -> ProbeResult:
    """Linear probe at every layer of ``model``: train, clean test and adversarial test accuracy.

    Args:
        model: a :class:`~clrobust.models.Network` (its classifier is what the attack targets).
        train_data: images the probes are fitted on (clean).
        test_data: images the probes are evaluated on, clean and adversarial.
        layers: a layer set (``blocks``, ``all``) or glob patterns / names.
        attack: the attack crafted against ``model`` [PGD-10 8/255].
        batch_size: images per forward pass / attack batch.
        seed: seeds the probe initialisation (the attack has its own ``attack.seed``).
        progress: show tqdm bars.
        cache_dir: folder for the ``.npz`` feature cache (None: memory only).
        device: where the model runs.
        dist: under torchrun, the processes share the batches of the feature recording.
    """
    attack = attack if attack is not None else AttackSpec()
    if train_data.num_classes != test_data.num_classes:
        raise ClrobustError("train and test data have different class counts; use splits of one data set.")
    nc = getattr(getattr(model, "config", None), "num_classes", test_data.num_classes)
    if nc != test_data.num_classes:
        raise ClrobustError(f"model has {nc} classes but {test_data.name} has {test_data.num_classes}; "
                            "probe it on its own data set.")
    attack.n_classes = test_data.num_classes
    t0 = time.perf_counter()
    feats = extract_features(model, train_data, test_data, layers, attack, batch_size, progress, cache_dir, device,
                             dist)
    t1 = time.perf_counter()
    accs = fit_layers(feats, test_data.num_classes, seed, progress)
    t2 = time.perf_counter()
    return ProbeResult(
        layers=list(feats.layers), train_accuracy=accs["train"], clean_accuracy=accs["clean"],
        adversarial_accuracy=accs["adversarial"],
        feature_dims=[int(feats.train[n].shape[1]) for n in feats.layers],
        n_train=len(train_data), n_test=len(test_data), n_classes=test_data.num_classes,
        attack=attack.to_dict(), seed=seed, model_accuracy=dict(feats.model_accuracy),
        features=feats.from_cache, cache_file=feats.cache_file,
        timings_seconds={"features": round(t1 - t0, 3), "fit": round(t2 - t1, 3)},
        train_ci=[list(wilson_interval(round(a * len(train_data)), len(train_data))) for a in accs["train"]],
        clean_ci=[list(wilson_interval(round(a * len(test_data)), len(test_data))) for a in accs["clean"]],
        adversarial_ci=[list(wilson_interval(round(a * len(test_data)), len(test_data)))
                        for a in accs["adversarial"]],
        sampling=test_data.chosen, robust_accuracy=accs["robust"],
        robust_ci=[list(wilson_interval(round(a * len(test_data)), len(test_data))) for a in accs["robust"]])


PROBE_FILES = ("probes.json", "probes.csv", "probes.md", "probes.png", "settings.json")
#: Version of the layout of probes.json; raised when a key changes meaning or goes away.
SCHEMA = "clrobust.probe-layers/1"


@dataclass
class ProbeSettings(SampledDataOptions):
    """What ``probe-layers`` runs on."""

    model: str
    layers: str = "blocks"
    attack: AttackSpec = field(default_factory=AttackSpec)
    n_train: Optional[int] = 2000
    n_samples: Optional[int] = 512
    batch_size: int = 128
    seed: int = 0
    device: str = "cpu"
    cache: bool = True
    load_options: LoadOptions = field(default_factory=LoadOptions)
    classifier: str = "auto"

    def to_dict(self) -> Dict[str, Any]:
        """The settings as settings.json records them."""
        return {"model": self.model, **data_fields(self), "layers": self.layers,
                "attack": self.attack.to_dict(), "n_train": self.n_train, "n_samples": self.n_samples,
                "batch_size": self.batch_size, "seed": self.seed, "device": self.device, "cache": self.cache,
                "load_options": self.load_options.kwargs(), "classifier": self.classifier}


@dataclass
class ProbeLayersResult(Result):
    """``probe-layers``: the probed model, and its :class:`ProbeResult`."""

    SCHEMA: ClassVar[str] = SCHEMA

    model: Dict[str, Any]
    data: Dict[str, str]
    layer_set: str
    probes: ProbeResult
    versions: Dict[str, str]

    def json_name(self) -> str:
        return "probes.json"

    def to_dict(self) -> Dict[str, Any]:
        return {"schema": self.SCHEMA, "model": self.model, "data": self.data, "layer_set": self.layer_set,
                **self.probes.to_dict(), "versions": self.versions}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ProbeLayersResult":
        probe = ProbeResult(**{f.name: d[f.name] for f in fields(ProbeResult) if f.name in d})
        return cls(d["model"], d["data"], d["layer_set"], probe, d["versions"])

    def tables(self) -> Dict[str, Table]:
        p = self.probes
        def ci(which: str, i: int) -> List[str]:
            low, high = p.interval(which, i)
            return [f"{v:.6f}" if v is not None else "" for v in (low, high)]

        robust = bool(p.robust_accuracy)
        rows = [[i, name, p.feature_dims[i], f"{p.train_accuracy[i]:.6f}", f"{p.clean_accuracy[i]:.6f}",
                 *ci("clean", i), f"{p.adversarial_accuracy[i]:.6f}", *ci("adversarial", i),
                 *([f"{p.robust_accuracy[i]:.6f}", *ci("robust", i)] if robust else []), p.n_test]
                for i, name in enumerate(p.layers)]
        return {"probes.csv": Table(["layer_index", "layer", "feature_dim", "train_accuracy", "clean_accuracy",
                                     "clean_ci_low", "clean_ci_high", "adversarial_accuracy", "adversarial_ci_low",
                                     "adversarial_ci_high",
                                     *(["robust_accuracy", "robust_ci_low", "robust_ci_high"] if robust else []),
                                     "n_test"], rows)}

    def attack_text(self) -> str:
        a = self.probes.attack
        return "no attack" if a["name"] == "none" else f"{a['name'].upper()} eps {a['eps_text']}"

    def markdown_name(self) -> Optional[str]:
        return "probes.md"

    def markdown(self) -> str:
        p = self.probes
        cols = self._columns()
        lines = [self.describe(), "", "| layer | dim | " + " | ".join(cols) + " |", "|---|---|" + "---|" * len(cols)]
        lines += [f"| {name} | {p.feature_dims[i]} | " + " | ".join(self._cell(c, i) for c in cols) + " |"
                  for i, name in enumerate(p.layers)]
        return "\n".join(lines)

    def _columns(self) -> List[str]:
        return ["train", "clean", "adversarial"] + (["robust"] if self.probes.robust_accuracy else [])

    def describe(self) -> str:
        p = self.probes
        chosen = f" ({p.sampling})" if p.sampling else ""
        return (f"Linear probe per layer of {self.model['label']}: fit on {p.n_train} {self.data['name']} train "
                f"images, tested on n = {p.n_test} test images{chosen}, clean and under {self.attack_text()} "
                f"(seed {p.seed}); 95% Wilson intervals; robust: the probe right on an image both clean and "
                f"adversarial.")

    def _cell(self, which: str, i: int) -> str:
        return with_interval(getattr(self.probes, f"{which}_accuracy")[i], *self.probes.interval(which, i),
                             percent=True)

    def summary(self) -> str:
        p = self.probes
        cols = self._columns()
        rows = [["layer", "dim"] + [{"adversarial": "adv"}.get(c, c) for c in cols]]
        rows += [[name, str(p.feature_dims[i])] + [self._cell(c, i) for c in cols] for i, name in enumerate(p.layers)]
        widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
        table = ["  ".join(c.ljust(w) if j == 0 else c.rjust(w) for j, (c, w) in enumerate(zip(r, widths)))
                 for r in rows]
        return "\n".join([self.describe()] + table)

    def figures(self) -> Dict[str, Drawer]:
        return {"probes.png": self._plot}

    def _plot(self, path: Path) -> None:
        from clrobust import plots

        p = self.probes
        title = (f"{self.model['label']}: linear probe per layer ({self.attack_text()}; {p.n_train} train / "
                 f"{p.n_test} test images)\n{p.pooling}")
        fig, ax = plots.new_figure(figsize=(7, 4.2))
        plots.probe_axes(ax, p.layers, {"train": p.train_accuracy, "clean": p.clean_accuracy,
                                        "adversarial": p.adversarial_accuracy}, title, chance=1.0 / p.n_classes,
                         bands={"clean": p.clean_ci, "adversarial": p.adversarial_ci})
        fig.tight_layout()
        fig.savefig(path, dpi=110)


def run_probe_layers(settings: ProbeSettings, out: Path, overwrite: bool = False,
                     progress: bool = True, dist: Optional[Dist] = None) -> ProbeLayersResult:
    """The ``probe-layers`` job: load the model (zoo name or path), probe every layer, write the outputs
    (under torchrun, ``dist``: the processes share the recording and rank 0 writes)."""
    from clrobust.checkpoints import resolve

    s = settings
    main = dist is None or dist.is_main
    resolve(s.model)  # a mistyped model name is reported before anything about --out
    out = Path(out)
    with OutputFolder(out, PROBE_FILES, overwrite, active=main) as folder:
        res = _probe_job(s, out, progress and main, dist)
        folder.commit([res], s.to_dict(), s.seed)
    return res


def _probe_job(s: ProbeSettings, out: Path, progress: bool, dist: Optional[Dist] = None) -> ProbeLayersResult:
    from clrobust.checkpoints import load
    from clrobust.data import chosen_images
    from clrobust.heads import choose_classifier, ensure_classifier

    lm = load(s.model, device=s.device, **s.load_options.kwargs())
    train = chosen_images(s, "train", s.n_train, sampled=False)
    test = chosen_images(s, "test", s.n_samples)
    choose_classifier(lm, test.num_classes, s.data, s.classifier)
    head = ensure_classifier(lm, train, s.seed, progress)  # the end-to-end attack needs a real head
    r = probe_layers(lm.network, train, test, s.layers, s.attack, s.batch_size, s.seed, progress,
                     out / "features" if s.cache else None, s.device, dist)
    res = ProbeLayersResult(model={"label": lm.label, **lm.describe(), "training": lm.metadata.get("training", {}),
                                   **head},
                            data={"name": s.data, "train_split": "train", "test_split": "test"}, layer_set=s.layers,
                            probes=r, versions=versions())
    return res
