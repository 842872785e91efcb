"""Architectures by name (one registry) and the factory that builds a :class:`Network`."""

from __future__ import annotations

from torch import nn

from clrobust.models.network import ModelConfig, Network, Normalize, ProjectionHead, fast_layout, prefers_channels_last
from clrobust.models.norm import DualBatchNorm2d, adversarial_bn, has_dual_bn
from clrobust.models.preact_resnet import PreActBlock, PreActResNet, PreActStem
from clrobust.models.registry import ARCHITECTURES, architecture, default_width, known_architectures
from clrobust.models.resnet import BasicBlock, Bottleneck, GlobalPool, ResNet, Stem, resnet18, resnet34, resnet50

#: Module types of the ``all`` layer set (besides convs, batch norms and activations).
LAYER_TYPES = (BasicBlock, Bottleneck, Stem, PreActBlock, PreActStem, GlobalPool)


def build_encoder(config: ModelConfig) -> nn.Module:
    """The encoder of ``config.arch`` at ``config.width``.

    Raises:
        ClrobustError: unknown architecture, or a stem it does not have.
    """
    return architecture(config.arch)(config.width, stem=config.stem, dual_bn=config.dual_bn)


def create_model(config: ModelConfig) -> Network:
    """Build a freshly initialised network from its config."""
    return Network(config, build_encoder(config))


__all__ = [
    "ARCHITECTURES", "DualBatchNorm2d", "LAYER_TYPES", "ModelConfig", "Network", "Normalize", "PreActResNet",
    "ProjectionHead", "ResNet", "adversarial_bn", "architecture", "build_encoder", "create_model",
    "default_width", "fast_layout", "has_dual_bn", "known_architectures", "prefers_channels_last", "resnet18",
    "resnet34", "resnet50",
]
