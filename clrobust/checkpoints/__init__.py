"""Checkpoints: the one door from a zoo name or a file to a ready network.

>>> from clrobust.checkpoints import load
>>> lm = load("simclr-at")             # a zoo name, a native file or any third-party layout
>>> lm.network, lm.has_classifier, lm.source_format, lm.normalize

What a file says about itself (whether its classifier is real, its number of
classes, its input normalisation, the format it came from) is read once here and
survives ``clrobust convert``; every command reads it from the :class:`LoadedModel`.

Modules, each holding one thing: ``table`` (the known layouts, as data, and the
normalisation presets), ``detect`` (which layout a file is in), ``mapping`` (keys
to clrobust names; architecture from shapes), ``reading`` (bytes to Python
objects, safely), ``native`` (clrobust's safetensors + JSON format), ``thirdparty``
(a third-party file to a network), ``report`` (what loading found), ``zoo`` (the
named models). The rest of clrobust loads through :func:`load` alone.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import torch

from clrobust.checkpoints.native import checkpoint_target, is_native, load_native, save_network
from clrobust.checkpoints.report import LoadReport
from clrobust.checkpoints.table import CheckpointFormat, format_names, register_format, unregister_format
from clrobust.checkpoints.zoo import DEFAULT_PAIR, resolve, zoo_dir
from clrobust.errors import ClrobustError
from clrobust.models import Network, architecture, fast_layout


@dataclass(frozen=True)
class LoadOptions:
    """How to read model files, as given on the command line (``--arch``, ``--format`` ...); see :func:`load`."""

    arch: Optional[str] = None
    format: Optional[str] = None
    normalize: Optional[str] = None
    trust: bool = False
    adversarial_bn: Optional[bool] = None
    strict: bool = True
    stem: Optional[str] = None

    def kwargs(self) -> Dict[str, Any]:
        return asdict(self)


@dataclass
class LoadedModel:
    """A loaded network and what its file says about it."""

    label: str
    path: Path
    network: Network
    has_classifier: bool = True
    source_format: str = "clrobust"
    normalize: Dict[str, Any] = field(default_factory=dict)
    metadata: Dict[str, Any] = field(default_factory=dict)
    report: Optional[LoadReport] = None

    @property
    def num_classes(self) -> int:
        return int(self.network.config.num_classes)

    @property
    def batch_norm(self) -> str:
        """``single``, or which batch norm of a dual-BN network is used (``clean`` / ``adversarial``)."""
        if not self.network.config.dual_bn:
            return "single"
        return "adversarial" if self.report is not None and self.report.adversarial_bn else "clean"

    def describe(self) -> Dict[str, Any]:
        """What result files record about the model: where it came from, its format, its batch norm."""
        return {"source": self.source, "source_format": self.source_format, "batch_norm": self.batch_norm}

    @property
    def source(self) -> str:
        """``zoo:NAME`` for zoo models, else the checkpoint path (for result files)."""
        try:
            self.path.resolve().relative_to(zoo_dir().resolve())
            return f"zoo:{self.path.stem}"
        except ValueError:
            return str(self.path)


def load(name_or_path: str, *, device: str = "cpu", arch: Optional[str] = None, format: Optional[str] = None,
         normalize: Optional[str] = None, trust: bool = False, adversarial_bn: Optional[bool] = None,
         strict: bool = True,
         stem: Optional[str] = None) -> LoadedModel:
    """Load a zoo model, a native checkpoint or a third-party file, in eval mode on ``device``.

    Args:
        name_or_path: a zoo name (``clrobust zoo``) or a checkpoint path.
        device: where the network goes.
        arch: architecture override for third-party files (inferred from shapes when None);
            for native files it must agree with the file.
        format: force a third-party format by name instead of detecting it.
        normalize: input normalisation override: a preset or ``m1,m2,m3,s1,s2,s3``.
        trust: allow full unpickling (only for files from a trusted source).
        adversarial_bn: evaluate a dual-BN network through its adversarial (True) or clean (False)
            batch norm; None: the one its authors evaluate robustness with (ACL, AdvCL: adversarial;
            CLAE: clean; a converted file: what it was converted with).
        strict: refuse third-party files whose encoder weights are missing or mis-shaped.
        stem: stem override for third-party ResNets.

    Raises:
        ClrobustError: unknown name, missing, corrupt, unsafe or unrecognised file, or
            an override that contradicts a native file.
    """
    if arch is not None:
        architecture(arch)  # a ClrobustError naming the known architectures
    label, path = resolve(name_or_path)
    from clrobust.checkpoints.library import load_library_model, parse_library_spec

    if parse_library_spec(name_or_path) is not None:
        net, report = load_library_model(name_or_path, normalize, trust)
        return _ready(label, path, net, report, {"source_format": report.format, "load_report": report.to_dict()},
                      report.format, device)
    if path.suffix == ".json":
        path = path.with_suffix(".safetensors")
    if not path.exists() and path.with_name(path.name + ".safetensors").exists():
        path = path.with_name(path.name + ".safetensors")
    if is_native(path) or (path.suffix == ".safetensors" and not path.exists()):
        if format not in (None, "clrobust"):
            raise ClrobustError(f"{str(path)!r} is a clrobust checkpoint; drop --format {format}.")
        net, meta, report = load_native(path, normalize, adversarial_bn)
        if arch is not None and arch != net.config.arch:
            raise ClrobustError(f"{str(path)!r} holds a {net.config.arch}, not a {arch}; drop --arch.")
        source_format = str(meta.get("source_format", "clrobust"))
    else:
        from clrobust.checkpoints.thirdparty import load_checkpoint

        net, report = load_checkpoint(path, arch=arch, normalize=normalize, strict=strict, trust=trust,
                                      adversarial_bn=adversarial_bn, format=format, stem=stem)
        source_format = report.format
        meta = {"source_format": report.format, "load_report": report.to_dict()}
    return _ready(label, path, net, report, meta, source_format, device)


def _ready(label: str, path: Path, net: Network, report: LoadReport, meta: Dict[str, Any], source_format: str,
           device: str) -> LoadedModel:
    """The loaded model on ``device`` in eval mode and its fastest memory layout there
    (:func:`~clrobust.models.fast_layout`), once its weights are known to be finite."""
    broken = next((k for k, t in net.state_dict().items()
                   if t.is_floating_point() and not bool(torch.isfinite(t).all())), None)
    if broken is not None:
        raise ClrobustError(f"{str(path)!r} has NaN or Inf weights ({broken}); no number can come from it: "
                            "retrain the model or fetch the file again.")
    net = fast_layout(net, torch.device(device))
    return LoadedModel(label, path, net.eval(), has_classifier=report.has_classifier,
                       source_format=source_format, normalize=dict(report.normalize), metadata=meta, report=report)


def distinct_labels(labels: Sequence[str]) -> List[str]:
    """File-system-safe labels, made distinct with ``-2``, ``-3`` ... in order (``simclr-st``, ``simclr-st-2``)."""
    out: List[str] = []
    for raw in labels:
        base = re.sub(r"[^A-Za-z0-9._+-]+", "_", raw).strip("._") or "model"
        label, k = base, 2
        while label in out:
            label = f"{base}-{k}"
            k += 1
        out.append(label)
    return out


__all__ = ["DEFAULT_PAIR", "CheckpointFormat", "LoadOptions", "LoadReport", "LoadedModel", "checkpoint_target",
           "distinct_labels", "format_names", "load", "register_format", "resolve", "save_network", "unregister_format"]
