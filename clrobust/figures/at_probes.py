"""``at-probes``: adversarially trained CL (AT, Full-AT); the self heatmaps with a linear probe per layer."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Dict, List, Mapping, Optional, Sequence, Tuple

from clrobust.compare import CompareResult
from clrobust.figures.base import FigureResult, Role, attack_text, draw_heatmaps
from clrobust.figures.st_clean_vs_adv import self_panels


@dataclass
class AtProbes(FigureResult):
    FAMILY: ClassVar[str] = "at-probes"
    ROLES: ClassVar[List[Role]] = [Role("CL AT", "simclr-at", "CL", "AT", 8 / 255),
                                   Role("CL Full-AT", "simclr-fat", "CL", "Full-AT", 8 / 255)]
    NEEDS_PROBES: ClassVar[bool] = True

    probes: Dict[str, Dict[str, Any]] = field(default_factory=dict)  # role key -> ProbeResult.to_dict()

    @classmethod
    def specific(cls, pairs: Sequence[Tuple[Role, str]], labels: Mapping[str, str], results: CompareResult,
                 summary: Dict[str, Any], probes: Optional[Dict[str, Any]], context: str
                 ) -> Tuple[str, List[Dict[str, Any]], Dict[str, Any]]:
        probes = probes or {}
        summary["probe_last_layer"] = {k: {"clean": p["clean_accuracy"][-1],
                                           "adversarial": p["adversarial_accuracy"][-1]} for k, p in probes.items()}
        title = f"Adversarial training (AT, Full-AT): CKA clean vs clean and clean vs adversarial ({context})"
        return title, self_panels(pairs, labels, results), {"probes": probes}

    def draw(self) -> Any:
        from clrobust import plots

        roles = list(self.models)
        n = len(roles)
        fig, axes = plots.new_figure(3, n, figsize=(5.2 * n, 13), squeeze=False,
                                     gridspec_kw={"height_ratios": [1, 1, 0.7]})
        draw_heatmaps(self.panels, {(r, inp): axes[i, j] for j, r in enumerate(roles)
                                    for i, inp in enumerate(("clean", "adversarial"))})
        for j, key in enumerate(roles):
            pr = self.probes.get(key)
            ax = axes[2, j]
            if pr is None:
                ax.set_axis_off()
                continue
            plots.probe_axes(ax, pr["layers"], {"train": pr["train_accuracy"], "clean": pr["clean_accuracy"],
                                                "adversarial": pr["adversarial_accuracy"]},
                             f"{key}: linear probe per layer\n{attack_text(pr['attack'])}, "
                             f"fit on {pr['n_train']} train images (bands: 95% Wilson)", chance=1.0 / pr["n_classes"],
                             bands={"clean": pr.get("clean_ci", []), "adversarial": pr.get("adversarial_ci", [])})
        fig.suptitle(self.title, fontsize=10)
        fig.tight_layout()
        if self.probes:
            fig.text(0.5, 0.003, "probe features: " + next(iter(self.probes.values()))["pooling"],
                     ha="center", va="bottom", fontsize=7)
        return fig
