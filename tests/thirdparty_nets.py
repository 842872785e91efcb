"""Helpers for tests that write third-party state dicts and check them against functional forwards."""

from __future__ import annotations

from typing import Dict

import torch
import torch.nn.functional as F

SD = Dict[str, torch.Tensor]


def rand_conv(sd: SD, name: str, out: int, inp: int, k: int, g: torch.Generator) -> None:
    """A bias-free ``k`` x ``k`` conv weight under ``name``, He-scaled random values."""
    sd[f"{name}.weight"] = torch.randn(out, inp, k, k, generator=g) * (2.0 / (k * k * inp)) ** 0.5


def rand_bn(sd: SD, name: str, c: int, g: torch.Generator) -> None:
    """A batch norm's affine parameters and running statistics under ``name``, random but well scaled."""
    sd[f"{name}.weight"] = 0.5 + torch.rand(c, generator=g)
    sd[f"{name}.bias"] = 0.2 * torch.randn(c, generator=g)
    sd[f"{name}.running_mean"] = 0.3 * torch.randn(c, generator=g)
    sd[f"{name}.running_var"] = 0.5 + 1.5 * torch.rand(c, generator=g)
    sd[f"{name}.num_batches_tracked"] = torch.tensor(7)


def bn_eval(sd: SD, name: str, x: torch.Tensor) -> torch.Tensor:
    """Eval-mode batch norm of ``x`` with the tensors stored under ``name`` (eps 1e-5)."""
    return F.batch_norm(x, sd[f"{name}.running_mean"], sd[f"{name}.running_var"], sd[f"{name}.weight"],
                        sd[f"{name}.bias"], training=False, eps=1e-5)


def logits(net, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return net(x)


def close(a: torch.Tensor, b: torch.Tensor) -> None:
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
