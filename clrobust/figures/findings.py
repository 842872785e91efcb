"""Whether the paper's four findings hold: each a stated comparison against a baseline, with a 95%
interval, and a verdict (supported, contradicted or inconclusive) that no fixed threshold decides.

A comparison is *supported* when its whole interval lies on the side the finding
predicts, *contradicted* when its whole interval lies on the other side, and
*inconclusive* when the interval holds zero. A finding made of several comparisons
is supported when all are, contradicted when any is. Intervals come from the
bootstrap replicates of the one ``compare-layers`` run behind the figures (same
images, same resamples for every model: the comparisons are paired).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from clrobust.cka import depth_thirds
from clrobust.compare import CompareResult
from clrobust.figures.base import FigureResult
from clrobust.results import Result
from clrobust.uncertainty import percentile_interval, with_interval

VERDICTS = ("supported", "contradicted", "inconclusive", "not checked")
#: What the intervals of the findings cover, and what they do not.
SCOPE = ("Intervals cover the choice of images (a bootstrap over the test images, paired across models); each "
         "model is one training run, so variation between training seeds is not in them.")


@dataclass
class Finding:
    """One finding: the statistic it rests on (value and 95% interval), the baseline it is compared
    against, the verdict, and where it does not hold."""

    number: int
    statement: str
    verdict: str
    statistic: str = ""
    value: Optional[float] = None
    ci_low: Optional[float] = None
    ci_high: Optional[float] = None
    baseline: str = ""
    detail: str = ""
    not_holding: List[str] = field(default_factory=list)

    def line(self) -> str:
        head = f"finding {self.number}: {self.statement}: {self.verdict.upper()}."
        if self.value is None:
            return f"{head} {self.detail}".rstrip()
        stat = f"{self.statistic} {with_interval(self.value, self.ci_low, self.ci_high)}"
        where = f" Does not hold at: {', '.join(self.not_holding)}." if self.not_holding else ""
        return f"{head} {stat} vs {self.baseline}. {self.detail}{where}".rstrip()


STATEMENTS = {
    1: "standard-trained networks show a clean/adversarial disparity beyond random noise of the same size, "
       "rising with depth",
    2: "adversarial training makes clean and adversarial representations similar and raises "
       "cross-layer similarity",
    3: "larger training eps gives lower disparity, especially near the end",
    4: "after adversarial training the schemes converge: cross-model CKA higher for AT than ST",
}


@dataclass
class Contrast:
    """A difference with its bootstrap interval; positive is what the finding predicts."""

    name: str
    value: float
    low: Optional[float]
    high: Optional[float]

    @classmethod
    def of(cls, name: str, value: float, replicates: Optional[np.ndarray]) -> "Contrast":
        if replicates is None:
            return cls(name, float(value), None, None)
        low, high = percentile_interval(np.asarray(replicates, dtype=float))
        return cls(name, float(value), float(low), float(high))

    @property
    def verdict(self) -> str:
        if self.low is None or self.high is None or not (math.isfinite(self.low) and math.isfinite(self.high)):
            return "inconclusive"
        return "supported" if self.low > 0 else "contradicted" if self.high < 0 else "inconclusive"

    def text(self) -> str:
        return f"{self.name} {with_interval(self.value, self.low, self.high)}"


def combine(contrasts: Sequence[Contrast]) -> str:
    verdicts = [c.verdict for c in contrasts]
    if "contradicted" in verdicts:
        return "contradicted"
    return "supported" if verdicts and all(v == "supported" for v in verdicts) else "inconclusive"


class Numbers:
    """The statistics the findings need, from one compare-layers result (values and replicates)."""

    def __init__(self, results: CompareResult):
        self.r = results

    def disparity(self, label: str, other: str = "adversarial") -> Tuple[np.ndarray, Optional[np.ndarray]]:
        """(layers,) curve 1 - CKA(clean_l, other_l) and its (replicates, layers) replicates."""
        value = 1 - np.diag(self.r.matrix((label, "clean"), (label, other)))
        reps = self.r.matrix_replicates((label, "clean"), (label, other))
        return value, None if reps is None else 1 - np.diagonal(reps, axis1=1, axis2=2)

    def late(self, label: str, other: str = "adversarial") -> Tuple[float, Optional[np.ndarray]]:
        v, reps = self.disparity(label, other)
        _, late = depth_thirds(len(v))
        return float(v[late].mean()), None if reps is None else reps[:, late].mean(1)

    def rise(self, label: str) -> Tuple[float, Optional[np.ndarray]]:
        """Late minus early mean disparity."""
        v, reps = self.disparity(label)
        early, late = depth_thirds(len(v))
        return (float(v[late].mean() - v[early].mean()),
                None if reps is None else reps[:, late].mean(1) - reps[:, early].mean(1))

    def cross_layer(self, label: str) -> Tuple[float, Optional[np.ndarray]]:
        """Mean off-diagonal entry of the clean-vs-clean CKA matrix."""
        m = self.r.matrix((label, "clean"), (label, "clean"))
        off = ~np.eye(m.shape[0], dtype=bool)
        reps = self.r.matrix_replicates((label, "clean"), (label, "clean"))
        return float(m[off].mean()), None if reps is None else reps[:, off].mean(1)

    def cross_model(self, a: str, b: str) -> Tuple[float, Optional[np.ndarray]]:
        """Mean entry of CKA(a adversarial, b adversarial)."""
        m = self.r.matrix((a, "adversarial"), (b, "adversarial"))
        reps = self.r.matrix_replicates((a, "adversarial"), (b, "adversarial"))
        return float(m.mean()), None if reps is None else reps.mean((1, 2))

    def has_noise(self, label: str) -> bool:
        return any(e.rows == (label, "clean") and e.cols == (label, "noise") for e in self.r.cka)


def _minus(a: Tuple[float, Optional[np.ndarray]], b: Tuple[float, Optional[np.ndarray]]
           ) -> Tuple[float, Optional[np.ndarray]]:
    reps = None if a[1] is None or b[1] is None else a[1] - b[1]
    return a[0] - b[0], reps


def _labels_by(figs: Mapping[str, FigureResult], training: Sequence[str], scheme: Optional[str] = None
               ) -> Dict[str, str]:
    """role key -> label of every model with this training (and scheme) across the figures, once each."""
    out: Dict[str, str] = {}
    for f in figs.values():
        for key, m in f.models.items():
            if m["training"] in training and (scheme is None or m["scheme"] == scheme) \
                    and m["label"] not in out.values():
                out.setdefault(key, m["label"])
    return out


def _weakest(contrasts: Sequence[Contrast]) -> Contrast:
    return min(contrasts, key=lambda c: (c.low if c.low is not None else c.value))


def finding_1(figs: Mapping[str, FigureResult], num: Numbers) -> Finding:
    st = _labels_by(figs, ["ST"])
    if not st:
        return Finding(1, STATEMENTS[1], "not checked", detail="needs a figure with a standard-trained model.")
    if not all(num.has_noise(lab) for lab in st.values()):
        return Finding(1, STATEMENTS[1], "inconclusive",
                       detail="no noise control was recorded, so there is no baseline (run with the noise control).")
    beyond = [Contrast.of(f"{k} late disparity minus noise's", *_minus(num.late(lab), num.late(lab, "noise")))
              for k, lab in st.items()]
    rises = [Contrast.of(f"{k} late minus early disparity", *num.rise(lab)) for k, lab in st.items()]
    verdict = combine(beyond + rises)
    w = _weakest(beyond)
    failing = [c.name.split(" late")[0] for c in beyond + rises if c.verdict != "supported"]
    return Finding(1, STATEMENTS[1], verdict, "smallest late-layer excess over noise", w.value, w.low, w.high,
                   "0 (random noise of the same eps and norm)",
                   "; ".join(c.text() for c in beyond + rises) + ".", sorted(set(failing)))


def finding_2(figs: Mapping[str, FigureResult], num: Numbers) -> Finding:
    at = _labels_by({k: v for k, v in figs.items() if k == "at-probes"}, ["AT", "Full-AT"])
    ref = _labels_by(figs, ["ST"], "CL")
    if not at or not ref:
        return Finding(2, STATEMENTS[2], "not checked", detail="needs at-probes and a figure with the CL ST model.")
    st_label = next(iter(ref.values()))
    contrasts, holding_not = [], []
    for k, lab in at.items():
        contrasts.append(Contrast.of(f"{k}: ST - AT late disparity", *_minus(num.late(st_label), num.late(lab))))
        contrasts.append(Contrast.of(f"{k}: AT - ST cross-layer CKA",
                                     *_minus(num.cross_layer(lab), num.cross_layer(st_label))))
        holding_not += _layers_not_lower(num, st_label, lab, k)
    w = _weakest(contrasts[::2])
    return Finding(2, STATEMENTS[2], combine(contrasts), "smallest ST - AT late-disparity drop", w.value, w.low,
                   w.high, f"0 (the CL ST model, {st_label}, on the same images)",
                   "; ".join(c.text() for c in contrasts) + ".", holding_not)


def _layers_not_lower(num: Numbers, st: str, at: str, key: str) -> List[str]:
    """Layers where ST - AT disparity is not above 0 at Holm-adjusted p < 0.05 (same images, paired)."""
    for p in num.r.paired_disparity:
        if {p["a"], p["b"]} == {st, at}:
            sign = 1 if p["a"] == st else -1
            return [f"{key} {layer}" for layer, d, q in zip(p["layers"], p["difference"], p["p_holm"])
                    if not (sign * d > 0 and q < 0.05)]
    return []


def finding_3(figs: Mapping[str, FigureResult], num: Numbers) -> Finding:
    if "eps-sweep" not in figs:
        return Finding(3, STATEMENTS[3], "not checked", detail="needs eps-sweep.")
    sweep = figs["eps-sweep"]
    models = sorted(((m["training_eps"], k, m["label"]) for k, m in sweep.models.items() if m["training"] != "ST"),
                    key=lambda t: _eps_value(t[0]))
    contrasts = [Contrast.of(f"late disparity {a[1]} - {b[1]}", *_minus(num.late(a[2]), num.late(b[2])))
                 for a, b in zip(models, models[1:])]
    if len(models) >= 2:  # "especially near the end": the smallest-vs-largest eps gap grows with depth
        lo, hi = models[0][2], models[-1][2]
        contrasts.append(Contrast.of(f"(late - early) gap {models[0][1]} - {models[-1][1]}",
                                     *_minus(num.rise(lo), num.rise(hi))))
    if not contrasts:
        return Finding(3, STATEMENTS[3], "not checked", detail="needs at least two adversarially trained models.")
    rob = ", ".join(f"{k} {with_interval(sweep.models[k]['accuracy']['robust'], *_wilson(num, lab), percent=True)}"
                    for _, k, lab in models)
    w = _weakest(contrasts[:-1] or contrasts)
    failing = [c.name for c in contrasts if c.verdict != "supported"]
    return Finding(3, STATEMENTS[3], combine(contrasts), "smallest late-disparity step between neighbouring eps",
                   w.value, w.low, w.high, "0 (the next larger training eps, same images)",
                   "; ".join(c.text() for c in contrasts) + f"; robust accuracy {rob}. One checkpoint per eps: "
                   "the steps are not tested against other training seeds.", failing)


def _wilson(num: Numbers, label: str) -> Tuple[Optional[float], Optional[float]]:
    ci = num.r.accuracy_ci.get(label, {}).get("robust")
    return (ci[0], ci[1]) if ci else (None, None)


def finding_4(figs: Mapping[str, FigureResult], num: Numbers) -> Finding:
    if "cross-model" not in figs:
        return Finding(4, STATEMENTS[4], "not checked", detail="needs cross-model.")
    labels = [m["label"] for m in figs["cross-model"].models.values()]  # CL ST, SL ST, CL AT, SL AT
    c = Contrast.of("AT - ST mean cross-model CKA",
                    *_minus(num.cross_model(labels[2], labels[3]), num.cross_model(labels[0], labels[1])))
    design = num.r.adversarial_design
    note = (f"Design: adversarial inputs {design}, so both sides of a cross-model entry see the same images."
            if design.startswith("crafted against") else
            "Design: each model's adversarial inputs are crafted against that model, so the two sides of "
            "a cross-model entry see different images; part of the gap can come from that (--adv-source shares them).")
    return Finding(4, STATEMENTS[4], c.verdict, c.name, c.value, c.low, c.high, "0 (the ST pair, same images)", note)


def check_findings(figs: Mapping[str, FigureResult], results: Optional[CompareResult] = None) -> List[Finding]:
    """The four findings on the figures' models, from the compare-layers result they were built from."""
    if results is None:
        return [Finding(i, STATEMENTS[i], "not checked", detail="needs the compare-layers result of the figures.")
                for i in range(1, 5)]
    num = Numbers(results)
    return [finding_1(figs, num), finding_2(figs, num), finding_3(figs, num), finding_4(figs, num)]


def _eps_value(text: Optional[str]) -> float:
    from clrobust.attacks import parse_eps

    return parse_eps(text) if text not in (None, "-") else math.inf


@dataclass
class FindingsResult(Result):
    """findings.json: every finding's verdict, statistic, interval and baseline."""

    SCHEMA: ClassVar[str] = "clrobust.findings/2"

    findings: List[Finding]
    uncertainty: str = ""

    def json_name(self) -> str:
        return "findings.json"

    def to_dict(self) -> Dict[str, Any]:
        return {"schema": self.SCHEMA, "findings": [asdict(x) for x in self.findings],
                "verdicts": "supported: the 95% interval lies on the predicted side of the baseline; contradicted: "
                            "on the other side; inconclusive: it holds the baseline",
                "uncertainty": self.uncertainty, "scope": SCOPE}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "FindingsResult":
        return cls([Finding(**x) for x in d["findings"]], d.get("uncertainty", ""))

    def markdown(self) -> str:
        return "\n".join([f.line() for f in self.findings] + ["", SCOPE])
