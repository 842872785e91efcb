"""What every figure family shares: roles, settings, the summary numbers and the result type."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar, Dict, List, Mapping, Optional, Sequence, Tuple, Type, Union

import numpy as np

from clrobust.attacks import AttackSpec, format_eps
from clrobust.checkpoints import LoadOptions
from clrobust.cka import early_mean, late_mean
from clrobust.compare import CompareResult
from clrobust.data import SampledDataOptions, data_fields
from clrobust.errors import ClrobustError
from clrobust.provenance import versions
from clrobust.results import Drawer, Result

#: Version of the layout of a figure's JSON.
SCHEMA = "clrobust.figure/1"


@dataclass(frozen=True)
class Role:
    """One model's place in a figure: a short name, the default zoo model, scheme and training."""

    key: str
    model: str
    scheme: str
    training: str
    eps: Optional[float] = None


@dataclass
class FigureSettings(SampledDataOptions):
    """What the figures are computed on; ``models`` maps default zoo names to replacements."""

    layers: str = "blocks"
    attack: AttackSpec = field(default_factory=AttackSpec)
    n_samples: Optional[int] = 512
    n_train: Optional[int] = 1000
    batch_size: int = 128
    seed: int = 0
    device: str = "cpu"
    models: Dict[str, str] = field(default_factory=dict)
    positional: Optional[List[str]] = None
    load_options: LoadOptions = field(default_factory=LoadOptions)
    classifier: str = "auto"
    adv_source: Optional[str] = None  # a zoo name of the figures' models (or its --models replacement)

    def to_dict(self) -> Dict[str, Any]:
        """The settings as settings.json records them."""
        return {**data_fields(self), "layers": self.layers,
                "attack": self.attack.to_dict(), "n_samples": self.n_samples, "n_train": self.n_train,
                "batch_size": self.batch_size, "seed": self.seed, "device": self.device, "models": dict(self.models),
                "positional": self.positional, "load_options": self.load_options.kwargs(),
                "classifier": self.classifier, "adv_source": self.adv_source}


def off_diagonal_mean(matrix: Union[np.ndarray, Sequence[Sequence[float]]]) -> float:
    """Mean of a square matrix without its diagonal (cross-layer similarity)."""
    m = np.asarray(matrix, dtype=float)
    if m.shape[0] < 2:
        return float("nan")
    return float(m[~np.eye(m.shape[0], dtype=bool)].mean())


def attack_text(attack: Mapping[str, Any]) -> str:
    if attack["name"] == "none":
        return "no attack"
    steps = f"-{attack['steps']}" if attack["name"] in ("pgd", "pgd-l2", "apgd", "rep") else ""
    return f"{attack['name'].upper()}{steps} eps {attack['eps_text']}"


def heatmap_panel(results: CompareResult, title: str, rows: Tuple[str, str], cols: Tuple[str, str]
                  ) -> Dict[str, Any]:
    """One heatmap of a figure: its title, the two recordings, their layers and the CKA matrix."""
    return {"title": title, "rows": {"model": rows[0], "input": rows[1]},
            "cols": {"model": cols[0], "input": cols[1]},
            "row_layers": results.layers[rows[0]], "col_layers": results.layers[cols[0]],
            "matrix": results.matrix(rows, cols).tolist()}


