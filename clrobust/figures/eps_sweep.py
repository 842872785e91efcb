"""``eps-sweep``: disparity curves over depth for training eps 2/255, 8/255, 16/255 (and ST)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Dict, List, Mapping, Optional, Sequence, Tuple

from clrobust.compare import CompareResult
from clrobust.figures.base import FigureResult, Role


@dataclass
class EpsSweep(FigureResult):
    FAMILY: ClassVar[str] = "eps-sweep"
    ROLES: ClassVar[List[Role]] = [Role("AT eps 2/255", "simclr-at-eps2", "CL", "AT", 2 / 255),
                                   Role("AT eps 8/255", "simclr-at", "CL", "AT", 8 / 255),
                                   Role("AT eps 16/255", "simclr-at-eps16", "CL", "AT", 16 / 255),
                                   Role("ST", "simclr-st", "CL", "ST", 0.0)]

    curves: Dict[str, Any] = field(default_factory=dict)  # disparity, layers and legend by role key

    @classmethod
    def specific(cls, pairs: Sequence[Tuple[Role, str]], labels: Mapping[str, str], results: CompareResult,
                 summary: Dict[str, Any], probes: Optional[Dict[str, Any]], context: str
                 ) -> Tuple[str, List[Dict[str, Any]], Dict[str, Any]]:
        keys = {r.key: labels[spec] for r, spec in pairs}
        curves = {"disparity": {k: results.disparity[lab] for k, lab in keys.items()},
                  "layers": {k: results.layers[lab] for k, lab in keys.items()},
                  "legend": {k: f"{k}: {lab} (robust acc {results.accuracy[lab]['robust']:.1%})"
                             for k, lab in keys.items()},
                  "bands": {k: results.disparity_ci[lab] for k, lab in keys.items() if lab in results.disparity_ci}}
        title = f"Clean vs adversarial disparity over depth by training eps ({context})"
        if curves["bands"]:
            title += "\nbands: 95% bootstrap intervals over images"
        return title, [], {"curves": curves}

    def draw(self) -> Any:
        from clrobust import plots

        fig, ax = plots.new_figure(figsize=(8, 4.8))
        c = self.curves
        plots.disparity_axes(ax, c["disparity"], c["layers"], self.title, c["legend"], c.get("bands"))
        fig.tight_layout()
        return fig
