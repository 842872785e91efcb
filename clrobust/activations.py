"""The one activations stage: batch by batch, for every model, clean and adversarial inputs, logits and layers.

Every job that needs a model's outputs on a data set (compare-layers, probe-layers,
audit, the robustness report of training) reads them from :func:`batches`, so they
share one rule for each of these:

* **batching**: :func:`batch_plan`: batches of ``batch_size`` in data order; a last
  batch smaller than 4 images is folded into the one before it (unbiased HSIC needs 4);
* **attack seeds**: each batch's adversarial inputs are crafted against each model
  with :func:`~clrobust.attacks.attack_batch` seeded by the batch's *global* index;
* **sharding**: under torchrun, process ``rank`` takes batches ``rank, rank + N, ...``
  of the same global plan, so the union of the work is the single-process run;
* **recording**: one forward pass per model and input records every chosen layer
  (:class:`~clrobust.hooks.LayerRecorder`, copies when the model computes in place)
  and gives the logits of that same pass.

Recordings are produced lazily, one model and input at a time, so a consumer holds
one recording in memory, not every model's.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import nn
from tqdm.auto import tqdm

from clrobust.attacks import AttackSpec, attack_batch, attack_batch_images, attack_batches
from clrobust.cka import batch_bounds
from clrobust.data import ImageData, to_float
from clrobust.distributed import Dist, owns
from clrobust.errors import ClrobustError
from clrobust.hooks import LayerRecorder
from clrobust.recordings import RecordingCache

#: The inputs a model can be recorded on: the images, the attack's, and the attack's random-noise control
#: (same eps and norm, the same noise for every model).
INPUTS = ("clean", "adversarial", "noise")
#: A last batch smaller than this is folded into the previous one.
MIN_BATCH = 4
#: How layer maps are reduced where a job keeps features of every image (probes, full-batch measures).
POOL_SIZE = 2
POOLING = f"adaptive average pool of conv maps to {POOL_SIZE}x{POOL_SIZE}, then flatten"


def pool_flatten(act: torch.Tensor, size: int = POOL_SIZE) -> torch.Tensor:
    """(N, C, H, W) maps -> adaptive average pool to ``size`` x ``size`` -> (N, C*size*size); (N, D) unchanged."""
    if act.dim() == 4:
        act = torch.nn.functional.adaptive_avg_pool2d(act, size)
    return act.reshape(act.shape[0], -1)


def batch_plan(n: int, batch_size: int) -> List[Tuple[int, int]]:
    """(start, stop) of every batch over ``n`` images: the one batching rule of every job."""
    if n < MIN_BATCH:
        return [(0, n)] if n else []
    return batch_bounds(n, batch_size, MIN_BATCH)


@dataclass
class Recording:
    """One model on one input of one batch."""

    model: str
    input: str
    inputs: torch.Tensor
    layers: Dict[str, torch.Tensor]
    logits: torch.Tensor


@dataclass
class Batch:
    """A batch of the plan: its global index, images in [0, 1], labels, and its recordings (lazy)."""

    index: int
    start: int
    x: torch.Tensor
    y: torch.Tensor
    recordings: Iterator[Recording]


class Stage:
    """Record ``models`` (label -> network in eval mode) on the clean and adversarial versions of a data set.

    Args:
        models: label -> network; each is attacked and recorded on its own.
        layers: label -> layer names to record (missing or empty: logits only).
        attack: the attack crafted against each model for the ``adversarial`` input.
        device: where images go.
        adv_source: a label of ``models``: craft the adversarial inputs against that model only and
            feed them to every model (shared inputs, so cross-model comparisons see the same images);
            None: each model gets its own.
    """

    def __init__(self, models: Mapping[str, nn.Module], layers: Optional[Mapping[str, Sequence[str]]] = None,
                 attack: Optional[AttackSpec] = None, device: str = "cpu", adv_source: Optional[str] = None,
                 cache: Optional[RecordingCache] = None) -> None:
        self.models = dict(models)
        self.layers = {lab: list((layers or {}).get(lab, [])) for lab in self.models}
        self.attack = attack
        self.device = device
        if adv_source is not None and adv_source not in self.models:
            raise ClrobustError(f"--adv-source {adv_source!r} is not one of the models ({', '.join(self.models)}).")
        self.adv_source = adv_source
        self.cache = cache
        self.timings = {"attack": 0.0, "forward": 0.0}

    def batches(self, data: ImageData, batch_size: int, inputs: Sequence[str] = ("clean", "adversarial"),
                dist: Optional[Dist] = None, progress: bool = False, desc: str = "batches",
                leave: bool = False) -> Iterator[Batch]:
        """The batches this process owns, each with its recordings for every model and input (in that order)."""
        unknown = [i for i in inputs if i not in INPUTS]
        if unknown:
            raise ValueError(f"unknown input {unknown[0]!r}; use {INPUTS}")
        if ("adversarial" in inputs or "noise" in inputs) and self.attack is None:
            raise ValueError("adversarial and noise inputs need an attack")
        plan = [(i, b) for i, b in enumerate(batch_plan(len(data), batch_size)) if owns(dist, i)]
        per_call = 1  # recording batches per attack call
        if "adversarial" in inputs and self.attack is not None and not self.attack.batch_coupled:
            images = attack_batch_images(self.attack, batch_size, self.device, int(data.images.shape[-1]))
            per_call = max(1, images // batch_size)
        recorders = {lab: LayerRecorder(net, self.layers[lab]) for lab, net in self.models.items()}
        bar = tqdm(total=sum(hi - lo for _, (lo, hi) in plan), desc=desc, disable=not progress, unit="img",
                   leave=leave)
        try:
            for r in recorders.values():
                r.__enter__()
            for g in range(0, len(plan), per_call):
                group = plan[g:g + per_call]
                xs = [to_float(data.images[lo:hi]).to(self.device) for _, (lo, hi) in group]
                ys = [data.labels[lo:hi].to(self.device) for _, (lo, hi) in group]
                uncached = self._uncached([i for i, _ in group])
                crafted = self._craft([i for i, _ in group], xs, ys, uncached) if per_call > 1 and uncached else None
                for k, (index, (lo, hi)) in enumerate(group):
                    adv = {lab: c[k] for lab, c in crafted.items()} if crafted is not None else None
                    yield Batch(index, lo, xs[k], ys[k], self._recordings(recorders, index, xs[k], ys[k], inputs, adv))
                    bar.update(hi - lo)
        finally:
            bar.close()
            for r in recorders.values():
                r.remove()

    def _uncached(self, indices: Sequence[int]) -> List[str]:
        """The models whose adversarial examples for these batches the cache lacks (all without a cache)."""
        return [lab for lab in self.models
                if self.cache is None or not all(self.cache.has(lab, "adversarial", i) for i in indices)]

    def _craft(self, indices: List[int], xs: List[torch.Tensor], ys: List[torch.Tensor], only: Sequence[str]
               ) -> Dict[str, List[torch.Tensor]]:
        """The adversarial batches of a group (or of one batch) for the models ``only`` names, each model's in one
        attack call (:func:`~clrobust.attacks.attack_batches`); with ``adv_source``, that model's, shared. Each
        call is seeded by its batches' indices, so a model's examples do not depend on which others are crafted."""
        attack = self.attack
        assert attack is not None

        def craft(net: nn.Module) -> List[torch.Tensor]:
            if len(xs) == 1:
                return [attack_batch(attack, net, xs[0], ys[0], batch_index=indices[0])]
            return attack_batches(attack, net, xs, ys, indices)

        t = time.perf_counter()
        if self.adv_source is not None:
            shared = craft(self.models[self.adv_source])
            out = {lab: shared for lab in only}
        else:
            out = {lab: craft(self.models[lab]) for lab in only}
        self.timings["attack"] += elapsed_since(t, xs[0].device)
        return out

    def _recordings(self, recorders: Dict[str, LayerRecorder], index: int, x: torch.Tensor, y: torch.Tensor,
                    inputs: Sequence[str], crafted: Optional[Dict[str, torch.Tensor]] = None
                    ) -> Iterator[Recording]:
        for lab, net in self.models.items():
            for inp in inputs:
                hit = self.cache.get(lab, inp, index) if self.cache is not None else None
                if hit is not None:
                    check_finite(lab, inp, index, hit["logits"])
                    yield Recording(lab, inp, hit["inputs"].to(x.device), hit["layers"], hit["logits"].to(x.device))
                    continue
                xi = x
                if inp == "adversarial":
                    if crafted is None or lab not in crafted:  # this batch alone: the examples of every model
                        # whose cache lacks them (or adv_source's), this one's too (its file may be unreadable)
                        lacking = set(self._uncached([index])) | {lab}
                        need = [m for m in self.models if m in lacking and m not in (crafted or {})]
                        crafted = {**(crafted or {}),
                                   **{m: c[0] for m, c in self._craft([index], [x], [y], need).items()}}
                    xi = crafted[lab]
                elif inp == "noise":
                    assert self.attack is not None
                    xi = attack_batch(self.attack.noise(), net, x, y, batch_index=index)
                t = time.perf_counter()
                try:
                    acts = recorders[lab].record(xi)
                except ClrobustError as exc:  # non-finite activations: say which model
                    raise ClrobustError(f"model {lab}, {inp} inputs: {exc}") from None
                output = recorders[lab].output
                assert output is not None  # set by record()
                self.timings["forward"] += elapsed_since(t, output.device)
                check_finite(lab, inp, index, output)
                if self.cache is not None:
                    self.cache.put(lab, inp, index, xi, output, acts)
                yield Recording(lab, inp, xi, acts, output)


def elapsed_since(start: float, device: torch.device) -> float:
    """Seconds since ``start`` (a ``time.perf_counter()``) once ``device`` has done its queued work: CUDA runs
    asynchronously, so without waiting a stage's GPU time is charged to whichever stage next reads a result."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def check_finite(model: str, inp: str, index: int, logits: torch.Tensor) -> None:
    """No number from non-finite values: NaN or Inf in the logits stops the job, named (the recorder checks
    every recorded layer the same way)."""
    if not bool(torch.isfinite(logits).all()):
        raise ClrobustError(f"model {model}, {inp} inputs: NaN or Inf in the logits (batch {index}); "
                            "the weights or inputs are broken; check them with `clrobust inspect`.")
