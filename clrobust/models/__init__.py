"""Architectures by name (one registry) and the factory that builds a :class:`Network`."""

from __future__ import annotations

from typing import Callable, Dict

from clrobust.errors import ClrobustError
from clrobust.models.network import ModelConfig, Network, Normalize, ProjectionHead
from clrobust.models.norm import DualBatchNorm2d, adversarial_bn, has_dual_bn
from clrobust.models.resnet import ResNet, resnet18, resnet34, resnet50

ARCHITECTURES: Dict[str, Callable[..., ResNet]] = {
    "resnet18": resnet18,
    "resnet34": resnet34,
    "resnet50": resnet50,
}


def build_encoder(config: ModelConfig) -> ResNet:
    try:
        factory = ARCHITECTURES[config.arch]
    except KeyError:
        raise ClrobustError(f"unknown architecture {config.arch!r}; known: "
                            f"{', '.join(sorted(ARCHITECTURES))}.") from None
    return factory(config.width, stem=config.stem, dual_bn=config.dual_bn)


def create_model(config: ModelConfig) -> Network:
    """Build a freshly initialised network from its config."""
    return Network(config, build_encoder(config))


__all__ = [
    "ARCHITECTURES", "DualBatchNorm2d", "ModelConfig", "Network", "Normalize", "ProjectionHead",
    "ResNet", "adversarial_bn", "build_encoder", "create_model", "has_dual_bn",
]
