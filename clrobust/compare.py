"""The main job: layer-by-layer CKA of models on clean and adversarial inputs.

For every batch of the activations stage (:mod:`clrobust.activations`: adversarial
inputs crafted against each model, every chosen layer recorded on clean and
adversarial inputs in one forward pass each), compute each recording's U-centred
Grams once and add every requested pair into its :class:`~clrobust.cka.StreamingCKA`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, fields
from functools import partial
from pathlib import Path
from typing import Any, ClassVar, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch

from clrobust import similarity
from clrobust.activations import MIN_BATCH, Recording, Stage, batch_plan, elapsed_since, pool_flatten
from clrobust.attacks import AttackSpec, format_eps
from clrobust.checkpoints import LoadedModel, LoadOptions, distinct_labels, load, resolve
from clrobust.checkpoints.zoo import expand_models
from clrobust.cka import depth_thirds, early_mean, late_mean
from clrobust.cka import disparity as cka_disparity
from clrobust.data import SampledDataOptions, chosen_images, data_fields
from clrobust.distributed import Dist
from clrobust.errors import ClrobustError
from clrobust.heads import choose_classifier, ensure_classifier
from clrobust.hooks import layer_names
from clrobust.metrics import metric
from clrobust.provenance import versions
from clrobust.results import Drawer, OutputFolder, Result, Table
from clrobust.robustness import right_counts
from clrobust.similarity import MEASURES
from clrobust.uncertainty import (
    DEFAULT_REPLICATES,
    Bootstrap,
    PairedDifference,
    percentile_interval,
    t_interval,
    welch_interval,
    wilson_interval,
    with_interval,
)

RESULT_FILES = ("results.json", "disparity.csv", "summary.md", "disparity.png", "settings.json")
#: Version of the layout of results.json; raised when a key changes meaning or goes away.
SCHEMA = "clrobust.compare-layers/1"
INPUTS = ("clean", "adversarial")
#: accuracies reported per model: on clean inputs, on adversarial inputs, and robust (right on both, the audit's
#: and RobustBench's count: an attack that moves a misclassified image to its class does not add to it)
ACCURACIES = ("clean", "adversarial", "robust")
LEVEL_TEXT = "95%"


@dataclass
class CompareSettings(SampledDataOptions):
    models: Sequence[str]
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
    bootstrap: int = DEFAULT_REPLICATES  # bootstrap replicates over images for the intervals (0: none)
    noise_control: bool = True  # also record random noise of the attack's eps and norm (one more forward pass)
    adv_source: Optional[str] = None  # one of ``models``: its adversarial inputs are fed to every model
    measures: Sequence[str] = ()  # full-batch measures of clrobust.similarity besides the streamed metric
    precision: str = "exact"  # exact: float64 throughout; fast: float32 Gram products (see clrobust.cka)
    cache: Optional[str] = None  # folder of cached recordings (clrobust.recordings)

    def to_dict(self) -> Dict[str, Any]:
        """The settings as settings.json records them."""
        return {"models": list(self.models), **data_fields(self), "split": self.split,
                "layers": self.layers, "attack": self.attack.to_dict(), "n_samples": self.n_samples,
                "batch_size": self.batch_size, "seed": self.seed, "device": self.device,
                "load_options": self.load_options.kwargs(), "probe_train": self.probe_train,
                "metric": self.metric, "classifier": self.classifier, "bootstrap": self.bootstrap,
                "noise_control": self.noise_control, "adv_source": self.adv_source, "measures": list(self.measures),
                "precision": self.precision, "cache": self.cache}


Entry = Tuple[Tuple[str, str], Tuple[str, str]]  # ((model, input), (model, input))


def planned_entries(labels: Sequence[str], noise: bool = False) -> List[Entry]:
    """Within each model: clean-clean and clean-adversarial (and clean-noise, the control); across models:
    clean-clean and adv-adv."""
    entries: List[Entry] = []
    for m in labels:
        entries += [((m, "clean"), (m, "clean")), ((m, "clean"), (m, "adversarial"))]
        if noise:
            entries.append(((m, "clean"), (m, "noise")))
    for i, a in enumerate(labels):
        for b in labels[i + 1:]:
            entries += [((a, "clean"), (b, "clean")), ((a, "adversarial"), (b, "adversarial"))]
    return entries


def _labels(models: Sequence[LoadedModel]) -> List[str]:
    return distinct_labels([m.label for m in models])


@dataclass
class CKAEntry:
    """The CKA matrix of one (model, input) recording's layers (rows) against another's (columns)."""

    rows: Tuple[str, str]
    cols: Tuple[str, str]
    matrix: np.ndarray
    ci_low: Optional[np.ndarray] = None  # the bootstrap interval of each entry (None without bootstrap)
    ci_high: Optional[np.ndarray] = None

    def to_dict(self) -> Dict[str, Any]:
        d: Dict[str, Any] = {"rows": {"model": self.rows[0], "input": self.rows[1]},
                             "cols": {"model": self.cols[0], "input": self.cols[1]}, "matrix": self.matrix.tolist()}
        if self.ci_low is not None and self.ci_high is not None:
            d["ci_low"], d["ci_high"] = self.ci_low.tolist(), self.ci_high.tolist()
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "CKAEntry":
        ci = [np.asarray(d[k], dtype=float) if d.get(k) is not None else None for k in ("ci_low", "ci_high")]
        return cls((d["rows"]["model"], d["rows"]["input"]), (d["cols"]["model"], d["cols"]["input"]),
                   np.asarray(d["matrix"], dtype=float), ci[0], ci[1])


@dataclass
class CompareResult(Result):
    """What ``compare-layers`` found: every CKA matrix, the disparity curves and the accuracies."""

    SCHEMA: ClassVar[str] = SCHEMA

    models: Dict[str, Dict[str, Any]]  # label -> what the file says about itself, classifier used
    layers: Dict[str, List[str]]  # label -> recorded layers, in depth order
    cka: List[CKAEntry]
    disparity: Dict[str, List[float]]  # label -> 1 - CKA(clean_l, adversarial_l)
    accuracy: Dict[str, Dict[str, float]]  # label -> {"clean", "adversarial", "robust"}: see ACCURACIES
    attack: Dict[str, Any]
    data: Dict[str, str]
    n_samples: int
    batches: int
    batch_size: int
    metric: str
    cka_estimator: str
    seed: int
    versions: Dict[str, str]
    timings_seconds: Dict[str, float]
    processes: int = 1
    #: label -> {"ci_low": [...], "ci_high": [...]} per layer; {} without bootstrap
    disparity_ci: Dict[str, Dict[str, List[float]]] = field(default_factory=dict)
    #: label -> mean disparity over the last third of the layers: {"value", "ci_low", "ci_high", "layers"}
    late_disparity: Dict[str, Dict[str, Any]] = field(default_factory=dict)
    #: label -> {"clean": [low, high], "adversarial": [low, high], "robust": [low, high]}: Wilson intervals
    accuracy_ci: Dict[str, Dict[str, List[float]]] = field(default_factory=dict)
    #: every pair of models: per-layer disparity difference on the same images, CI, p, Holm-adjusted p
    paired_disparity: List[Dict[str, Any]] = field(default_factory=list)
    #: the random-noise control (same eps and norm): label -> 1 - CKA(clean_l, noise_l), its intervals, late mean
    noise_disparity: Dict[str, List[float]] = field(default_factory=dict)
    noise_disparity_ci: Dict[str, Dict[str, List[float]]] = field(default_factory=dict)
    noise_late_disparity: Dict[str, Dict[str, Any]] = field(default_factory=dict)
    #: label -> per layer, mean ||f(x+d)-f(x)||/||d|| over mean ||f(x+e)-f(x)||/||e|| (attack d, noise e):
    #: {"ratio", "ci_low", "ci_high"}
    amplification: Dict[str, Dict[str, List[float]]] = field(default_factory=dict)
    #: groups of one recipe's training runs (a model argument NAME@a,b or a glob): argument -> labels
    groups: Dict[str, List[str]] = field(default_factory=dict)
    #: per group: mean, between-run SD, t-interval of the mean over runs, and the values, of each summary number
    group_summary: Dict[str, Dict[str, Any]] = field(default_factory=dict)
    #: every pair of groups: the difference of their means (first minus second) of each summary number,
    #: with Welch's t-interval over runs
    group_differences: List[Dict[str, Any]] = field(default_factory=list)
    #: other measures (clrobust.similarity), full batch on pooled features: measure -> label -> per-layer
    #: clean-vs-adversarial dissimilarity (1 - similarity; the Procrustes distance as it is); point values
    measures: Dict[str, Dict[str, List[float]]] = field(default_factory=dict)
    #: conclusions of the main metric that another measure reverses (one sentence each)
    measure_flips: List[str] = field(default_factory=list)
    #: which adversarial inputs each model saw: its own, or those crafted against one model (shared)
    adversarial_design: str = "each model's own (crafted against that model)"
    #: how the images were chosen and how the intervals were computed
    sampling: str = "the first n images of the split"
    uncertainty: str = "none (--bootstrap 0)"
    #: every CKA entry's bootstrap replicates (replicates x rows x cols), for statistics derived in the same
    #: process (the findings check); not written to results.json
    replicates: Dict[Entry, Optional[np.ndarray]] = field(default_factory=dict, repr=False, compare=False,
                                                          metadata={"json": False})

    @property
    def labels(self) -> List[str]:
        return list(self.layers)

    def matrix_replicates(self, rows: Tuple[str, str], cols: Tuple[str, str]) -> Optional[np.ndarray]:
        """Bootstrap replicates (replicates x rows x cols) of :meth:`matrix`; None without them."""
        if (rows, cols) in self.replicates:
            return self.replicates[(rows, cols)]
        r = self.replicates.get((cols, rows))
        return None if r is None else np.swapaxes(r, 1, 2)

    def matrix(self, rows: Tuple[str, str], cols: Tuple[str, str]) -> np.ndarray:
        """CKA of (model, input) ``rows`` against ``cols`` (transposed from the stored pair if needed)."""
        for e in self.cka:
            if (e.rows, e.cols) == (rows, cols):
                return e.matrix
            if (e.cols, e.rows) == (rows, cols):
                return e.matrix.T
        raise KeyError(f"no CKA entry for {rows} vs {cols}")

    def json_name(self) -> str:
        return "results.json"

    def to_dict(self) -> Dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.metadata.get("json", True)}
        d["cka"] = [e.to_dict() for e in self.cka]
        return {"schema": self.SCHEMA, **d}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "CompareResult":
        kw = {f.name: d[f.name] for f in fields(cls) if f.name in d}
        kw["cka"] = [CKAEntry.from_dict(e) for e in d["cka"]]
        return cls(**kw)

    def attack_text(self) -> str:
        a = self.attack
        return "no attack" if a["name"] == "none" else f"{a['name'].upper()} eps {format_eps(a['eps'])}"

    def tables(self) -> Dict[str, Table]:
        rows = []
        for lab, vals in self.disparity.items():
            ci = self.disparity_ci.get(lab, {})
            for i, (layer, v) in enumerate(zip(self.layers[lab], vals)):
                low, high = (ci["ci_low"][i], ci["ci_high"][i]) if ci else (float("nan"), float("nan"))
                rows.append([lab, i, layer, f"{v:.8f}", f"{low:.8f}", f"{high:.8f}", f"{1 - v:.8f}", self.n_samples])
        return {"disparity.csv": Table(["model", "layer_index", "layer", "disparity", "ci_low", "ci_high",
                                        "cka_clean_adversarial", "n"], rows)}

    def markdown_name(self) -> Optional[str]:
        return "summary.md"

    def _rows(self) -> List[List[str]]:
        """Per model: accuracies and disparity at the first, middle and last layer and over the last
        third, each with its interval when there is one."""
        out = []
        for lab, d in self.disparity.items():
            a, aci = self.accuracy[lab], self.accuracy_ci.get(lab, {})
            ci = self.disparity_ci.get(lab)
            idx = [0, len(d) // 2, len(d) - 1]
            cells = [lab] + [with_interval(a[k], *_pair(aci.get(k)), digits=3, percent=True) if k in a
                             else "not recorded" for k in ACCURACIES]  # robust: files written before it
            cells += [with_interval(d[i], ci["ci_low"][i] if ci else None, ci["ci_high"][i] if ci else None)
                      for i in idx]
            late = self.late_disparity.get(lab)
            cells.append(with_interval(late["value"], late.get("ci_low"), late.get("ci_high")) if late
                         else f"{self._disparity_points(d)[-1]:.3f}")
            out.append(cells)
        return out

    HEAD: ClassVar[List[str]] = ["model", "clean acc", "adv acc", "robust acc", "disp first", "disp mid",
                                 "disp last", "mean last 1/3"]

    def describe(self) -> str:
        """One sentence: what was measured, on which images, with which uncertainty."""
        return (f"Layer-wise {self.metric} of {', '.join(self.labels)} on n = {self.n_samples} "
                f"{self.data['name']} {self.data['split']} images ({self.sampling}), {self.attack_text()} "
                f"(seed {self.seed}); adversarial inputs: {self.adversarial_design}. Intervals: {self.uncertainty}; "
                f"accuracies: Wilson {LEVEL_TEXT}; adv acc counts right answers on the adversarial inputs, "
                f"robust acc only images right both clean and adversarial.")

    def markdown(self) -> str:
        lines = [self.describe(), "", "| " + " | ".join(self.HEAD) + " |", "|" + "---|" * len(self.HEAD)]
        lines += ["| " + " | ".join(r) + " |" for r in self._rows()]
        lines += self._group_lines() + self._control_lines() + self._paired_lines() + self._measure_lines()
        notes = self._notes()
        return "\n".join(lines + ([""] + notes if notes else []))

    def _measure_lines(self) -> List[str]:
        if not self.measures:
            return []
        lines = ["other measures (full batch on pooled features, no interval): late clean-vs-adversarial "
                 "dissimilarity " + "; ".join(
                     f"{m}: " + ", ".join(f"{lab} {late_mean(v):.3f}" for lab, v in c.items())
                     for m, c in self.measures.items())]
        lines += ([f"FLIP: {f}" for f in self.measure_flips] or
                  [f"no conclusion of {self.metric} about disparity ordering or its rise with depth flips under "
                   f"{', '.join(self.measures)}"])
        return [""] + lines

    def _group_lines(self) -> List[str]:
        """Per group of training runs: the mean over runs with its t-interval and the between-run SD."""
        lines = []
        def cell(e: Mapping[str, Any], percent: bool = False) -> str:
            sd = e.get("sd")
            spread = "" if sd is None else (f", SD {sd:.1%}" if percent else f", SD {sd:.3f}")
            return with_interval(e["mean"], e.get("ci_low"), e.get("ci_high"), percent=percent) + spread

        for group, g in self.group_summary.items():
            lines.append(f"{group} ({len(g['runs'])} training runs: {', '.join(g['runs'])}): mean last 1/3 "
                         f"disparity {cell(g['late_disparity'])}; clean acc {cell(g['clean_accuracy'], True)}; "
                         f"adv acc {cell(g['adversarial_accuracy'], True)}"
                         + (f"; robust acc {cell(g['robust_accuracy'], True)}" if "robust_accuracy" in g else "")
                         + " (interval: t over runs)")

        def diff(e: Mapping[str, Any], percent: bool = False) -> str:
            text = with_interval(e["difference"], e.get("ci_low"), e.get("ci_high"), percent=percent)
            return text.replace("%", " pt") if percent else text

        for d in self.group_differences:
            runs = d["late_disparity"]["n"]
            how = ("interval: Welch t over runs, each number's df in results.json" if "df" in d["late_disparity"]
                   else "no interval: a group of one run")
            lines.append(f"{d['a']} - {d['b']} ({runs[0]} vs {runs[1]} training runs): mean last 1/3 disparity "
                         f"{diff(d['late_disparity'])}; clean acc {diff(d['clean_accuracy'], True)}; "
                         f"robust acc {diff(d['robust_accuracy'], True)} ({how})")
        return [""] + lines if lines else []

    def _control_lines(self) -> List[str]:
        """Per model: the noise control's late disparity beside the attack's, and the amplification."""
        def late_text(d: Mapping[str, Any]) -> str:
            return with_interval(d.get("value", float("nan")), d.get("ci_low"), d.get("ci_high"))

        lines = []
        for lab, late in self.noise_late_disparity.items():
            text = (f"{lab}: random noise of the same eps, mean last 1/3 disparity {late_text(late)} "
                    f"(attack {late_text(self.late_disparity.get(lab, {}))})")
            amp = self.amplification.get(lab)
            if amp:
                low, high = _pair([amp["ci_low"][-1], amp["ci_high"][-1]] if "ci_low" in amp else None)
                ratio = with_interval(amp["ratio"][-1], low, high, 1)
                text += f"; attack/noise amplification at the last layer {ratio}x"
            lines.append(text)
        return [""] + lines if lines else []

    def _paired_lines(self) -> List[str]:
        lines = []
        for p in self.paired_disparity:
            held = sum(1 for lo in p["ci_low"] if lo > 0)
            lower = sum(1 for hi in p["ci_high"] if hi < 0)
            sig = sum(1 for q in p["p_holm"] if q < 0.05)
            lines.append(f"{p['a']} - {p['b']} disparity, same images: above 0 at {held}, below 0 at {lower} "
                         f"of {len(p['layers'])} layers (95% CI); {sig} layer(s) differ at Holm-adjusted p < 0.05; "
                         f"last layer {with_interval(p['difference'][-1], p['ci_low'][-1], p['ci_high'][-1])}")
        return [""] + lines if lines else []

    @staticmethod
    def _disparity_points(d: Sequence[float]) -> List[float]:
        return [d[0], d[len(d) // 2], d[-1], late_mean(d)]

    def _notes(self) -> List[str]:
        lines = []
        for lab, info in self.models.items():
            if "probe_train_accuracy" in info:
                lines.append(f"{lab}: classifier is a {info['classifier'].split(' (')[0]} "
                             f"(probe train accuracy {info['probe_train_accuracy']:.1%})")
            if info.get("batch_norm") in ("clean", "adversarial"):
                lines.append(f"{lab}: dual batch norm, evaluated through the {info['batch_norm']} one")
        return lines

    def summary(self) -> str:
        """Plain-text table: accuracy and disparity (first, middle, last layer, last third) per model,
        with intervals, under a line that says what was measured on which images."""
        rows = [self.HEAD] + self._rows()
        widths = [max(len(r[i]) for r in rows) for i in range(len(self.HEAD))]
        table = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
                 for r in rows]
        extra = [line for line in self._group_lines() + self._control_lines() + self._paired_lines()
                 + self._measure_lines() if line]
        return "\n".join([self.describe()] + table + extra + self._notes())

    def figures(self) -> Dict[str, Drawer]:
        from clrobust import plots

        atk = self.attack_text()
        out: Dict[str, Drawer] = {}
        for e in self.cka:
            r, c = e.rows, e.cols
            if "noise" in (r[1], c[1]):
                continue  # the control's matrices are in results.json; its curve is on disparity.png
            title = f"{r[0]} ({r[1]}) vs {c[0]} ({c[1]})\n{atk}, n={self.n_samples}"
            width = None if e.ci_low is None or e.ci_high is None else np.asarray(e.ci_high) - np.asarray(e.ci_low)
            out[heatmap_name(r, c)] = partial(plots.save_heatmap, matrix=e.matrix, rows=self.layers[r[0]],
                                              cols=self.layers[c[0]], title=title, row_label=f"{r[0]} - {r[1]}",
                                              col_label=f"{c[0]} - {c[1]}", ci_width=width)
        legend = {lab: f"{lab} (adv. acc {a['adversarial']:.1%})" for lab, a in self.accuracy.items()}
        band = " (bands: 95% bootstrap intervals)" if self.disparity_ci else ""
        out["disparity.png"] = partial(plots.save_disparity, curves=self.disparity, layers=self.layers,
                                       title=f"Clean vs adversarial disparity over depth ({atk}), n={self.n_samples}"
                                             f"{band}", legend=legend, bands=self.disparity_ci,
                                       baselines=self.noise_disparity)
        return out


def run_compare(settings: CompareSettings, progress: bool = True, dist: Optional[Dist] = None) -> CompareResult:
    """Compute the results of ``compare-layers`` (no files written)."""
    timings = {"load": 0.0, "attack": 0.0, "forward": 0.0, "cka": 0.0}
    t = time.perf_counter()
    specs, groups = expand_models(list(settings.models))
    loaded = [load(m, device=settings.device, **settings.load_options.kwargs()) for m in specs]
    labels = _labels(loaded)
    nets = {lab: lm.network for lab, lm in zip(labels, loaded)}
    names = {lab: layer_names(net, settings.layers) for lab, net in nets.items()}
    data = chosen_images(settings, settings.split, settings.n_samples)
    for lab, lm in zip(labels, loaded):
        lm.label = lab
        choose_classifier(lm, data.num_classes, settings.data, settings.classifier)
    settings.attack.n_classes = data.num_classes
    classifiers: Dict[str, Any] = {}
    if any(not lm.has_classifier for lm in loaded):
        train = chosen_images(settings, "train", settings.probe_train, sampled=False)
        for lab, lm in zip(labels, loaded):
            classifiers[lab] = ensure_classifier(lm, train, settings.seed, progress)
    timings["load"] += time.perf_counter() - t

    noise = settings.noise_control and settings.attack.name not in ("none", "noise") and settings.attack.eps > 0
    inputs = ("clean", "adversarial", "noise") if noise else ("clean", "adversarial")
    entries = planned_entries(labels, noise)
    gains = {lab: Gains(settings.bootstrap) for lab in labels} if noise else {}
    unknown = [m for m in settings.measures if m not in MEASURES]
    if unknown:
        raise ClrobustError(f"unknown measure {unknown[0]!r}; use some of: {', '.join(MEASURES)}.")
    if settings.measures and dist is not None:
        raise ClrobustError("--measures needs every image's features in one process; run it without torchrun.")
    pooled: Dict[Tuple[str, str], Dict[str, List[torch.Tensor]]] = {(lab, i): {} for lab in labels for i in INPUTS}
    boot = Bootstrap(settings.bootstrap, settings.seed) if settings.bootstrap else None
    accs = {e: metric(settings.metric, bootstrap=settings.bootstrap, precision=settings.precision) for e in entries}
    measure = next(iter(accs.values()))
    correct = {lab: {**{inp: 0 for inp in inputs}, "robust": 0} for lab in labels}
    if len(data) < MIN_BATCH:
        raise ClrobustError(f"need at least {MIN_BATCH} samples for minibatch CKA, got {len(data)}.")
    source = None
    if settings.adv_source is not None:
        if settings.adv_source in specs:
            source = labels[specs.index(settings.adv_source)]
        elif settings.adv_source in labels:
            source = settings.adv_source
        else:
            raise ClrobustError(f"--adv-source {settings.adv_source!r} is not one of the compared models "
                                f"({', '.join(specs)}); name one of them.")
    cache = None
    if settings.cache is not None:
        from clrobust.recordings import RecordingCache

        cache = RecordingCache(Path(settings.cache), nets, names, data, settings.batch_size, settings.attack, source)
    stage = Stage(nets, names, settings.attack, settings.device, adv_source=source, cache=cache)
    for batch in stage.batches(data, settings.batch_size, inputs=inputs, dist=dist, progress=progress,
                               desc="compare-layers", leave=True):
        grams: Dict[Tuple[str, str], Any] = {}
        weights = boot.weights(batch.index, len(batch.y)) if boot is not None else None
        held: Dict[str, Recording] = {}  # this model's clean and adversarial recordings, until its noise one
        right: Dict[str, Dict[str, torch.Tensor]] = {lab: {} for lab in labels}  # which images each got right
        device = batch.x.device
        for rec in batch.recordings:
            if settings.measures and rec.input in INPUTS:
                for name, act in rec.layers.items():
                    pooled[(rec.model, rec.input)].setdefault(name, []).append(pool_flatten(act).double().cpu())
            right[rec.model][rec.input] = (rec.logits.argmax(1) == batch.y).cpu()
            t = time.perf_counter()
            grams[(rec.model, rec.input)] = measure.prepare(list(rec.layers.values()))  # on the model's device
            if noise:
                held[rec.input] = rec
                if rec.input == "noise":
                    gains[rec.model].update(held["clean"], held["adversarial"], rec, batch.x, weights)
                    held = {}
            device = rec.logits.device
            timings["cka"] += elapsed_since(t, device)
        for lab in labels:
            for k, c in right_counts(right[lab]).items():
                correct[lab][k] += c
        t = time.perf_counter()
        for e in entries:
            if weights is None:
                accs[e].update_prepared(grams[e[0]], grams[e[1]])
            else:
                accs[e].update_prepared(grams[e[0]], grams[e[1]], weights)
        timings["cka"] += elapsed_since(t, device)
    timings["attack"] += stage.timings["attack"]
    timings["forward"] += stage.timings["forward"]

    if dist is not None:
        for e in entries:  # a process that owned no batch joins every collective all the same
            accs[e].ensure_state(len(names[e[0][0]]), len(names[e[1][0]]))
        dist.all_reduce_cka(accs, entries)
        dist.all_reduce_counts(correct)
        for lab in gains:
            gains[lab].ensure_state(len(names[lab]))
            dist.all_reduce(gains[lab].state())
    t = time.perf_counter()
    cka_list, replicates = [], {}
    for e in entries:
        reps = accs[e].replicates()
        low, high = percentile_interval(reps) if reps is not None else (None, None)
        cka_list.append(CKAEntry(e[0], e[1], accs[e].compute(), low, high))
        replicates[e] = reps
    matrices = {(c.rows, c.cols): c.matrix for c in cka_list}
    n = len(data)
    disparity = {lab: cka_disparity(matrices[((lab, "clean"), (lab, "adversarial"))]).tolist()
                 for lab in labels}
    stats = _disparity_statistics(labels, names, disparity, replicates)
    if noise:
        noise_disparity = {lab: cka_disparity(matrices[((lab, "clean"), (lab, "noise"))]).tolist() for lab in labels}
        noise_stats = _disparity_statistics(labels, names, noise_disparity, replicates, "noise")
        stats.update(noise_disparity=noise_disparity, noise_disparity_ci=noise_stats["disparity_ci"],
                     noise_late_disparity=noise_stats["late_disparity"],
                     amplification={lab: g.result() for lab, g in gains.items()})
    timings["cka"] += time.perf_counter() - t
    accuracy = {lab: {k: correct[lab][k] / n for k in ACCURACIES} for lab in labels}
    accuracy_ci = {lab: {k: list(wilson_interval(correct[lab][k], n)) for k in ACCURACIES} for lab in labels}
    result = CompareResult(
        models={lab: {**lm.describe(), "training": lm.metadata.get("training", {}),
                      **classifiers.get(lab, {"classifier": "own linear head"})}
                for lab, lm in zip(labels, loaded)},
        layers=names, cka=cka_list, disparity=disparity, accuracy=accuracy, attack=settings.attack.to_dict(),
        data={"name": settings.data, "split": settings.split}, n_samples=n,
        batches=len(batch_plan(n, settings.batch_size)), batch_size=settings.batch_size, metric=settings.metric,
        cka_estimator=measure.description, seed=settings.seed, versions=versions(),
        timings_seconds={k: round(v, 3) for k, v in timings.items()},
        processes=1 if dist is None else dist.world, accuracy_ci=accuracy_ci,
        sampling=data.chosen,
        groups={g: [labels[specs.index(m)] for m in members] for g, members in groups.items()},
        adversarial_design=("each model's own (crafted against that model)" if source is None else
                            f"crafted against {source}, the same for every model"),
        uncertainty=boot.describe() if boot is not None else "none (--bootstrap 0)", replicates=replicates,
        **stats)
    result.group_summary = group_summary(result)
    result.group_differences = group_differences(result.group_summary)
    if settings.measures:
        t = time.perf_counter()
        feats = {k: {name: torch.cat(chunks) for name, chunks in v.items()} for k, v in pooled.items()}
        result.measures = {m: {lab: [_dissimilarity(m, feats[(lab, "clean")][layer], feats[(lab, "adversarial")][layer])
                                     for layer in names[lab]] for lab in labels} for m in settings.measures}
        result.measure_flips = measure_flips(result)
        result.timings_seconds["measures"] = round(time.perf_counter() - t, 3)
    return result


def _dissimilarity(measure: str, x: torch.Tensor, y: torch.Tensor) -> float:
    """How far apart two representations are under ``measure``: 1 - similarity, or the distance itself."""
    value = similarity.compute(measure, x, y)
    return value if not MEASURES[measure].higher_is_similar else 1.0 - value


def measure_flips(result: CompareResult) -> List[str]:
    """Conclusions of the main metric's disparity that another measure reverses: the ordering of two models'
    late-layer disparity, and whether a model's disparity rises from the first to the last third."""
    def rise(v: Sequence[float]) -> float:
        return late_mean(v) - early_mean(v)

    flips = []
    for m, curves in result.measures.items():
        for lab in result.labels:
            a, b = rise(result.disparity[lab]), rise(curves[lab])
            if a * b < 0:
                flips.append(f"{lab}: disparity {'rises' if a > 0 else 'falls'} with depth under {result.metric} "
                             f"({a:+.3f}) but {'rises' if b > 0 else 'falls'} under {m} ({b:+.3f})")
        for i, x in enumerate(result.labels):
            for y in result.labels[i + 1:]:
                a = late_mean(result.disparity[x]) - late_mean(result.disparity[y])
                b = late_mean(curves[x]) - late_mean(curves[y])
                if a * b < 0:
                    flips.append(f"late disparity {x} {'>' if a > 0 else '<'} {y} under {result.metric} "
                                 f"({a:+.3f}) but {'>' if b > 0 else '<'} under {m} ({b:+.3f})")
    return flips


