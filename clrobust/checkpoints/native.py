"""clrobust's own checkpoint format: ``NAME.safetensors`` (weights, no pickle) + ``NAME.json``.

The JSON holds the model config (enough to rebuild the modules), how the model
was trained, its measured accuracies and the library versions; the same model
config is also stored in the safetensors header so the weights file alone suffices.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, Optional, Tuple, Union

import torch

from clrobust.errors import ClrobustError
from clrobust.models import ModelConfig, Network, create_model

if TYPE_CHECKING:
    from clrobust.checkpoints.report import LoadReport

FORMAT = "clrobust-v1"


def _paths(path: Union[str, Path]) -> Tuple[Path, Path]:
    p = Path(path)
    stem = p.with_suffix("") if p.suffix in (".safetensors", ".json") else p
    return stem.with_name(stem.name + ".safetensors"), stem.with_name(stem.name + ".json")


def checkpoint_target(path: Union[str, Path], overwrite: bool, option: str = "OUT") -> Path:
    """Where a checkpoint will be written (``path`` without ``.safetensors``/``.json``), refusing
    one that would replace an existing weights or metadata file without ``overwrite``."""
    weights, meta_path = _paths(path)
    existing = [p for p in (weights, meta_path) if p.exists()]
    if existing and not overwrite:
        raise ClrobustError(f"{str(existing[0])!r} exists; choose another {option} or pass --overwrite.")
    return weights.with_suffix("")


def save_network(path: Union[str, Path], net: Network, metadata: Optional[Dict[str, Any]] = None,
                 half: bool = False) -> Path:
    """Write ``path.safetensors`` and ``path.json``; returns the weights path.

    Both are written beside their destination and moved into place, the metadata last,
    so a run killed meanwhile leaves no half-written checkpoint. ``half`` stores the floating-point
    tensors as float16 (half the size; loading upcasts them to the network's float32).
    """
    import os

    from safetensors.torch import save_file

    weights, meta_path = _paths(path)
    weights.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous().clone() for k, v in net.state_dict().items()}
    if half:
        state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    config = net.config.to_dict()
    meta = {"format": FORMAT, "model": config, **(metadata or {}), "storage": "float16" if half else "float32"}
    tmp_w, tmp_m = weights.with_name(f".{weights.name}.partial"), meta_path.with_name(f".{meta_path.name}.partial")
    try:
        save_file(state, str(tmp_w), metadata={"format": FORMAT, "model": json.dumps(config)})
        tmp_m.write_text(json.dumps(meta, indent=2, default=_json_default) + "\n")
        os.replace(tmp_w, weights)
        os.replace(tmp_m, meta_path)
    finally:
        tmp_w.unlink(missing_ok=True)
        tmp_m.unlink(missing_ok=True)
    return weights


def _json_default(o: Any) -> Any:
    if isinstance(o, torch.Tensor):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(type(o))


def read_metadata(path: Union[str, Path]) -> Dict[str, Any]:
    """The JSON beside a native checkpoint ({} when absent)."""
    _, meta_path = _paths(path)
    if not meta_path.exists():
        return {}
    try:
        return json.loads(meta_path.read_text())
    except json.JSONDecodeError as exc:
        raise ClrobustError(f"metadata file {str(meta_path)!r} is not valid JSON ({exc}); "
                            "restore it or delete it to load the weights alone.") from None


def is_native(path: Union[str, Path]) -> bool:
    weights, _ = _paths(path)
    if not weights.exists():
        return False
    try:
        from safetensors import safe_open

        with safe_open(str(weights), "pt") as f:
            return (f.metadata() or {}).get("format") == FORMAT
    except Exception:
        return False


def load_network(path: Union[str, Path], adversarial_bn: bool = False) -> Tuple[Network, Dict[str, Any]]:
    """Load a native checkpoint; returns the network (eval mode) and its metadata.

    With ``adversarial_bn`` a dual-BN checkpoint (CLAE) uses its adversarial
    batch-norm statistics instead of the clean ones.
    """
    from safetensors import SafetensorError, safe_open

    weights, _ = _paths(path)
    if not weights.exists():
        raise ClrobustError(f"checkpoint {str(path)!r} not found: give a zoo name "
                            "(see `clrobust zoo`) or the path of a .safetensors file.")
    where = f"checkpoint {str(weights)!r}"
    try:
        with safe_open(str(weights), "pt") as f:
            header = f.metadata() or {}
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
            if header.get("format") != FORMAT or "model" not in header:
                raise ClrobustError(f"{str(weights)!r} is a safetensors file but not a clrobust checkpoint "
                                    "(no model config in its header).")
            config = _header_config(header["model"], where)
            plan = plan_network(config, where)
            expected = {k: tuple(v.shape) for k, v in plan.state_dict().items()}
            if expected != shapes:
                difference = _shape_difference(expected, shapes)
                raise ClrobustError(f"{where} does not match its own model config ({difference}); "
                                    "the file is damaged.")
            state = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise ClrobustError(f"{where} is corrupt or not a safetensors file "
                            f"({' '.join(str(exc).split())}); re-download or re-train it.") from None
    net = create_model(config)
    net.load_state_dict(state)
    if adversarial_bn:
        _use_adversarial_bn(net, weights)
    net.eval()
    meta = read_metadata(weights)
    return net, meta


#: Memory a model's parameters and buffers may need before loading is refused (GiB); the
#: environment variable CLROBUST_MAX_MODEL_GB raises it.
MAX_MODEL_GB = 8.0


def _header_config(text: str, where: str) -> ModelConfig:
    """The model config of a native header, parsed and validated before anything is built."""
    try:
        raw = json.loads(text)
    except (json.JSONDecodeError, TypeError):
        raise ClrobustError(f"{where}: the model config in its header is not JSON; the file is damaged.") from None
    return ModelConfig.checked(raw, where)


def plan_network(config: ModelConfig, where: str) -> Network:
    """The network of ``config`` built on the meta device (no memory), after checking the memory
    its parameters and buffers would need against :data:`MAX_MODEL_GB`.

    Raises:
        ClrobustError: a config that cannot be built, or one above the limit.
    """
    import os

    with torch.device("meta"):
        plan = create_model(config)
    need = sum(t.numel() * t.element_size() for t in plan.state_dict().values()) / 2 ** 30
    try:
        limit = float(os.environ.get("CLROBUST_MAX_MODEL_GB", MAX_MODEL_GB))
    except ValueError:
        raise ClrobustError("CLROBUST_MAX_MODEL_GB is not a number; set it to a size in GiB.") from None
    if need > limit:
        raise ClrobustError(f"{where}: its model config ({config.arch}, width {config.width}) needs "
                            f"{need:.1f} GiB for its weights alone, above the {limit:g} GiB limit; set "
                            "CLROBUST_MAX_MODEL_GB to load it anyway.")
    return plan


def _shape_difference(expected: Dict[str, Tuple[int, ...]], found: Dict[str, Tuple[int, ...]]) -> str:
    missing = sorted(set(expected) - set(found))
    extra = sorted(set(found) - set(expected))
    if missing:
        return f"{len(missing)} tensor(s) missing, e.g. {missing[0]!r}"
    if extra:
        return f"{len(extra)} unexpected tensor(s), e.g. {extra[0]!r}"
    k = next(k for k in expected if expected[k] != found[k])
    return f"{k!r} has shape {list(found[k])}, the config needs {list(expected[k])}"


def _use_adversarial_bn(net: Network, weights: Path) -> None:
    from clrobust.models import DualBatchNorm2d

    duals = [m for m in net.modules() if isinstance(m, DualBatchNorm2d)]
    if not duals:
        raise ClrobustError(f"{str(weights)!r} has no adversarial batch-norm; drop --bn adversarial.")
    for m in duals:
        m.route_adversarial = True


def load_native(path: Union[str, Path], normalize: Optional[str] = None,
                adversarial_bn: Optional[bool] = None) -> Tuple[Network, Dict[str, Any], "LoadReport"]:
    """Load a native checkpoint with an optional normalisation override; (network, metadata, report).

    What the file says about itself is read from its metadata: whether its classifier
    is real (``has_classifier``; a converted head-less encoder has none), the format it
    was converted from (``source_format``) and, for dual-BN networks, the batch norm
    robustness is evaluated with (``robust_bn``, used when ``adversarial_bn`` is None).
    """
    from clrobust.checkpoints.report import LoadReport
    from clrobust.checkpoints.table import parse_normalize

    chosen = adversarial_bn
    net, meta = load_network(path)
    if adversarial_bn is None:
        adversarial_bn = meta.get("robust_bn", "clean") == "adversarial"
    if adversarial_bn:
        _use_adversarial_bn(net, _paths(path)[0])
    if normalize is not None:
        norm = parse_normalize(normalize)
        net.normalize.enabled = norm is not None
        if norm is not None:
            net.normalize.mean.copy_(torch.tensor(norm[0]).view(1, -1, 1, 1))
            net.normalize.std.copy_(torch.tensor(norm[1]).view(1, -1, 1, 1))
    c = net.config
    assert c.width is not None  # filled in ModelConfig.__post_init__
    origin = f"user (--normalize {normalize})" if normalize is not None else \
        meta.get("normalize", {}).get("origin", "clrobust checkpoint config")
    enabled = net.normalize.enabled
    info = {"mean": net.normalize.mean.flatten().tolist() if enabled else None,
            "std": net.normalize.std.flatten().tolist() if enabled else None, "origin": origin}
    source_format = str(meta.get("source_format", "clrobust"))
    report = LoadReport(
        path=str(path), format="clrobust",
        source="clrobust native (safetensors + json)" + (f", converted from {source_format}"
                                                         if source_format != "clrobust" else ""),
        arch=c.arch, width=c.width, stem=c.stem, num_classes=c.num_classes,
        params=sum(p.numel() for p in net.parameters()),
        encoder_params=sum(p.numel() for p in net.encoder.parameters()), container=None,
        has_classifier=bool(meta.get("has_classifier", True)), dual_bn=c.dual_bn, adversarial_bn=adversarial_bn,
        normalize=info)
    if c.dual_bn:
        report.notes.append(f"evaluated through the {'adversarial' if adversarial_bn else 'clean'} batch norm"
                            + (" (chosen by the user)" if chosen is not None else " (the file's default; --bn)"))
    return net, meta, report
