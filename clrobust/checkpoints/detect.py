"""Which third-party layout a state dict is in: the most specific entry of the format table that matches.

A format's conditions are its ``recognise`` key patterns, its ``top_keys`` and its
``reject`` patterns (see :mod:`clrobust.checkpoints.table`). A file that matches none
is refused with the closest formats by similarity.
"""

from __future__ import annotations

import re
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from clrobust.checkpoints.mapping import key_overlap
from clrobust.checkpoints.table import FORMATS, CheckpointFormat
from clrobust.errors import ClrobustError


def _conditions_met(fmt: CheckpointFormat, keys: Sequence[str], top: Sequence[str]) -> int:
    met = sum(any(re.search(p, k) for k in keys) for p in fmt.recognise) + sum(t in top for t in fmt.top_keys)
    if met:  # an absent key counts only beside a present one: no credit for unrelated files
        met += sum(not any(re.search(p, k) for k in keys) for p in fmt.reject)
    return met


def detect_format(state: Dict[str, torch.Tensor], top_keys: Sequence[str] = ()) -> CheckpointFormat:
    """The most specific format whose every condition holds (ties: earlier in the table).

    Args:
        state: the unwrapped state dict.
        top_keys: the file's top-level keys.

    Raises:
        ClrobustError: no format matches; the message lists the closest ones.
    """
    keys = list(state)
    best: Optional[CheckpointFormat] = None
    for fmt in FORMATS:
        if _conditions_met(fmt, keys, top_keys) == fmt.n_conditions:
            if best is None or fmt.n_conditions > best.n_conditions:
                best = fmt
    if best is not None:
        return best
    ranked = closest_formats(state, top_keys)
    hint = ", ".join(f"{name} ({score:.0%})" for name, score in ranked[:3])
    sample = ", ".join(keys[:4]) + (", ..." if len(keys) > 4 else "")
    raise ClrobustError(f"unrecognised checkpoint layout (keys: {sample}); closest known formats: {hint}; "
                        "pass --format NAME to force one, or add yours with "
                        "clrobust.checkpoints.register_format.")


def closest_formats(state: Dict[str, torch.Tensor], top_keys: Sequence[str] = ()) -> List[Tuple[str, float]]:
    """Every format with a similarity score in [0, 1]: conditions met and keys mapped onto encoder names."""
    keys = list(state)
    scores = []
    for fmt in FORMATS:
        cond = _conditions_met(fmt, keys, top_keys) / max(fmt.n_conditions, 1)
        scores.append((fmt.name, 0.5 * cond + 0.5 * key_overlap(fmt, state)))
    return sorted(scores, key=lambda s: -s[1])
