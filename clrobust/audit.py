"""Robust-accuracy reports for one or many models (``clrobust audit``).

For each model, each norm and eps, each attack: which test points stay correctly
classified. Robust accuracy of AutoAttack and of the "worst case" row is the
per-point worst case over their attacks, as RobustBench reports it. Threat model
II attacks encoder + linear head end to end; threat model I attacks the encoder
alone without labels (``rep``), then classifies with the linear head / probe.

Results are cached per (model, norm, eps, attack) in the output folder, so an
interrupted audit resumes where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import sys
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar, Dict, List, Mapping, Optional, Sequence, Tuple

import torch

from clrobust.activations import Stage
from clrobust.attacks import AttackSpec, format_eps
from clrobust.checkpoints import LoadOptions, distinct_labels, load, resolve
from clrobust.checkpoints.zoo import duration, training_summary
from clrobust.data import ImageData, SampledDataOptions, chosen_images
from clrobust.distributed import Dist
from clrobust.errors import ClrobustError
from clrobust.heads import choose_classifier, ensure_classifier
from clrobust.provenance import versions, weights_hash, write_json
from clrobust.results import Drawer, OutputFolder, Result, Table
from clrobust.uncertainty import wilson_interval, with_interval

#: attack name -> (torchattacks-backed spec name, default steps)
AUDIT_ATTACKS: Dict[str, Tuple[str, int]] = {
    "fgsm": ("fgsm", 1), "pgd20": ("pgd", 20), "apgd-ce": ("apgd", 100), "autoattack": ("autoattack", 100),
    "tm1-pgd20": ("rep", 20),
}
#: PGD with restarts, named ``pgd<steps>x<restarts>`` (e.g. pgd50x10): a point counts as robust only if every
#: restart (each its own random start, seeds ``seed``, ``seed + 1``, ...) fails on it.
_RESTARTED = re.compile(r"pgd(\d+)x(\d+)$")


def audit_attack(attack: str) -> Tuple[str, int, int]:
    """(spec name, steps, restarts) of an audit attack name.

    Raises:
        ClrobustError: an unknown name, or a pgdNxR with no steps or restarts.
    """
    if attack in AUDIT_ATTACKS:
        return (*AUDIT_ATTACKS[attack], 1)
    m = _RESTARTED.match(attack)
    if m is None:
        raise ClrobustError(f"unknown attack {attack!r}; use: {', '.join(AUDIT_ATTACKS)}, or pgdNxR (PGD-N with "
                            "R random restarts, e.g. pgd50x10).")
    steps, restarts = int(m.group(1)), int(m.group(2))
    if steps < 1 or restarts < 1:
        raise ClrobustError(f"attack {attack!r}: PGD needs at least 1 step and 1 restart (e.g. pgd50x10).")
    return ("pgd", steps, restarts)


REPORT_FILES = ("report.json", "report.csv", "report.md", "robust_accuracy_vs_eps.png", "settings.json")
#: Version of the layout of report.json; raised when a key changes meaning or goes away.
SCHEMA = "clrobust.audit/1"


@dataclass
class AuditSettings(SampledDataOptions):
    models: Sequence[str]
    split: str = "test"
    eps: Sequence[float] = (2 / 255, 4 / 255, 8 / 255)
    l2_eps: Sequence[float] = ()
    attacks: Sequence[str] = ("fgsm", "pgd20", "apgd-ce", "autoattack", "tm1-pgd20")
    n_samples: Optional[int] = 200
    batch_size: int = 100
    attack_batch_size: Optional[int] = None  # images per attack call (None: auto, see AttackSpec.batch_size)
    seed: int = 0
    device: str = "cpu"
    probe_train: Optional[int] = None
    load_options: LoadOptions = field(default_factory=LoadOptions)
    classifier: str = "auto"  # auto: own head when it fits, else a probe; probe: always a probe
    extra: Dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for a in self.attacks:
            audit_attack(a)
        if not self.attacks:
            raise ClrobustError(f"no attack given (--attacks is empty); use some of: {', '.join(AUDIT_ATTACKS)}.")
        if not self.eps and not self.l2_eps:
            raise ClrobustError("give at least one eps (--eps or --l2-eps).")

    def to_dict(self) -> Dict[str, Any]:
        """The settings as settings.json and report.json record them."""
        return {**asdict(self), "models": list(self.models), "eps": list(self.eps), "l2_eps": list(self.l2_eps),
                "attacks": list(self.attacks), "load_options": self.load_options.kwargs()}

    def key(self) -> str:
        d = asdict(self)
        d.pop("models")
        d.pop("device")
        d["versions"] = versions()  # per-point results of other library versions are not reused
        return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _spec(attack: str, norm: str, eps: float, seed: int, n_classes: int,
          batch_size: Optional[int] = None) -> AttackSpec:
    name, steps, _ = audit_attack(attack)
    if norm == "L2":
        if attack in ("fgsm", "tm1-pgd20"):
            raise ClrobustError(f"{attack} is L-inf only here.")
        name = {"pgd": "pgd-l2"}.get(name, name)
    return AttackSpec(name, eps, steps, seed=seed, n_classes=n_classes, norm=norm, batch_size=batch_size)


def _units(settings: AuditSettings) -> List[Tuple[str, float, str]]:
    units = [("Linf", e, a) for e in settings.eps for a in settings.attacks]
    units += [("L2", e, a) for e in settings.l2_eps for a in settings.attacks if a not in ("fgsm", "tm1-pgd20")]
    return units


def _correct(net, spec: Optional[AttackSpec], data: ImageData, bs: int, device: str, dist: Optional[Dist],
             desc: str, progress: bool) -> torch.Tensor:
    """Per-point correctness (int64 0/1) under ``spec`` (None = clean), all-reduced across processes."""
    out = torch.zeros(len(data), dtype=torch.int64)
    stage = Stage({"model": net}, None, spec, device)
    inputs = ("clean",) if spec is None else ("adversarial",)
    for batch in stage.batches(data, bs, inputs=inputs, dist=dist, progress=progress, desc=desc):
        for rec in batch.recordings:
            if spec is not None:
                delta = (rec.inputs - batch.x).flatten(1)
                bound = delta.norm(dim=1) if spec.norm == "L2" else delta.abs().max(1).values
                if (bound > spec.eps + 1e-5).any() or rec.inputs.min() < 0 or rec.inputs.max() > 1:
                    raise RuntimeError(f"{spec.name} left the {spec.norm} ball of radius {spec.eps}")
            out[batch.start:batch.start + len(batch.y)] = (rec.logits.argmax(1) == batch.y).long().cpu()
    if dist is not None:
        dist.all_reduce([out])
    return out


@dataclass
class AuditRow:
    """Clean and robust accuracy of one model under one attack at one norm and eps."""

    model: str
    attack: str
    norm: str
    eps: float
    eps_text: str
    threat_model: str  # "I" (representation attack, then the head) or "II" (end to end)
    clean_accuracy: float
    robust_accuracy: float
    n: int
    #: 95% Wilson intervals of the two accuracies over the ``n`` images (filled in from the counts when absent)
    clean_ci_low: float = math.nan
    clean_ci_high: float = math.nan
    robust_ci_low: float = math.nan
    robust_ci_high: float = math.nan

    def __post_init__(self) -> None:
        if math.isnan(self.clean_ci_low) or math.isnan(self.clean_ci_high):
            self.clean_ci_low, self.clean_ci_high = wilson_interval(round(self.clean_accuracy * self.n), self.n)
        if math.isnan(self.robust_ci_low) or math.isnan(self.robust_ci_high):
            self.robust_ci_low, self.robust_ci_high = wilson_interval(round(self.robust_accuracy * self.n), self.n)

    @classmethod
    def count(cls, model: str, attack: str, norm: str, eps: float, clean: torch.Tensor,
              corr: torch.Tensor) -> "AuditRow":
        """From per-point correctness: ``clean`` (clean-correct) and ``corr`` (robust and clean-correct)."""
        n = len(clean)
        return cls(model, attack, norm, eps, format_eps(eps) if norm == "Linf" else f"{eps:g}",
                   "I" if attack.startswith("tm1") else "II", float(clean.sum()) / n, float(corr.sum()) / n, n)

    def clean_text(self) -> str:
        """``37.5% [31.1%, 44.4%]``: the clean accuracy with its interval."""
        return with_interval(self.clean_accuracy, self.clean_ci_low, self.clean_ci_high, percent=True)

    def robust_text(self) -> str:
        return with_interval(self.robust_accuracy, self.robust_ci_low, self.robust_ci_high, percent=True)


@dataclass
class AuditResult(Result):
    """A RobustBench-style report: one row per (model, attack, norm, eps)."""

    SCHEMA: ClassVar[str] = SCHEMA

    models: Dict[str, Dict[str, Any]]
    rows: List[AuditRow]
    n_samples: int
    data: Dict[str, str]
    attacks: Dict[str, Dict[str, Any]]
    autoattack: str
    seed: int
    settings: Dict[str, Any]
    versions: Dict[str, str]

    def json_name(self) -> str:
        return "report.json"

    def to_dict(self) -> Dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["rows"] = [asdict(r) for r in self.rows]
        return {"schema": self.SCHEMA, **d}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "AuditResult":
        kw = {f.name: d[f.name] for f in fields(cls)}
        kw["rows"] = [AuditRow(**r) for r in d["rows"]]
        return cls(**kw)

    def tables(self) -> Dict[str, Table]:
        head = [f.name for f in fields(AuditRow)]
        return {"report.csv": Table(head, [[getattr(r, k) for k in head] for r in self.rows])}

    def markdown_name(self) -> Optional[str]:
        return "report.md"

    def markdown(self) -> str:
        """One row per model: clean accuracy, then robust accuracy per (attack, norm, eps)."""
        cols: List[Tuple[str, str, str]] = list(dict.fromkeys((r.attack, r.norm, r.eps_text) for r in self.rows))
        models = list(dict.fromkeys(r.model for r in self.rows))
        head = ["model", "clean"] + [f"{a} {n} {e}" for a, n, e in cols]
        chosen = self.data.get("chosen") or (
            f"{self.settings['sampling']}, sample seed {self.settings.get('sample_seed', 0)}"
            if "sampling" in self.settings else "the first of the split: an audit from before --sampling")
        lines = [f"Robust accuracy on {self.n_samples} {self.data['name']} {self.data['split']} images ({chosen}); "
                 f"attack seed {self.seed}. Brackets: 95% Wilson intervals over the {self.n_samples} images. "
                 f"{self.autoattack}.", "",
                 "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for m in models:
            mr = {(r.attack, r.norm, r.eps_text): r for r in self.rows if r.model == m}
            clean = next(iter(mr.values())).clean_text()
            lines.append("| " + " | ".join([m, clean] + [mr[c].robust_text() if c in mr else "-"
                                                         for c in cols]) + " |")
        trained = {m: self.models.get(m, {}).get("training") for m in models}
        if any(trained.values()):  # what each model's training cost, from its checkpoint's metadata
            lines += ["", "Training, as each checkpoint's metadata records it (time: over every resumed run, less "
                      "any time the job was stopped, which older records include; >= marks a lower bound):", "",
                      "| model | trained on | epochs | seed | device | optimiser steps | train time |",
                      "|---|---|---|---|---|---|---|"]
            for m, t in trained.items():
                if t:
                    cells = [t.get("train_data") or t.get("data"), t.get("epochs"), t.get("seed"),
                             ", ".join(t.get("train_devices") or []) or t.get("device"), t.get("optimizer_steps"),
                             duration(t) if t.get("train_seconds") is not None else None]
                    lines.append("| " + " | ".join([m] + ["-" if c is None else str(c) for c in cells]) + " |")
        return "\n".join(lines)

    def figures(self) -> Dict[str, Drawer]:
        if not any(r.norm == "Linf" for r in self.rows):
            return {}
        return {"robust_accuracy_vs_eps.png": self._plot}

    def _plot(self, path: Path) -> None:
        from clrobust.plots import new_figure

        rows = [r for r in self.rows if r.norm == "Linf"]
        fig, ax = new_figure(figsize=(7, 4.2))
        for m in dict.fromkeys(r.model for r in rows):
            for attack, style in (("worst-case (II)", "-"), ("tm1-pgd20", ":")):
                pts = sorted((r.eps, r.robust_accuracy, r.robust_ci_low, r.robust_ci_high) for r in rows
                             if r.model == m and r.attack == attack)
                if pts:
                    c = next(r for r in rows if r.model == m)
                    y = [c.clean_accuracy] + [p[1] for p in pts]
                    low = [c.clean_ci_low] + [p[2] for p in pts]
                    high = [c.clean_ci_high] + [p[3] for p in pts]
                    ax.errorbar([0] + [p[0] * 255 for p in pts], y, yerr=[[v - lo for v, lo in zip(y, low)],
                                                                          [hi - v for v, hi in zip(y, high)]],
                                fmt=style, marker="o", ms=3, capsize=2, elinewidth=0.8,
                                label=f"{m} ({'worst case, II' if style == '-' else 'threat model I'})")
        ax.set_xlabel("eps (x/255, L-inf)")
        ax.set_ylabel("accuracy")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
        ax.set_title(f"Robust accuracy vs eps ({self.n_samples} {self.data['name']} images; bars: 95% Wilson)",
                     fontsize=9)
        fig.tight_layout()
        fig.savefig(path, dpi=110)


def run_audit(settings: AuditSettings, out: Path, overwrite: bool = False, progress: bool = True,
              dist: Optional[Dist] = None) -> AuditResult:
    """Audit every model; write report.json/.csv/.md, the robust-accuracy plot and settings.json (rank 0)."""
    out = Path(out)
    main = dist is None or dist.is_main
    labels = distinct_labels([resolve(m)[0] for m in settings.models])  # mistyped names fail first
    with OutputFolder(out, REPORT_FILES, overwrite, active=main) as folder:  # fails before any work
        report = _audit(settings, out, labels, overwrite, progress, dist, main)
        folder.commit([report], settings.to_dict(), settings.seed)
    return report


def _read_cache(path: Path, settings: AuditSettings, overwrite: bool, main: bool) -> Dict[str, Any]:
    """The per-point results of an interrupted run with these settings, versions and data; else empty."""
    cache: Dict[str, Any] = {}
    if path.exists():
        try:
            cache = json.loads(path.read_text())
            if not isinstance(cache, dict) or not isinstance(cache.get("results", {}), dict):
                raise ValueError("not an audit cache")
        except (OSError, ValueError) as exc:
            if main:
                print(f"{path}: unreadable audit cache ({exc}); recomputing", file=sys.stderr)
            cache = {}
        if cache and cache.get("settings_key") != settings.key():
            if not overwrite:
                raise ClrobustError(f"--out {str(path.parent)!r} holds an unfinished audit with other settings "
                                    "or library versions; choose another folder or pass --overwrite.")
            cache = {}
    cache.setdefault("settings_key", settings.key())
    cache.setdefault("results", {})
    return cache


def _audit(settings: AuditSettings, out: Path, labels: List[str], overwrite: bool, progress: bool,
           dist: Optional[Dist], main: bool) -> AuditResult:
    """Every model's rows: clean, each attack and the worst case, resumed from the cache where it has them."""
    cache_path = out / "audit-cache.json"
    cache = _read_cache(cache_path, settings, overwrite, main)
    data = chosen_images(settings, settings.split, settings.n_samples)
    images = data.fingerprint()
    if cache.get("data", images) != images:  # the same path and options, other files
        if main:
            print(f"{cache_path}: cached results are of other images; recomputing", file=sys.stderr)
        cache["results"] = {}
    cache["data"] = images
    train = None
    rows: List[AuditRow] = []
    models_info: Dict[str, Any] = {}
    for name, label in zip(settings.models, labels):
        lm = load(name, device=settings.device, **settings.load_options.kwargs())
        lm.label = label  # two files of the same name stay two models
        net = lm.network
        choose_classifier(lm, data.num_classes, settings.data, settings.classifier)
        if not lm.has_classifier and train is None:
            train = chosen_images(settings, "train", settings.probe_train, sampled=False)
        info = ensure_classifier(lm, train, settings.seed, progress and main)
        trained = lm.metadata.get("training")
        models_info[lm.label] = {**lm.describe(), **info,
                                 **({"training": training_summary(trained)} if isinstance(trained, dict) else {})}
        weights = weights_hash(net)
        mres = cache["results"].setdefault(lm.label, {})
        if mres.get("weights", weights) != weights:
            if main:
                print(f"{lm.label}: weights differ from the cached run's; recomputing its results",
                      file=sys.stderr)
            mres.clear()
        mres["weights"] = weights
        if "clean" not in mres:
            mres["clean"] = _correct(net, None, data, settings.batch_size, settings.device, dist,
                                     f"{lm.label}: clean", progress and main).tolist()
        clean = torch.tensor(mres["clean"])
        worst: Dict[Tuple[str, float], torch.Tensor] = {}
        for norm, eps, attack in _units(settings):
            key = f"{attack}|{norm}|{eps:.10g}"
            if key not in mres:
                restarts = audit_attack(attack)[2]
                hit = torch.ones(len(data), dtype=torch.int64)
                for r in range(restarts):  # robust only where every restart fails
                    spec = _spec(attack, norm, eps, settings.seed + r, data.num_classes, settings.attack_batch_size)
                    desc = f"{lm.label}: {attack} {norm} {format_eps(eps)}" + \
                        (f" restart {r + 1}/{restarts}" if restarts > 1 else "")
                    hit &= _correct(net, spec, data, settings.batch_size, settings.device, dist, desc,
                                    progress and main)
                mres[key] = hit.tolist()
                if main:
                    write_json(cache_path, cache)
            corr = torch.tensor(mres[key]) & clean
            if attack != "tm1-pgd20":
                worst[(norm, eps)] = corr if (norm, eps) not in worst else worst[(norm, eps)] & corr
            rows.append(AuditRow.count(lm.label, attack, norm, eps, clean, corr))
        for (norm, eps), corr in worst.items():
            rows.append(AuditRow.count(lm.label, "worst-case (II)", norm, eps, clean, corr))
    report = AuditResult(
        models=models_info, rows=rows, n_samples=len(data),
        data={"name": settings.data, "split": settings.split, "chosen": data.chosen},
        attacks={a: dict(zip(("spec", "steps", "restarts"), audit_attack(a))) for a in settings.attacks},
        autoattack="standard: APGD-CE 100 steps, APGD-T 100 steps, FAB-T 100 steps, Square 5000 "
                   "queries, 1 restart each, through torchattacks; robust = per-point worst case",
        seed=settings.seed, settings=settings.to_dict(), versions=versions())
    return report
