"""Multi-process runs under ``torchrun --nproc_per_node N`` (gloo on CPU, nccl on GPUs).

Work is split by *batch*: process ``rank`` takes batches ``rank, rank + N, ...`` of
the same global batching, and every batch keeps its global index (which seeds its
attack), so the union of the work equals the single-process run. Sums (HSIC terms,
counts, per-point results) are all-reduced; rank 0 writes the outputs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, cast

import torch


@dataclass
class Dist:
    rank: int
    world: int
    #: Where this rank computes and where its collectives run (NCCL needs tensors on the rank's GPU).
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @classmethod
    def from_env(cls, device: str = "cpu") -> Optional["Dist"]:
        """A process group from torchrun's environment, or None for a single process.

        With ``device`` ``cuda``, each rank takes the GPU of its ``LOCAL_RANK`` and NCCL;
        otherwise gloo on the CPU.
        """
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return None
        import torch.distributed as td

        dev = rank_device(device, int(os.environ.get("LOCAL_RANK", "0")))
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        if not td.is_initialized():
            td.init_process_group("nccl" if dev.type == "cuda" else "gloo")
        return cls(td.get_rank(), td.get_world_size(), dev)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def mine(self, index: int) -> bool:
        """Whether batch ``index`` (global) is this process's."""
        return index % self.world == self.rank

    def all_reduce(self, tensors: Sequence[torch.Tensor], op: str = "sum") -> None:
        """Sum (or ``op="max"``) each tensor over the processes, in place; the collective runs on
        this rank's device."""
        import torch.distributed as td

        reduce_op = td.ReduceOp.MAX if op == "max" else td.ReduceOp.SUM
        for t in tensors:
            buf = t.to(self.device)
            td.all_reduce(buf, op=reduce_op)
            if buf is not t:
                t.copy_(buf.to(t.device))

    def all_reduce_cka(self, accs: Dict, entries: List) -> None:
        """Sum every metric's running sums over the processes, after aligning their reference
        exponents to the largest any process holds."""
        for e in entries:
            exponents = [t.clone() for t in accs[e].exponents() if t is not None]
            self.all_reduce(exponents, op="max")
            accs[e].align(exponents)
            self.all_reduce([t for t in accs[e].state() if t is not None])

    def all_reduce_counts(self, counts: Dict[str, Dict[str, int]]) -> None:
        keys = [(a, b) for a in counts for b in counts[a]]
        t = torch.tensor([counts[a][b] for a, b in keys], dtype=torch.int64)
        self.all_reduce([t])
        for (a, b), v in zip(keys, t.tolist()):
            counts[a][b] = int(v)

    def barrier(self) -> None:
        import torch.distributed as td

        td.barrier()


class _SumWithGradient(torch.autograd.Function):
    """All-reduce sum whose backward is the all-reduce sum of the gradients: every process's loss reaches
    every process's inputs, as when one process computes the whole batch."""

    @staticmethod
    def forward(ctx, t: torch.Tensor) -> torch.Tensor:
        import torch.distributed as td

        out = t.clone(memory_format=torch.contiguous_format)
        td.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        import torch.distributed as td

        out = grad.clone(memory_format=torch.contiguous_format)
        td.all_reduce(out)
        return out


def sum_with_gradient(t: torch.Tensor) -> torch.Tensor:
    """The sum of ``t`` over the processes, differentiable (see :class:`_SumWithGradient`)."""
    return cast(torch.Tensor, _SumWithGradient.apply(t))


def rank_device(device: str, local_rank: int) -> torch.device:
    """The device of one rank: a bare ``cuda`` means the GPU of the rank's ``LOCAL_RANK``."""
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None:
        return torch.device("cuda", local_rank)
    return dev


def owns(dist: Optional[Dist], index: int) -> bool:
    return dist is None or dist.mine(index)
