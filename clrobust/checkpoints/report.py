"""What loading a checkpoint found and did: the :class:`LoadReport` that ``inspect`` prints and results record."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional


@dataclass
class LoadReport:
    """What :func:`load_checkpoint` found and did."""

    path: str
    format: str
    source: str
    arch: str
    width: int
    stem: str
    num_classes: int
    params: int
    encoder_params: int
    container: Optional[str]
    has_classifier: bool
    dual_bn: bool
    adversarial_bn: bool
    normalize: Dict[str, Any]
    dropped: List[str] = field(default_factory=list)
    missing: List[str] = field(default_factory=list)
    unexpected: List[str] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)
