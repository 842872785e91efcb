"""One entry point from a zoo name or a checkpoint path to a ready network."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional

import torch

from clrobust.checkpoints import is_native, load_network
from clrobust.models import Network
from clrobust.zoo import resolve


@dataclass
class LoadedModel:
    label: str
    path: Path
    network: Network
    metadata: Dict[str, Any] = field(default_factory=dict)

    @property
    def source(self) -> str:
        """``zoo:NAME`` for embedded models, else the checkpoint path (for result files)."""
        from clrobust.zoo import zoo_dir

        try:
            self.path.resolve().relative_to(zoo_dir().resolve())
            return f"zoo:{self.path.stem}"
        except ValueError:
            return str(self.path)


def load_model(name_or_path: str, device: str = "cpu", adversarial_bn: bool = False, *,
               arch: Optional[str] = None, normalize: Optional[str] = None, strict: bool = True,
               trust: bool = False) -> LoadedModel:
    """Load a zoo model or a checkpoint file, in eval mode on ``device``.

    Native clrobust checkpoints load directly; any other file goes through
    :func:`clrobust.checkpoints.formats.load_checkpoint` (format detection), with
    ``arch``, ``normalize``, ``strict`` and ``trust`` passed on.

    Raises:
        ClrobustError: unknown name, missing, corrupt, unsafe or unrecognised file.
    """
    label, path = resolve(name_or_path)
    if path.suffix == ".json":
        path = path.with_suffix(".safetensors")
    if not path.exists() and path.with_name(path.name + ".safetensors").exists():
        path = path.with_name(path.name + ".safetensors")
    if is_native(path) or (path.suffix == ".safetensors" and not path.exists()):
        net, meta = load_network(path, adversarial_bn=adversarial_bn)
    else:
        from clrobust.checkpoints.formats import load_checkpoint

        net, report = load_checkpoint(path, arch=arch, normalize=normalize, strict=strict, trust=trust,
                                      adversarial_bn=adversarial_bn)
        meta = {"source_format": report.format, "load_report": report.to_dict(),
                "has_classifier": report.has_classifier}
    return LoadedModel(label, path, net.to(torch.device(device)).eval(), meta)


def ensure_classifier(lm: LoadedModel, train, seed: int = 0, progress: bool = True) -> Dict[str, Any]:
    """Give a head-less encoder a linear probe fitted on frozen features of ``train``.

    Models with a classifier of their own are left alone. The probe is fitted
    deterministically (seeded, L-BFGS on the full feature matrix) so that every
    process of a multi-process run fits the same one.
    """
    if lm.metadata.get("has_classifier", True):
        return {"classifier": "own linear head"}
    from tqdm.auto import tqdm

    from clrobust.train.trainer import fit_linear

    net = lm.network
    device = next(net.parameters()).device
    feats = []
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for x, _ in tqdm(train.batches(256), desc=f"{lm.label}: probe features", disable=not progress,
                         leave=False):
            feats.append(net.features(x.to(device)).cpu())
        f = torch.cat(feats)
        head = net.classifier.cpu()
        torch.nn.init.zeros_(head.weight)
        torch.nn.init.zeros_(head.bias)
        fit_linear(head, f, train.labels)
        net.classifier.to(device)
        acc = float((head(f).argmax(1) == train.labels).float().mean())
    lm.metadata["has_classifier"] = True
    return {"classifier": f"linear probe fitted on {len(train)} frozen train features",
            "probe_train_accuracy": acc}
