"""Whether the paper's four findings hold in the figures' numbers."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, ClassVar, Dict, List, Mapping, Optional, Sequence

import numpy as np

from clrobust.figures.base import FigureResult
from clrobust.results import Result

#: Mean late-layer disparity above which finding 1 ("large disparity") counts as reproduced.
LARGE_DISPARITY = 0.3


@dataclass
class Finding:
    """Whether one of the paper's findings holds in the computed numbers, and by how much."""

    number: int
    statement: str
    status: str  # "agrees", "disagrees" or "not checked"
    margin: Optional[float]
    detail: str

    def line(self) -> str:
        m = "" if self.margin is None else f" (margin {self.margin:+.3f})"
        return f"finding {self.number}: {self.statement}: {self.status.upper()}{m}. {self.detail}"


STATEMENTS = {
    1: "standard-trained networks show a large clean/adversarial disparity",
    2: "adversarial training makes clean and adversarial representations similar and raises "
       "cross-layer similarity",
    3: "larger training eps gives lower disparity, especially near the end, and more robustness",
    4: "after adversarial training the schemes converge: cross-model CKA higher for AT than ST",
}


def _fmt(d: Dict[str, float], pct: bool = False) -> str:
    return ", ".join(f"{k} {v:.1%}" if pct else f"{k} {v:.3f}" for k, v in d.items())


def _pool(figs: Dict[str, Dict[str, Any]], training: str, exclude: Sequence[str] = ()) -> Dict[str, Dict[str, Any]]:
    """Summary numbers of every model with this training across the figures, by role key."""
    out: Dict[str, Dict[str, Any]] = {}
    seen = set()
    for f, data in figs.items():
        if f in exclude:
            continue
        for key, m in data["models"].items():
            if m["training"] == training and key not in out and m["label"] not in seen:
                seen.add(m["label"])
                s = data["summary"]
                out[key] = {"late": s["late_disparity"][key], "cross": s["cross_layer_cka_clean"][key],
                            "scheme": m["scheme"]}
    return out


def check_findings(results: Mapping[str, FigureResult]) -> List[Finding]:
    """Test the paper's four findings on the figures' summary numbers (those not computed are 'not checked')."""
    figs = {f: r.to_dict() for f, r in results.items()}
    res: List[Finding] = []
    # 1
    st = figs.get("st-clean-vs-adv", {}).get("summary", {}).get("late_disparity") or \
        {k: v["late"] for k, v in _pool(figs, "ST").items()}
    if st:
        lo = min(st.values())
        res.append(Finding(1, STATEMENTS[1], "agrees" if lo >= LARGE_DISPARITY else "disagrees",
                           lo - LARGE_DISPARITY, f"late-layer disparity {_fmt(st)}; smallest {lo:.3f} vs "
                           f"threshold {LARGE_DISPARITY}."))
    else:
        res.append(Finding(1, STATEMENTS[1], "not checked", None, "needs st-clean-vs-adv."))
    # 2
    at = {k: v for k, v in figs.get("at-probes", {}).get("models", {}).items()}
    st_pool = _pool(figs, "ST")
    ref = {k: v for k, v in st_pool.items() if v["scheme"] == "CL"} or st_pool
    if at and ref:
        s = figs["at-probes"]["summary"]
        at_late = float(np.mean([s["late_disparity"][k] for k in at]))
        at_cross = float(np.mean([s["cross_layer_cka_clean"][k] for k in at]))
        st_late = float(np.mean([v["late"] for v in ref.values()]))
        st_cross = float(np.mean([v["cross"] for v in ref.values()]))
        drop, rise = st_late - at_late, at_cross - st_cross
        res.append(Finding(2, STATEMENTS[2], "agrees" if drop > 0 and rise > 0 else "disagrees", min(drop, rise),
                           f"late disparity AT {at_late:.3f} vs ST {st_late:.3f} (drop {drop:+.3f}); cross-layer "
                           f"CKA AT {at_cross:.3f} vs ST {st_cross:.3f} (rise {rise:+.3f}); ST reference: "
                           f"{', '.join(ref)}; AT: {', '.join(at)}."))
    else:
        res.append(Finding(2, STATEMENTS[2], "not checked", None, "needs at-probes and an ST figure."))
    # 3
    if "eps-sweep" in figs:
        d = figs["eps-sweep"]
        s = d["summary"]
        sweep = sorted([(m["training_eps"], k) for k, m in d["models"].items() if m["training"] != "ST"],
                       key=lambda t: _eps_value(t[0]))
        keys = [k for _, k in sweep]
        late = [s["late_disparity"][k] for k in keys]
        early = [s["early_disparity"][k] for k in keys]
        rob = [s["robust_accuracy"][k] for k in keys]
        mono_d = all(b <= a + 1e-9 for a, b in zip(late, late[1:]))
        mono_a = all(b >= a - 1e-9 for a, b in zip(rob, rob[1:]))
        d_gap, a_gap = late[0] - late[-1], rob[-1] - rob[0]
        ok = mono_d and mono_a and d_gap > 0 and a_gap > 0
        res.append(Finding(3, STATEMENTS[3], "agrees" if ok else "disagrees", min(d_gap, a_gap),
                           f"late disparity {_fmt(dict(zip(keys, late)))} ({'monotone' if mono_d else 'not monotone'},"
                           f" drop {d_gap:+.3f}; early-layer drop {early[0] - early[-1]:+.3f}, so the effect is "
                           f"{'larger' if d_gap > early[0] - early[-1] else 'not larger'} near the end); robust "
                           f"accuracy {_fmt(dict(zip(keys, rob)), pct=True)} "
                           f"({'monotone' if mono_a else 'not monotone'}, gain {a_gap:+.1%})."))
    else:
        res.append(Finding(3, STATEMENTS[3], "not checked", None, "needs eps-sweep."))
    # 4
    if "cross-model" in figs:
        cm = figs["cross-model"]["summary"]["cross_model_cka"]
        gap = cm["AT"]["mean"] - cm["ST"]["mean"]
        res.append(Finding(4, STATEMENTS[4], "agrees" if gap > 0 else "disagrees", gap,
                           f"mean cross-model CKA on adversarial inputs: AT {cm['AT']['mean']:.3f} vs "
                           f"ST {cm['ST']['mean']:.3f}."))
    else:
        res.append(Finding(4, STATEMENTS[4], "not checked", None, "needs cross-model."))
    return res


def _eps_value(text: Optional[str]) -> float:
    from clrobust.attacks import parse_eps

    return parse_eps(text) if text not in (None, "-") else math.inf


@dataclass
class FindingsResult(Result):
    """findings.json: every finding's status and margin, and the threshold finding 1 is judged by."""

    SCHEMA: ClassVar[str] = "clrobust.findings/1"

    findings: List[Finding]

    def json_name(self) -> str:
        return "findings.json"

    def to_dict(self) -> Dict[str, Any]:
        return {"schema": self.SCHEMA, "findings": [asdict(x) for x in self.findings],
                "large_disparity_threshold": LARGE_DISPARITY}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "FindingsResult":
        return cls([Finding(**x) for x in d["findings"]])

    def markdown(self) -> str:
        return "\n".join(f.line() for f in self.findings)
