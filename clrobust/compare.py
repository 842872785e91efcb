"""The main job: layer-by-layer CKA of models on clean and adversarial inputs.

For every batch of the activations stage (:mod:`clrobust.activations`: adversarial
inputs crafted against each model, every chosen layer recorded on clean and
adversarial inputs in one forward pass each), compute each recording's U-centred
Grams once and add every requested pair into its :class:`~clrobust.cka.StreamingCKA`.
"""

from __future__ import annotations

import csv
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from clrobust.activations import MIN_BATCH, Stage, batch_plan
from clrobust.attacks import AttackSpec
from clrobust.checkpoints import LoadedModel, LoadOptions, distinct_labels, load, resolve
from clrobust.cka import disparity as cka_disparity
from clrobust.data import load_dataset
from clrobust.distributed import Dist
from clrobust.errors import ClrobustError
from clrobust.heads import choose_classifier, ensure_classifier
from clrobust.hooks import layer_names
from clrobust.metrics import metric
from clrobust.provenance import prepare_out_dir, versions, write_json

RESULT_FILES = ("results.json", "disparity.csv", "disparity.png", "settings.json")
#: Version of the layout of results.json; raised when a key changes meaning or goes away.
SCHEMA = "clrobust.compare-layers/1"
INPUTS = ("clean", "adversarial")


@dataclass
class CompareSettings:
    models: Sequence[str]
    data: str = "cifar10-mini"
    data_root: Optional[str] = None
    split: str = "test"
    layers: str = "blocks"
    attack: AttackSpec = field(default_factory=AttackSpec)
    n_samples: Optional[int] = 512
    batch_size: int = 128
    seed: int = 0
    device: str = "cpu"
    load_options: LoadOptions = field(default_factory=LoadOptions)
    probe_train: Optional[int] = None  # train images for the probe of a model without a classifier [all]
    metric: str = "linear-cka"  # a name of clrobust.metrics.METRICS
    classifier: str = "auto"  # auto: own head when it fits, else a probe; probe: always a probe


Entry = Tuple[Tuple[str, str], Tuple[str, str]]  # ((model, input), (model, input))


def planned_entries(labels: Sequence[str]) -> List[Entry]:
    """Within each model: clean-clean and clean-adversarial; across models: clean-clean and adv-adv."""
    entries: List[Entry] = []
    for m in labels:
        entries += [((m, "clean"), (m, "clean")), ((m, "clean"), (m, "adversarial"))]
    for i, a in enumerate(labels):
        for b in labels[i + 1:]:
            entries += [((a, "clean"), (b, "clean")), ((a, "adversarial"), (b, "adversarial"))]
    return entries


def _labels(models: Sequence[LoadedModel]) -> List[str]:
    return distinct_labels([m.label for m in models])


