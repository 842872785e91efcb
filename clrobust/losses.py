"""Contrastive losses, vectorised: NT-Xent (SimCLR) and SupCon (Khosla et al. 2020).

Used by training and by the label-free representation attack, so they live below both.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.5) -> torch.Tensor:
    """NT-Xent over a batch of positive pairs ``(z1[i], z2[i])``.

    Every other embedding of the 2N in the batch is a negative; the loss is the
    mean over all 2N anchors.
    """
    n = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    sim = z @ z.t() / temperature
    sim = sim.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(sim, target)


def supcon(z1: torch.Tensor, z2: torch.Tensor, labels: Optional[torch.Tensor],
           temperature: float = 0.1) -> torch.Tensor:
    """Supervised contrastive loss (the "L_out" form) over two views per image.

    Positives of an anchor are every other embedding with the same label (both
    views); with ``labels=None`` it reduces to NT-Xent.
    """
    n = z1.shape[0]
    if labels is None:
        labels = torch.arange(n, device=z1.device)
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    lab = torch.cat([labels, labels])
    self_mask = torch.eye(2 * n, dtype=torch.bool, device=z.device)
    sim = (z @ z.t() / temperature).masked_fill(self_mask, float("-inf"))
    log_prob = sim - torch.logsumexp(sim, dim=1, keepdim=True)
    pos = (lab[:, None] == lab[None, :]) & ~self_mask
    mean_log_prob_pos = log_prob.masked_fill(~pos, 0.0).sum(1) / pos.sum(1)
    return -mean_log_prob_pos.mean()
