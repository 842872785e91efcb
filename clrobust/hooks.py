"""Record layer outputs through forward hooks: every chosen layer in one forward pass.

Layer names are those of ``network.encoder.named_modules()`` (e.g. ``stem``,
``layer3.1``, ``layer3.1.bn2``, ``avgpool``). Layer sets:

* ``blocks`` (default): the stem, every residual block, the pooled feature;
* ``all``: every conv, batch-norm, activation (ReLU, SiLU) and block output, and the pooled feature;
* glob patterns, comma-separated: ``layer4.*``, ``stem,layer*.?``.
"""

from __future__ import annotations

import fnmatch
from typing import Callable, Dict, List, Optional, Sequence, Union, cast

import torch
from torch import nn

from clrobust.cka import all_finite
from clrobust.errors import ClrobustError
from clrobust.models import LAYER_TYPES

LAYER_SETS = ("blocks", "all")
_ALL_TYPES = (nn.Conv2d, nn.modules.batchnorm._BatchNorm, nn.ReLU, nn.SiLU) + LAYER_TYPES


def _encoder(model: nn.Module) -> nn.Module:
    return getattr(model, "encoder", model)


def layer_names(model: nn.Module, layers: Union[str, Sequence[str]] = "blocks") -> List[str]:
    """Resolve a layer set or glob patterns to module names, in forward (execution) order.

    Raises:
        ClrobustError: no pattern, or a pattern that matches no module (the message lists valid names).
    """
    enc = _encoder(model)
    modules = dict(enc.named_modules())
    del modules[""]
    candidates = [n for n, m in modules.items() if isinstance(m, _ALL_TYPES)]
    if isinstance(layers, str):
        if layers == "blocks":
            if not hasattr(enc, "block_names"):
                raise ClrobustError("layer set 'blocks' needs a clrobust encoder (ResNet, PreActResNet, WRN); "
                                    "give glob patterns.")
            return list(cast(Callable[[], List[str]], enc.block_names)())
        if layers == "all":
            return execution_order(model, candidates)
        patterns = [p.strip() for p in layers.split(",") if p.strip()]
    else:
        patterns = [p for p in layers if p.strip()]
    if not patterns:
        raise ClrobustError("no layers given (--layers is empty); use blocks, all, or comma-separated names or "
                            "glob patterns such as 'layer3.*,avgpool'.")
    chosen: List[str] = []
    for pat in patterns:
        hits = [n for n in modules if fnmatch.fnmatchcase(n, pat)]
        if not hits:
            raise ClrobustError(f"layer {pat!r} matches no module; valid names: "
                                f"{_summarise(list(modules))} (or the sets: blocks, all).")
        chosen += [h for h in hits if h not in chosen]
    return execution_order(model, chosen)


def _summarise(names: List[str], limit: int = 40) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names)} in all; see `clrobust inspect`)" if len(names) > limit else "")


def execution_order(model: nn.Module, names: Sequence[str]) -> List[str]:
    """Sort module names by when their output is produced in a forward pass."""
    order: List[str] = []
    enc = _encoder(model)
    modules = dict(enc.named_modules())
    handles = [modules[n].register_forward_hook(lambda m, i, o, n=n: order.append(n)) for n in names]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            side = int(getattr(getattr(model, "config", None), "extra", {}).get("input_size", 32))
            model(torch.zeros(2, 3, side, side, device=_device(model)))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    seen: List[str] = []
    for n in order:
        if n not in seen:
            seen.append(n)
    return seen + [n for n in names if n not in seen]


def _device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


class LayerRecorder:
    """Forward hooks on named modules of a model's encoder; use as a context manager.

    >>> with LayerRecorder(net, ["stem", "avgpool"]) as rec:
    ...     acts = rec.record(images)       # {name: (N, ...) tensor}

    Hooks are removed on exit, errors included. A module that runs twice in one
    forward pass, a layer that produced nothing and non-finite values are errors.
    Each output is stored as a copy, so an in-place operation later in the forward
    pass (a torchvision ResNet's ``ReLU(inplace=True)`` or ``out += identity``)
    cannot change what was recorded. An empty layer list records nothing and only
    keeps the output.
    """

    def __init__(self, model: nn.Module, layers: Union[str, Sequence[str]] = "blocks"):
        self.model = model
        self.names = layer_names(model, layers) if isinstance(layers, str) else list(layers)
        modules = dict(_encoder(model).named_modules())
        missing = [n for n in self.names if n not in modules]
        if missing:
            raise ClrobustError(f"layer {missing[0]!r} does not exist; valid names: {_summarise(list(modules)[1:])}.")
        self._modules = [modules[n] for n in self.names]
        self._active = False
        self._handles: List[torch.utils.hooks.RemovableHandle] = []
        self._out: Dict[str, torch.Tensor] = {}
        self._calls: Dict[str, int] = {}
        self.output: Optional[torch.Tensor] = None

    def __enter__(self) -> "LayerRecorder":
        for name, mod in zip(self.names, self._modules):
            self._handles.append(mod.register_forward_hook(self._hook(name)))
        self._active = True
        return self

    def __exit__(self, *exc) -> None:
        self.remove()

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self._out.clear()
        self._active = False

    def _hook(self, name: str):
        def hook(module: nn.Module, inputs, output) -> None:
            self._calls[name] = self._calls.get(name, 0) + 1
            if isinstance(output, (tuple, list)):
                output = output[0]
            self._out[name] = output.detach().clone()
        return hook

    def record(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        """One forward pass (no grad, eval mode); returns every layer's output, in layer order.

        The model's own output of that pass (logits for a clrobust Network) is kept
        in ``self.output``, so callers need no second pass for predictions.
        """
        if not self._active:
            raise RuntimeError("LayerRecorder.record() outside its `with` block")
        self._out, self._calls = {}, {}
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                self.output = self.model(x)
        finally:
            self.model.train(was_training)
        twice = [n for n, c in self._calls.items() if c > 1]
        if twice:
            raise ClrobustError(f"module {twice[0]!r} runs {self._calls[twice[0]]} times per forward pass, "
                                "so its hook cannot tell the calls apart; record its parent block instead.")
        silent = [n for n in self.names if n not in self._out]
        if silent:
            raise ClrobustError(f"layer {silent[0]!r} produced no output in the forward pass; "
                                "it is not on the path from input to features.")
        out = {n: self._out[n] for n in self.names}
        for n, t in out.items():
            if not all_finite(t):
                raise ClrobustError(f"layer {n!r} produced NaN or infinite activations; the checkpoint "
                                    "or the input normalisation is broken (check --normalize).")
        self._out = {}
        return out


def record(model: nn.Module, x: torch.Tensor, layers: Union[str, Sequence[str]] = "blocks",
           names: Optional[List[str]] = None) -> Dict[str, torch.Tensor]:
    """One-shot convenience: register, record one batch, remove."""
    with LayerRecorder(model, names or layers) as rec:
        return rec.record(x)