def run_compare(settings: CompareSettings, progress: bool = True, dist=None) -> Dict[str, Any]:
    """Compute the results of ``compare-layers`` (no files written)."""
    timings = {"load": 0.0, "attack": 0.0, "forward": 0.0, "cka": 0.0}
    t = time.perf_counter()
    loaded = [load(m, device=settings.device, **settings.load_options.kwargs()) for m in settings.models]
    labels = _labels(loaded)
    nets = {lab: lm.network for lab, lm in zip(labels, loaded)}
    names = {lab: layer_names(net, settings.layers) for lab, net in nets.items()}
    data = load_dataset(settings.data, settings.split, settings.data_root).subset(settings.n_samples)
    for lab, lm in zip(labels, loaded):
        lm.label = lab
        choose_classifier(lm, data.num_classes, settings.data, settings.classifier)
    settings.attack.n_classes = data.num_classes
    classifiers: Dict[str, Any] = {}
    if any(not lm.has_classifier for lm in loaded):
        train = load_dataset(settings.data, "train", settings.data_root).subset(settings.probe_train)
        for lab, lm in zip(labels, loaded):
            classifiers[lab] = ensure_classifier(lm, train, settings.seed, progress)
    timings["load"] += time.perf_counter() - t

    entries = planned_entries(labels)
    accs = {e: metric(settings.metric) for e in entries}
    measure = next(iter(accs.values()))
    correct = {lab: {"clean": 0, "adversarial": 0} for lab in labels}
    if len(data) < MIN_BATCH:
        raise ClrobustError(f"need at least {MIN_BATCH} samples for minibatch CKA, got {len(data)}.")
    stage = Stage(nets, names, settings.attack, settings.device)
    for batch in stage.batches(data, settings.batch_size, dist=dist, progress=progress, desc="compare-layers",
                               leave=True):
        grams: Dict[Tuple[str, str], Any] = {}
        for rec in batch.recordings:
            correct[rec.model][rec.input] += int((rec.logits.argmax(1) == batch.y).sum())
            t = time.perf_counter()
            grams[(rec.model, rec.input)] = measure.prepare([a.cpu() for a in rec.layers.values()])
            timings["cka"] += time.perf_counter() - t
        t = time.perf_counter()
        for e in entries:
            accs[e].update_prepared(grams[e[0]], grams[e[1]])
        timings["cka"] += time.perf_counter() - t
    timings["attack"] += stage.timings["attack"]
    timings["forward"] += stage.timings["forward"]

    if dist is not None:
        for e in entries:  # a process that owned no batch joins every collective all the same
            accs[e].ensure_state(len(names[e[0][0]]), len(names[e[1][0]]))
        dist.all_reduce_cka(accs, entries)
        dist.all_reduce_counts(correct)
    t = time.perf_counter()
    cka_list = []
    matrices: Dict[Entry, np.ndarray] = {}
    for e in entries:
        mat = accs[e].compute()
        matrices[e] = mat
        cka_list.append({"rows": {"model": e[0][0], "input": e[0][1]},
                         "cols": {"model": e[1][0], "input": e[1][1]},
                         "matrix": mat.tolist()})
    timings["cka"] += time.perf_counter() - t
    n = len(data)
    disparity = {lab: cka_disparity(matrices[((lab, "clean"), (lab, "adversarial"))]).tolist()
                 for lab in labels}
    accuracy = {lab: {"clean": correct[lab]["clean"] / n, "adversarial": correct[lab]["adversarial"] / n}
                for lab in labels}
    return {
        "schema": SCHEMA,
        "models": {lab: {**lm.describe(), "training": lm.metadata.get("training", {}),
                         **classifiers.get(lab, {"classifier": "own linear head"})}
                   for lab, lm in zip(labels, loaded)},
        "layers": names,
        "cka": cka_list,
        "disparity": disparity,
        "accuracy": accuracy,
        "attack": settings.attack.to_dict(),
        "data": {"name": settings.data, "split": settings.split},
        "n_samples": n,
        "batches": len(batch_plan(n, settings.batch_size)),
        "batch_size": settings.batch_size,
        "metric": settings.metric,
        "cka_estimator": measure.description,
        "seed": settings.seed,
        "versions": versions(),
        "timings_seconds": {k: round(v, 3) for k, v in timings.items()},
    }