def group_summary(result: CompareResult) -> Dict[str, Dict[str, Any]]:
    """Per group of training runs: the mean over runs, the between-run SD and the t-interval of the mean
    (runs as the sample: a statement about the recipe, not one model) of each summary number."""
    numbers = {"late_disparity": lambda lab: result.late_disparity[lab]["value"],
               "clean_accuracy": lambda lab: result.accuracy[lab]["clean"],
               "adversarial_accuracy": lambda lab: result.accuracy[lab]["adversarial"],
               "robust_accuracy": lambda lab: result.accuracy[lab]["robust"]}
    if result.noise_late_disparity:
        numbers["noise_late_disparity"] = lambda lab: result.noise_late_disparity[lab]["value"]
    out: Dict[str, Dict[str, Any]] = {}
    for group, labels in result.groups.items():
        stats: Dict[str, Any] = {"runs": list(labels)}
        for name, get in numbers.items():
            stats[name] = t_interval([get(lab) for lab in labels])
        out[group] = stats
    return out


def group_differences(summary: Mapping[str, Mapping[str, Any]]) -> List[Dict[str, Any]]:
    """Every pair of groups of training runs (in the order given): the difference of their means, first
    minus second, of each summary number with Welch's t-interval over runs (two recipes compared, runs as
    the sample; an interval needs two runs or more in each group)."""
    out = []
    names = list(summary)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            entry: Dict[str, Any] = {"a": a, "b": b}
            for key, value in summary[a].items():
                if key != "runs" and key in summary[b]:
                    entry[key] = welch_interval(value["values"], summary[b][key]["values"])
            out.append(entry)
    return out