@dataclass
class FigureResult(Result):
    """The numbers of one figure: everything it plots, plus summary scalars; one subclass per family."""

    SCHEMA: ClassVar[str] = SCHEMA
    FAMILY: ClassVar[str] = ""
    ROLES: ClassVar[List[Role]] = []
    #: family name -> its result class (filled as the family modules are imported).
    REGISTRY: ClassVar[Dict[str, Type["FigureResult"]]] = {}

    family: str
    title: str
    attack: Dict[str, Any]
    attack_text: str
    data: Dict[str, str]
    n_samples: int
    layer_set: str
    seed: int
    models: Dict[str, Dict[str, Any]]  # role key -> label, spec, scheme, training, accuracy
    panels: List[Dict[str, Any]]
    summary: Dict[str, Any]
    versions: Dict[str, str]

    def __init_subclass__(cls, **kw: Any) -> None:
        super().__init_subclass__(**kw)
        if cls.FAMILY:
            FigureResult.REGISTRY[cls.FAMILY] = cls

    # ------------------------------------------------------------ numbers

    @classmethod
    def build(cls, settings: FigureSettings, pairs: Sequence[Tuple[Role, str]], results: CompareResult,
              labels: Mapping[str, str], probes: Optional[Dict[str, Any]] = None) -> "FigureResult":
        """The figure's numbers from one ``compare-layers`` result covering its models.

        ``pairs``: (role, model spec) per model; ``labels``: model spec -> label in ``results``;
        ``probes``: for families with probes, ``{role key: ProbeResult.to_dict()}``.
        """
        atk = attack_text(results.attack)
        models, disparity = {}, {}
        for role, spec in pairs:
            label = labels[spec]
            models[role.key] = {"label": label, "spec": spec, "source": results.models[label]["source"],
                                "scheme": role.scheme, "training": role.training,
                                "training_eps": None if role.eps is None else format_eps(role.eps) if role.eps
                                else "0", "accuracy": results.accuracy[label]}
            disparity[role.key] = results.disparity[label]
        summary: Dict[str, Any] = {
            "late_disparity": {k: late_mean(v) for k, v in disparity.items()},
            "late_disparity_definition": "mean of 1 - CKA(clean_l, adv_l) over the last third of the layers",
            "early_disparity": {k: early_mean(v) for k, v in disparity.items()},
            "cross_layer_cka_clean": {k: off_diagonal_mean(results.matrix((m["label"], "clean"), (m["label"], "clean")))
                                      for k, m in models.items()},
            "cross_layer_cka_definition": "mean off-diagonal entry of the clean-vs-clean CKA heatmap",
            "robust_accuracy": {k: m["accuracy"]["robust"] for k, m in models.items()},
            "clean_accuracy": {k: m["accuracy"]["clean"] for k, m in models.items()},
        }
        data_text = f"{results.data['name']} {results.data['split']}, n={results.n_samples}"
        if results.adversarial_design.startswith("crafted against"):  # shared inputs: the title says so
            data_text += f"; adversarial inputs {results.adversarial_design}"
        summary["adversarial_design"] = results.adversarial_design
        title, panels, extra = cls.specific(pairs, labels, results, summary, probes, f"{atk}; {data_text}")
        return cls(family=cls.FAMILY, title=title, attack=results.attack, attack_text=atk, data=results.data,
                   n_samples=results.n_samples, layer_set=settings.layers, seed=settings.seed, models=models,
                   panels=panels, summary=summary, versions=versions(), **extra)

    @classmethod
    def specific(cls, pairs: Sequence[Tuple[Role, str]], labels: Mapping[str, str], results: CompareResult,
                 summary: Dict[str, Any], probes: Optional[Dict[str, Any]], context: str
                 ) -> Tuple[str, List[Dict[str, Any]], Dict[str, Any]]:
        """This family's title, panels and extra fields; may add to ``summary``."""
        raise NotImplementedError

    # ------------------------------------------------------------ files

    def json_name(self) -> str:
        return f"{self.family}.json"

    def to_dict(self) -> Dict[str, Any]:
        return {"schema": self.SCHEMA, **{f.name: getattr(self, f.name) for f in fields(self)}}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "FigureResult":
        sub = FigureResult.REGISTRY.get(d.get("family", ""))
        if sub is None:
            raise ClrobustError(f"unknown figure family {d.get('family')!r}.")
        return sub(**{f.name: d[f.name] for f in fields(sub) if f.name in d})

    def figures(self) -> Dict[str, Drawer]:
        drawn: List[Any] = []  # drawn once, saved as PNG and PDF

        def save(path: Path) -> None:
            if not drawn:
                drawn.append(self.draw())
            drawn[0].savefig(path, **({"dpi": 120} if path.suffix == ".png" else {}))
        return {f"{self.family}.png": save, f"{self.family}.pdf": save}

    def draw(self) -> Any:
        """The figure, a :class:`matplotlib.figure.Figure`."""
        raise NotImplementedError

    def summary_line(self) -> str:
        s = self.summary
        parts = [f"{k}: late disparity {s['late_disparity'][k]:.3f}, cross-layer CKA "
                 f"{s['cross_layer_cka_clean'][k]:.3f}, robust acc {s['robust_accuracy'][k]:.1%}" for k in self.models]
        return f"{self.family}: " + "; ".join(parts)


def draw_heatmaps(panels: Sequence[Dict[str, Any]], where: Mapping[Tuple[str, str], Any],
                  inputs: Optional[Tuple[str, str]] = None) -> None:
    """Each panel's heatmap on ``where[(role, input)]`` (``inputs`` overrides the axis labels' input names)."""
    from clrobust import plots

    for p in panels:
        ax = where[(str(p.get("role", p.get("training"))), str(p.get("input", "")))]
        rin, cin = inputs or (p["rows"]["input"], p["cols"]["input"])
        plots.heatmap(ax, np.asarray(p["matrix"]), p["row_layers"], p["col_layers"], p["title"],
                      f"{p['rows']['model']} - {rin}", f"{p['cols']['model']} - {cin}")
