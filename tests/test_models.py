"""The network definitions (:mod:`clrobust.models.network`): the memory-layout rule that every job's nets follow."""

from __future__ import annotations

import torch
from torch import nn


def test_narrow_nets_keep_the_default_layout_that_onednn_handles() -> None:
    """Channels-last on a CPU only where oneDNN handles every convolution: its weight gradient of a strided 1x1
    convolution on channels-last input with fewer input channels than its block (8 with AVX2, 16 with AVX-512)
    hangs or gives wrong gradients (a width-4 ResNet's shortcut hung here). The rule holds under bf16 autocast
    on a CPU too; on a GPU every net is channels-last under bf16 autocast and keeps PyTorch's layout in fp32."""
    from clrobust.models import ModelConfig, create_model, fast_layout, prefers_channels_last

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    w4, w8, w16 = (create_model(ModelConfig(arch="resnet18", width=w, num_classes=10)) for w in (4, 8, 16))
    assert not prefers_channels_last(w4, cpu) and not prefers_channels_last(w8, cpu)  # 4 and 8 in a shortcut
    assert prefers_channels_last(w16, cpu) and prefers_channels_last(w16, cpu, amp=True)
    assert not prefers_channels_last(w4, cpu, amp=True)
    assert prefers_channels_last(w4, cuda, amp=True) and not prefers_channels_last(w16, cuda)
    conv = next(m for m in fast_layout(w4, cpu).modules() if isinstance(m, nn.Conv2d))
    assert conv.weight.is_contiguous()

    def single(*args: int) -> bool:
        return prefers_channels_last(nn.Conv2d(*args), cpu)

    assert single(3, 16, 4, 4) and single(3, 64, 7, 2) and single(16, 32, 1, 2) and single(8, 8, 1, 1)
    assert not single(8, 16, 1, 2) and not single(3, 6, 1, 2) and not single(12, 12, 3, 1)