def _pair(interval: Optional[Sequence[float]]) -> Tuple[Optional[float], Optional[float]]:
    return (interval[0], interval[1]) if interval else (None, None)


class Gains:
    """Per layer, how much one model's features move per unit of input change, under the attack and under
    the noise control: sums over images of ||f(x') - f(x)|| / ||x' - x|| (images the input change leaves
    untouched are left out of both), with their bootstrap replicates."""

    def __init__(self, bootstrap: int = 0) -> None:
        self.bootstrap = bootstrap
        self.sums: Optional[torch.Tensor] = None  # (2, layers): attack, noise
        self.boot: Optional[torch.Tensor] = None  # (2, replicates, layers)

    def ensure_state(self, layers: int) -> None:
        if self.sums is None:
            self.sums = torch.zeros(2, layers, dtype=torch.float64)
            self.boot = torch.zeros(2, self.bootstrap, layers, dtype=torch.float64)

    def state(self) -> List[torch.Tensor]:
        assert self.sums is not None and self.boot is not None
        return [self.sums, self.boot]

    def update(self, clean: Recording, adversarial: Recording, noise: Recording, x: torch.Tensor,
               weights: Optional[torch.Tensor]) -> None:
        self.ensure_state(len(clean.layers))
        assert self.sums is not None and self.boot is not None
        moved_a = (adversarial.inputs - x).flatten(1).norm(dim=1).double().cpu()
        moved_n = (noise.inputs - x).flatten(1).norm(dim=1).double().cpu()
        keep = (moved_a > 0) & (moved_n > 0)
        per = []
        for rec, moved in ((adversarial, moved_a), (noise, moved_n)):
            change = torch.stack([(rec.layers[k] - clean.layers[k]).flatten(1).norm(dim=1).double().cpu()
                                  for k in clean.layers])  # (layers, n)
            per.append(torch.where(keep, change / moved.clamp_min(1e-300), torch.zeros_like(change)))
        g = torch.stack(per)  # (2, layers, n)
        self.sums += g.sum(2)
        if self.bootstrap and weights is not None:
            self.boot += torch.einsum("kla,ra->krl", g, weights.double())

    def result(self) -> Dict[str, List[float]]:
        """Per layer: the ratio of the attack's mean gain to the noise's, with its bootstrap interval."""
        assert self.sums is not None and self.boot is not None
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = (self.sums[0] / self.sums[1]).numpy()
            out: Dict[str, List[float]] = {"ratio": ratio.tolist()}
            if self.bootstrap:
                low, high = percentile_interval((self.boot[0] / self.boot[1]).numpy())
                out.update(ci_low=low.tolist(), ci_high=high.tolist())
        return out