def write_outputs(results: Dict[str, Any], out: Path) -> List[Path]:
    """results.json, heatmap PNGs, disparity.csv and disparity.png in ``out``."""
    from clrobust import plots
    from clrobust.attacks import format_eps

    written = []
    write_json(out / "results.json", results)
    written.append(out / "results.json")
    atk = results["attack"]
    atk_text = "no attack" if atk["name"] == "none" else f"{atk['name'].upper()} eps {format_eps(atk['eps'])}"
    for e in results["cka"]:
        r, c = e["rows"], e["cols"]
        fname = heatmap_name(r, c)
        title = (f"{r['model']} ({r['input']}) vs {c['model']} ({c['input']})\n"
                 f"{atk_text}, n={results['n_samples']}")
        plots.save_heatmap(out / fname, np.asarray(e["matrix"]), results["layers"][r["model"]],
                           results["layers"][c["model"]], title,
                           f"{r['model']} - {r['input']}", f"{c['model']} - {c['input']}")
        written.append(out / fname)
    with open(out / "disparity.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["model", "layer_index", "layer", "disparity", "cka_clean_adversarial"])
        for lab, vals in results["disparity"].items():
            for i, (layer, v) in enumerate(zip(results["layers"][lab], vals)):
                w.writerow([lab, i, layer, f"{v:.8f}", f"{1 - v:.8f}"])
    written.append(out / "disparity.csv")
    legend = {lab: f"{lab} (adv. acc {a['adversarial']:.1%})" for lab, a in results["accuracy"].items()}
    plots.save_disparity(out / "disparity.png", results["disparity"], results["layers"],
                         f"Clean vs adversarial disparity over depth ({atk_text})", legend)
    written.append(out / "disparity.png")
    return written


def heatmap_name(rows: Dict[str, str], cols: Dict[str, str]) -> str:
    def short(d):
        return f"{d['model']}-{'adv' if d['input'] == 'adversarial' else 'clean'}"
    return f"cka_{short(rows)}_vs_{short(cols)}.png"


def summary_table(results: Dict[str, Any]) -> str:
    """Plain-text table: accuracy and disparity (first, middle, last layer) per model."""
    lines = [f"{'model':<22}{'clean acc':>10}{'adv acc':>10}{'disp first':>12}{'disp mid':>10}"
             f"{'disp last':>11}{'mean last 1/3':>15}"]
    for lab, d in results["disparity"].items():
        a = results["accuracy"][lab]
        k = max(1, len(d) // 3)
        lines.append(f"{lab:<22}{a['clean']:>10.1%}{a['adversarial']:>10.1%}{d[0]:>12.3f}"
                     f"{d[len(d) // 2]:>10.3f}{d[-1]:>11.3f}{float(np.mean(d[-k:])):>15.3f}")
    for lab, info in results.get("models", {}).items():
        if "probe_train_accuracy" in info:
            lines.append(f"{lab}: classifier is a {info['classifier'].split(' (')[0]} "
                         f"(probe train accuracy {info['probe_train_accuracy']:.1%})")
        if info.get("batch_norm") in ("clean", "adversarial"):
            lines.append(f"{lab}: dual batch norm, evaluated through the {info['batch_norm']} one")
    return "\n".join(lines)


def compare_layers(settings: CompareSettings, out: Path, overwrite: bool = False,
                   progress: bool = True, dist: Optional[Dist] = None) -> Dict[str, Any]:
    """Run the job and write its outputs (refusing to overwrite unless asked).

    Under torchrun (``dist``), every process computes its batches and rank 0 writes.
    """
    out = Path(out)
    main = dist is None or dist.is_main
    for m in settings.models:
        resolve(m)  # a mistyped model name is reported before anything about --out
    if main:
        prepare_out_dir(out, RESULT_FILES, overwrite)  # fail before any work
    results = run_compare(settings, progress=progress and main, dist=dist)
    results["processes"] = 1 if dist is None else dist.world
    if not main:
        return results
    write_outputs(results, out)
    write_json(out / "settings.json", {"command": settings_dict(settings), "versions": results["versions"],
                                       "seed": settings.seed})
    return results


def settings_dict(s: CompareSettings) -> Dict[str, Any]:
    return {"models": list(s.models), "data": s.data, "data_root": s.data_root, "split": s.split,
            "layers": s.layers, "attack": s.attack.to_dict(), "n_samples": s.n_samples,
            "batch_size": s.batch_size, "seed": s.seed, "device": s.device, "load_options": s.load_options.kwargs(),
            "probe_train": s.probe_train, "metric": s.metric, "classifier": s.classifier}
