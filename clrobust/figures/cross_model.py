"""``cross-model``: CKA between CL and SL layers on adversarial inputs, ST pair next to AT pair."""

from __future__ import annotations

from typing import Any, ClassVar, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from clrobust.compare import CompareResult
from clrobust.figures.base import FigureResult, Role, draw_heatmaps, heatmap_panel


class CrossModel(FigureResult):
    FAMILY: ClassVar[str] = "cross-model"
    ROLES: ClassVar[List[Role]] = [Role("CL ST", "simclr-st", "CL", "ST"), Role("SL ST", "supervised-st", "SL", "ST"),
                                   Role("CL AT", "simclr-at", "CL", "AT", 8 / 255),
                                   Role("SL AT", "supervised-at", "SL", "AT", 8 / 255)]

    @classmethod
    def specific(cls, pairs: Sequence[Tuple[Role, str]], labels: Mapping[str, str], results: CompareResult,
                 summary: Dict[str, Any], probes: Optional[Dict[str, Any]], context: str
                 ) -> Tuple[str, List[Dict[str, Any]], Dict[str, Any]]:
        keys = [r.key for r, _ in pairs]
        panels, cm = [], {}
        for tr, (a, b) in (("ST", (0, 1)), ("AT", (2, 3))):
            la, lb = labels[pairs[a][1]], labels[pairs[b][1]]
            p = heatmap_panel(results, f"{tr}: {keys[a]} ({la}) vs {keys[b]} ({lb}), adversarial inputs",
                              (la, "adversarial"), (lb, "adversarial"))
            p["training"] = tr
            panels.append(p)
            m = np.asarray(p["matrix"])
            cm[tr] = {"mean": float(m.mean()),
                      "diagonal_mean": float(np.diag(m).mean()) if m.shape[0] == m.shape[1] else None}
        summary["cross_model_cka"] = cm
        summary["cross_model_cka_definition"] = "mean entry of the adversarial-vs-adversarial cross-model heatmap"
        return f"Cross-model CKA (CL vs SL) on adversarial inputs, ST vs AT ({context})", panels, {}

    def draw(self) -> Any:
        from clrobust import plots

        fig, axes = plots.new_figure(1, 2, figsize=(11, 5.2), squeeze=False)
        draw_heatmaps(self.panels, {(tr, ""): ax for tr, ax in zip(("ST", "AT"), axes[0])},
                      inputs=("adversarial", "adversarial"))
        fig.suptitle(self.title, fontsize=10)
        fig.tight_layout()
        return fig

    def summary_line(self) -> str:
        cm = self.summary["cross_model_cka"]
        return (super().summary_line() +
                f"\n{self.family}: mean cross-model CKA ST {cm['ST']['mean']:.3f}, AT {cm['AT']['mean']:.3f}")