def _disparity_statistics(labels: Sequence[str], names: Mapping[str, Sequence[str]],
                          disparity: Mapping[str, List[float]],
                          replicates: Mapping[Entry, Optional[np.ndarray]], other: str = "adversarial"
                          ) -> Dict[str, Any]:
    """Per-layer disparity intervals, the late-layer mean with its interval, and paired differences
    between every two models (same images, same bootstrap weights), from the CKA replicates of clean
    against ``other`` inputs."""
    reps = {lab: replicates.get(((lab, "clean"), (lab, other))) for lab in labels}
    out: Dict[str, Any] = {"disparity_ci": {}, "late_disparity": {}, "paired_disparity": []}
    boot_disp = {}
    for lab in labels:
        d = np.asarray(disparity[lab])
        last = depth_thirds(len(d))[1]
        late: Dict[str, Any] = {"value": float(d[last].mean()), "layers": list(names[lab][last])}
        r = reps[lab]
        if r is not None:
            boot_disp[lab] = 1 - np.diagonal(r, axis1=1, axis2=2)  # (replicates, layers)
            low, high = percentile_interval(boot_disp[lab])
            out["disparity_ci"][lab] = {"ci_low": low.tolist(), "ci_high": high.tolist()}
            late_low, late_high = percentile_interval(boot_disp[lab][:, last].mean(1))
            late.update(ci_low=float(late_low), ci_high=float(late_high))
        out["late_disparity"][lab] = late
    for i, a in enumerate(labels):
        for b in labels[i + 1:]:
            if a in boot_disp and b in boot_disp and len(disparity[a]) == len(disparity[b]):
                diff = np.asarray(disparity[a]) - np.asarray(disparity[b])
                layers = [x if x == y else f"{x} / {y}" for x, y in zip(names[a], names[b])]
                out["paired_disparity"].append(PairedDifference.from_replicates(
                    a, b, "disparity", layers, diff, boot_disp[a] - boot_disp[b]).to_dict())
    return out


