"""Multi-process runs under ``torchrun --nproc_per_node N`` (gloo on CPU, nccl on GPUs).

Work is split by *batch*: process ``rank`` takes batches ``rank, rank + N, ...`` of
the same global batching, and every batch keeps its global index (which seeds its
attack), so the union of the work equals the single-process run. Sums (HSIC terms,
counts, per-point results) are all-reduced; rank 0 writes the outputs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import torch


@dataclass
class Dist:
    rank: int
    world: int

    @classmethod
    def from_env(cls, device: str = "cpu") -> Optional["Dist"]:
        """A process group from torchrun's environment, or None for a single process."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return None
        import torch.distributed as td

        if not td.is_initialized():
            td.init_process_group("nccl" if device.startswith("cuda") else "gloo")
        return cls(td.get_rank(), td.get_world_size())

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def mine(self, index: int) -> bool:
        """Whether batch ``index`` (global) is this process's."""
        return index % self.world == self.rank

    def all_reduce(self, tensors: Sequence[torch.Tensor]) -> None:
        import torch.distributed as td

        for t in tensors:
            td.all_reduce(t)

    def all_reduce_cka(self, accs: Dict, entries: List) -> None:
        for e in entries:
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


def owns(dist: Optional[Dist], index: int) -> bool:
    return dist is None or dist.mine(index)
