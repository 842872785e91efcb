"""A third-party checkpoint (SupContrast, solo-learn, MoCo, ACL, CLAE, RobustBench ...) as a clrobust Network.

>>> net, report = load_checkpoint("last.pth")            # format and architecture detected
>>> print(report.format, report.arch, report.dropped[:2])

Reading is :mod:`~clrobust.checkpoints.reading`, detection :mod:`~clrobust.checkpoints.detect`,
key mapping :mod:`~clrobust.checkpoints.mapping`, all driven by the table in
:mod:`~clrobust.checkpoints.table`. The rest of clrobust goes through
:func:`clrobust.checkpoints.load`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

import torch

from clrobust.checkpoints.detect import detect_format
from clrobust.checkpoints.mapping import Mapped, find_state_dict, infer_arch, map_state, unwrap
from clrobust.checkpoints.reading import read_checkpoint_file
from clrobust.checkpoints.report import LoadReport
from clrobust.checkpoints.table import NORMALIZATIONS, CheckpointFormat, Norm, get_format, parse_normalize
from clrobust.errors import ClrobustError
from clrobust.models import DualBatchNorm2d, ModelConfig, Network, architecture, create_model
from clrobust.names import STEMS


def _resolve_normalize(user: Optional[str], mapped: Mapped, fmt: CheckpointFormat) -> Tuple[Norm, Dict[str, Any]]:
    if user is not None:
        norm, origin = parse_normalize(user), f"user (--normalize {user})"
    elif "normalize.mean" in mapped.normalize and "normalize.std" in mapped.normalize:
        mean = tuple(float(v) for v in mapped.normalize["normalize.mean"].flatten())
        std = tuple(float(v) for v in mapped.normalize["normalize.std"].flatten())
        if len(mean) != 3 or len(std) != 3:
            raise ClrobustError(f"normalisation buffers hold {len(mean)}/{len(std)} values, not 3; "
                                "pass --normalize explicitly.")
        norm, origin = (mean, std), "checkpoint buffers (inside the model)"
    else:
        norm, origin = NORMALIZATIONS[fmt.normalize], f"format default ({fmt.normalize})"
    info = {"mean": list(norm[0]) if norm else None, "std": list(norm[1]) if norm else None, "origin": origin}
    return norm, info


def load_checkpoint(path: Union[str, Path], arch: Optional[str] = None, normalize: Optional[str] = None,
                    strict: bool = True, trust: bool = False, adversarial_bn: Optional[bool] = None,
                    format: Optional[str] = None, stem: Optional[str] = None) -> Tuple[Network, LoadReport]:
    """Load any supported checkpoint as a clrobust :class:`Network` in eval mode.

    Args:
        path: .pt/.pth/.ckpt/.tar/.t7 (or any name) or .safetensors file.
        arch: ``resnet18``/``34``/``50``, ``preact-resnet18(-v1)``, ``wrn-D-K``, ``dm-wrn-D-K[-relu]`` or
            ``dm-preact-resnet18/34[-relu]``; inferred from shapes when None.
        normalize: input normalisation override: a preset (``cifar10``, ``cifar10-kuangliu``,
            ``cifar10-dm``, ``cifar100``, ``imagenet``, ``half``, ``none``) or ``m1,m2,m3,s1,s2,s3``.
        strict: refuse when encoder weights are missing or mis-shaped.
        trust: allow full unpickling (only for files from a trusted source).
        adversarial_bn: use the adversarial (True) or the clean (False) batch norm of a dual/triple-BN
            checkpoint; None: the branch the format's authors evaluate robustness with.
        format: force a format by name instead of detecting it.
        stem: force one of :data:`clrobust.models.resnet.STEMS` (``cifar``, ``cifar-pad2``,
            ``cifar-norelu``, ``imagenet``).

    Returns:
        (network, report).

    Raises:
        ClrobustError: unreadable or unsafe file, unknown layout, missing weights.
    """
    from clrobust.checkpoints.native import is_native, load_native, plan_network

    if arch is not None:
        architecture(arch)  # a ClrobustError naming the known architectures
    if stem is not None and stem not in STEMS:
        raise ClrobustError(f"unknown --stem {stem!r}; choose {', '.join(STEMS)}.")
    if is_native(path):
        net, _meta, native_report = load_native(Path(path), normalize, adversarial_bn)
        return net, native_report
    obj = read_checkpoint_file(path, trust=trust)
    raw, container, top = find_state_dict(obj)
    state = unwrap(raw)
    fmt = get_format(format) if format else detect_format(state, top)
    mapped = map_state(fmt, state)
    guess = infer_arch(fmt, mapped.encoder, arch, stem)
    norm, norm_info = _resolve_normalize(normalize, mapped, fmt)
    classifier = _classifier(mapped)
    num_classes = int(classifier["weight"].shape[0]) if classifier else 10
    config = ModelConfig(arch=guess.arch, width=guess.width, stem=guess.stem, num_classes=num_classes,
                         proj_dim=None, mean=norm[0] if norm else None, std=norm[1] if norm else None,
                         dual_bn=guess.dual_bn, extra={"source_format": fmt.name, "source": str(path)})
    plan_network(config, f"checkpoint {str(path)!r}")
    net = create_model(config)
    missing = _load_encoder(net, mapped, fmt, strict, path)
    if classifier and tuple(classifier["weight"].shape) == tuple(net.classifier.weight.shape):
        net.classifier.load_state_dict(classifier)
    elif mapped.classifier:
        mapped.unexpected += [mapped.sources[k] for k in mapped.classifier]
        classifier = {}
    chosen = adversarial_bn
    if adversarial_bn is None:
        adversarial_bn = guess.dual_bn and fmt.robust_bn == "adversarial"
    if adversarial_bn:
        _route_adversarial(net, path)
    net.eval()
    notes = list(fmt.notes) + mapped.notes
    if guess.dual_bn:
        branch = "adversarial" if adversarial_bn else "clean"
        notes.append(f"evaluated through the {branch} batch norm" + (
            " (chosen by the user)" if chosen is not None else
            f", the one {fmt.name}'s authors evaluate robustness with (choose with --bn)"))
    if not classifier:
        notes.append("no linear classifier in the file: the classifier is randomly initialised "
                     "(train one before attacking end-to-end).")
    report = LoadReport(
        path=str(path), format=fmt.name, source=fmt.source, arch=guess.arch, width=guess.width, stem=guess.stem,
        num_classes=num_classes, params=sum(p.numel() for p in net.parameters()),
        encoder_params=sum(p.numel() for p in net.encoder.parameters()), container=container,
        has_classifier=bool(classifier), dual_bn=guess.dual_bn, adversarial_bn=adversarial_bn,
        normalize=norm_info, dropped=mapped.dropped, missing=missing, unexpected=mapped.unexpected, notes=notes)
    return net, report


def _classifier(mapped: Mapped) -> Dict[str, torch.Tensor]:
    c = mapped.classifier
    if "classifier.weight" in c and c["classifier.weight"].dim() == 2 and set(c) <= {"classifier.weight",
                                                                                     "classifier.bias"}:
        out = {k[len("classifier."):]: v for k, v in c.items()}
        out.setdefault("bias", out["weight"].new_zeros(out["weight"].shape[0]))  # bias-free heads
        return out
    return {}


def _load_encoder(net: Network, mapped: Mapped, fmt: CheckpointFormat, strict: bool,
                  path: Union[str, Path]) -> List[str]:
    """Copy the mapped encoder tensors into ``net.encoder``; returns the missing keys."""
    expected = net.encoder.state_dict()
    new_state = dict(expected)
    mismatched = []
    for k, v in mapped.encoder.items():
        if k not in expected:
            mapped.unexpected.append(mapped.sources[k])
            continue
        want = expected[k].shape
        if v.shape != want and fmt.split_bn and k.endswith(("running_mean", "running_var")) \
                and v.dim() == 1 and want.numel() and v.numel() % want.numel() == 0:
            v = v.view(-1, want.numel()).mean(0)  # lightly SplitBatchNorm: C x splits statistics
        if v.shape != want:
            mismatched.append(f"{mapped.sources[k]} {tuple(v.shape)} vs {tuple(want)}")
            continue
        new_state[k] = v.to(expected[k].dtype)
    missing = [k for k in expected if k not in mapped.encoder and not k.endswith("num_batches_tracked")]
    missing += [m.split(" ")[0] for m in mismatched]
    if strict and mismatched:
        raise ClrobustError(f"{str(path)!r}: {len(mismatched)} tensor(s) do not fit {net.config.arch} width "
                            f"{net.config.width} (first: {mismatched[0]}); pass the right --arch/--stem, "
                            "or --allow-missing (strict=False) to skip them.")
    if strict and missing:
        raise ClrobustError(f"{str(path)!r}: {len(missing)} encoder weight(s) missing after mapping as "
                            f"{fmt.name!r} (first: {missing[0]}); the file is incomplete or another format "
                            "applies (--format), or pass --allow-missing (strict=False) to load anyway.")
    net.encoder.load_state_dict(new_state)
    return missing


def _route_adversarial(net: Network, path: Union[str, Path]) -> None:
    duals = [m for m in net.modules() if isinstance(m, DualBatchNorm2d)]
    if not duals:
        raise ClrobustError(f"{str(path)!r} has no adversarial batch-norm; drop --bn adversarial.")
    for m in duals:
        m.route_adversarial = True