def heatmap_name(rows: Tuple[str, str], cols: Tuple[str, str]) -> str:
    """File name of the heatmap of (model, input) ``rows`` against ``cols``."""
    def short(d: Tuple[str, str]) -> str:
        return f"{d[0]}-{'adv' if d[1] == 'adversarial' else 'clean'}"
    return f"cka_{short(rows)}_vs_{short(cols)}.png"


def compare_layers(settings: CompareSettings, out: Path, overwrite: bool = False,
                   progress: bool = True, dist: Optional[Dist] = None) -> CompareResult:
    """Run the job and write its outputs (refusing to overwrite unless asked).

    Under torchrun (``dist``), every process computes its batches and rank 0 writes.
    """
    out = Path(out)
    main = dist is None or dist.is_main
    specs, _ = expand_models(list(settings.models))
    labels = [resolve(m)[0] for m in specs]  # a mistyped model name is reported before anything
    if settings.adv_source is not None and settings.adv_source not in specs + labels:
        raise ClrobustError(f"--adv-source {settings.adv_source!r} is not one of the compared models "
                            f"({', '.join(specs)}); name one of them.")
    with OutputFolder(out, RESULT_FILES, overwrite, active=main) as folder:  # fails before any work
        result = run_compare(settings, progress=progress and main, dist=dist)
        folder.commit([result], settings.to_dict(), settings.seed)
    return result
