"""``st-clean-vs-adv``: standard-trained CL, SCL and SL; CKA clean vs clean and clean vs adversarial."""

from __future__ import annotations

from typing import Any, ClassVar, Dict, List, Mapping, Optional, Sequence, Tuple

from clrobust.compare import CompareResult
from clrobust.figures.base import FigureResult, Role, draw_heatmaps, heatmap_panel

INPUT_TEXT = (("clean", "clean vs clean"), ("adversarial", "clean vs adversarial"))


def self_panels(pairs: Sequence[Tuple[Role, str]], labels: Mapping[str, str], results: CompareResult
                ) -> List[Dict[str, Any]]:
    """Per model: its clean-vs-clean and clean-vs-adversarial heatmaps."""
    panels = []
    for role, spec in pairs:
        label = labels[spec]
        for inp, text in INPUT_TEXT:
            panels.append(heatmap_panel(results, f"{role.key} ({label}): {text}", (label, "clean"), (label, inp))
                          | {"role": role.key, "input": inp})
    return panels


class StCleanVsAdv(FigureResult):
    FAMILY: ClassVar[str] = "st-clean-vs-adv"
    ROLES: ClassVar[List[Role]] = [Role("CL ST", "simclr-st", "CL", "ST"), Role("SCL ST", "supcon-st", "SCL", "ST"),
                                   Role("SL ST", "supervised-st", "SL", "ST")]

    @classmethod
    def specific(cls, pairs: Sequence[Tuple[Role, str]], labels: Mapping[str, str], results: CompareResult,
                 summary: Dict[str, Any], probes: Optional[Dict[str, Any]], context: str
                 ) -> Tuple[str, List[Dict[str, Any]], Dict[str, Any]]:
        title = f"Standard training: CKA clean vs clean and clean vs adversarial ({context})"
        return title, self_panels(pairs, labels, results), {}

    def draw(self) -> Any:
        from clrobust import plots

        roles = list(self.models)
        fig, axes = plots.new_figure(len(roles), 2, figsize=(10, 4.4 * len(roles)), squeeze=False)
        draw_heatmaps(self.panels, {(r, inp): axes[i, j] for i, r in enumerate(roles)
                                    for j, inp in enumerate(("clean", "adversarial"))})
        fig.suptitle(self.title, fontsize=10)
        fig.tight_layout()
        return fig
