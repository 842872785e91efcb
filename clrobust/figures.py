"""The paper's four figure families, computed through ``run_compare`` / ``probe_layers`` and drawn with plots.

Families (default models are the embedded zoo; every one can be replaced):

* ``st-clean-vs-adv``: standard-trained CL, SCL, SL; CKA clean vs clean and clean vs adversarial;
* ``at-probes``: adversarially trained CL (AT, Full-AT); the same heatmaps with a linear probe per layer;
* ``eps-sweep``: disparity curves over depth for training eps 2/255, 8/255, 16/255 (and ST);
* ``cross-model``: CKA between CL and SL layers on adversarial inputs, ST pair next to AT pair.

Each figure is written as PNG and PDF with a JSON beside it holding the plotted
numbers and summary scalars; :func:`check_findings` tests the paper's four findings.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from clrobust.attacks import AttackSpec, format_eps
from clrobust.checkpoints import LoadOptions
from clrobust.compare import CompareSettings, run_compare
from clrobust.errors import ClrobustError
from clrobust.provenance import prepare_out_dir, versions, write_json

FAMILIES = ("st-clean-vs-adv", "at-probes", "eps-sweep", "cross-model")
#: Mean late-layer disparity above which finding 1 ("large disparity") counts as reproduced.
LARGE_DISPARITY = 0.3


@dataclass(frozen=True)
class Role:
    """One model's place in a figure: a short name, the default zoo model, scheme and training."""

    key: str
    model: str
    scheme: str
    training: str
    eps: Optional[float] = None


ROLES: Dict[str, List[Role]] = {
    "st-clean-vs-adv": [Role("CL ST", "simclr-st", "CL", "ST"), Role("SCL ST", "supcon-st", "SCL", "ST"),
                        Role("SL ST", "supervised-st", "SL", "ST")],
    "at-probes": [Role("CL AT", "simclr-at", "CL", "AT", 8 / 255),
                  Role("CL Full-AT", "simclr-fat", "CL", "Full-AT", 8 / 255)],
    "eps-sweep": [Role("AT eps 2/255", "simclr-at-eps2", "CL", "AT", 2 / 255),
                  Role("AT eps 8/255", "simclr-at", "CL", "AT", 8 / 255),
                  Role("AT eps 16/255", "simclr-at-eps16", "CL", "AT", 16 / 255),
                  Role("ST", "simclr-st", "CL", "ST", 0.0)],
    "cross-model": [Role("CL ST", "simclr-st", "CL", "ST"), Role("SL ST", "supervised-st", "SL", "ST"),
                    Role("CL AT", "simclr-at", "CL", "AT", 8 / 255),
                    Role("SL AT", "supervised-at", "SL", "AT", 8 / 255)],
}


@dataclass
class FigureSettings:
    """What the figures are computed on; ``models`` maps default zoo names to replacements."""

    data: str = "cifar10-mini"
    data_root: Optional[str] = None
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


def parse_models(text: Optional[str], families: Sequence[str]) -> Tuple[Dict[str, str], Optional[List[str]]]:
    """``--models``: ``NAME=PATH`` items replace a default zoo name everywhere; plain items replace
    one family's models in order (one family only)."""
    if not text:
        return {}, None
    items = [t.strip() for t in text.split(",") if t.strip()]
    subs = {k.strip(): v.strip() for k, v in (t.split("=", 1) for t in items if "=" in t)}
    plain = [t for t in items if "=" not in t]
    if plain and subs:
        raise ClrobustError("--models mixes NAME=PATH and plain items; use one form.")
    if plain:
        if len(families) != 1:
            raise ClrobustError("--models as a plain list needs one family; for several use NAME=PATH items "
                                "(e.g. simclr-st=runs/a.safetensors).")
        need = len(ROLES[families[0]])
        if len(plain) != need:
            keys = ", ".join(f"{r.key} [{r.model}]" for r in ROLES[families[0]])
            raise ClrobustError(f"{families[0]} needs {need} models in this order: {keys}; got {len(plain)}.")
        return {}, plain
    known = {r.model for f in families for r in ROLES[f]}
    unknown = [k for k in subs if k not in known]
    if unknown:
        raise ClrobustError(f"--models {unknown[0]}=... names no model of these figures; "
                            f"replaceable: {', '.join(sorted(known))}.")
    return subs, None


def family_models(family: str, settings: FigureSettings) -> List[Tuple[Role, str]]:
    """(role, model name or path) for each model of ``family``."""
    if family not in ROLES:
        raise ClrobustError(f"unknown figure family {family!r}; use one of: {', '.join(FAMILIES)}, all.")
    roles = ROLES[family]
    if settings.positional is not None:
        return list(zip(roles, settings.positional))
    return [(r, settings.models.get(r.model, r.model)) for r in roles]


# ---------------------------------------------------------------- numbers


def late_mean(values: Sequence[float]) -> float:
    """Mean over the last third of the layers (at least one), as in ``compare-layers``' summary."""
    v = list(values)
    k = max(1, len(v) // 3)
    return float(np.mean(v[-k:]))


def early_mean(values: Sequence[float]) -> float:
    """Mean over the first third of the layers (at least one)."""
    v = list(values)
    k = max(1, len(v) // 3)
    return float(np.mean(v[:k]))


def off_diagonal_mean(matrix: Union[np.ndarray, Sequence[Sequence[float]]]) -> float:
    """Mean of a square matrix without its diagonal (cross-layer similarity)."""
    m = np.asarray(matrix, dtype=float)
    if m.shape[0] < 2:
        return float("nan")
    return float(m[~np.eye(m.shape[0], dtype=bool)].mean())


def find_matrix(results: Dict[str, Any], rows: Tuple[str, str], cols: Tuple[str, str]) -> np.ndarray:
    """The CKA matrix of (model, input) ``rows`` against ``cols`` from run_compare results (transposed if needed)."""
    for e in results["cka"]:
        r, c = (e["rows"]["model"], e["rows"]["input"]), (e["cols"]["model"], e["cols"]["input"])
        if (r, c) == (rows, cols):
            return np.asarray(e["matrix"], dtype=float)
        if (c, r) == (rows, cols):
            return np.asarray(e["matrix"], dtype=float).T
    raise KeyError(f"no CKA entry for {rows} vs {cols}")


def _attack_text(attack: Dict[str, Any]) -> str:
    if attack["name"] == "none":
        return "no attack"
    steps = f"-{attack['steps']}" if attack["name"] in ("pgd", "pgd-l2", "apgd", "rep") else ""
    return f"{attack['name'].upper()}{steps} eps {attack['eps_text']}"


def _heatmap_panel(results, title, rows, cols) -> Dict[str, Any]:
    return {"title": title, "rows": {"model": rows[0], "input": rows[1]},
            "cols": {"model": cols[0], "input": cols[1]},
            "row_layers": results["layers"][rows[0]], "col_layers": results["layers"][cols[0]],
            "matrix": find_matrix(results, rows, cols).tolist()}


def family_data(family: str, settings: FigureSettings, results: Dict[str, Any],
                probes: Optional[Dict[str, Any]] = None,
                labels: Optional[Dict[str, str]] = None) -> Dict[str, Any]:
    """The numbers of one figure (everything it plots, plus summary scalars) from run_compare results.

    Args:
        family: one of :data:`FAMILIES`.
        settings: the figure settings (models, attack, data).
        results: ``run_compare`` output covering every model of the family.
        probes: for ``at-probes``, ``{role key: ProbeResult.to_dict()}``.
        labels: model spec -> label in ``results`` [the family's models, in results order].
    """
    pairs = family_models(family, settings)
    lab = labels if labels is not None else dict(zip([s for _, s in pairs], list(results["layers"])))
    atk = _attack_text(results["attack"])
    data_text = f"{results['data']['name']} {results['data']['split']}, n={results['n_samples']}"
    models, late, cross, disparity, layers = {}, {}, {}, {}, {}
    for role, spec in pairs:
        label = lab[spec]
        d = results["disparity"][label]
        acc = results["accuracy"][label]
        models[role.key] = {"label": label, "spec": spec, "source": results["models"][label]["source"],
                            "scheme": role.scheme, "training": role.training,
                            "training_eps": None if role.eps is None else format_eps(role.eps) if role.eps else "0",
                            "accuracy": acc}
        disparity[role.key] = d
        layers[role.key] = results["layers"][label]
        late[role.key] = late_mean(d)
        cross[role.key] = off_diagonal_mean(find_matrix(results, (label, "clean"), (label, "clean")))
    summary: Dict[str, Any] = {
        "late_disparity": late, "late_disparity_definition": "mean of 1 - CKA(clean_l, adv_l) over the last "
                                                            "third of the layers",
        "early_disparity": {k: early_mean(v) for k, v in disparity.items()},
        "cross_layer_cka_clean": cross,
        "cross_layer_cka_definition": "mean off-diagonal entry of the clean-vs-clean CKA heatmap",
        "robust_accuracy": {k: m["accuracy"]["adversarial"] for k, m in models.items()},
        "clean_accuracy": {k: m["accuracy"]["clean"] for k, m in models.items()},
    }
    panels: List[Dict[str, Any]] = []
    extra: Dict[str, Any] = {}
    if family in ("st-clean-vs-adv", "at-probes"):
        for role, spec in pairs:
            label = lab[spec]
            for inp, text in (("clean", "clean vs clean"), ("adversarial", "clean vs adversarial")):
                panels.append(_heatmap_panel(results, f"{role.key} ({label}): {text}", (label, "clean"),
                                             (label, inp)) | {"role": role.key, "input": inp})
        title = ("Standard training" if family == "st-clean-vs-adv" else "Adversarial training (AT, Full-AT)") + \
            f": CKA clean vs clean and clean vs adversarial ({atk}; {data_text})"
        if family == "at-probes":
            extra["probes"] = probes or {}
            summary["probe_last_layer"] = {k: {"clean": p["clean_accuracy"][-1],
                                               "adversarial": p["adversarial_accuracy"][-1]}
                                           for k, p in (probes or {}).items()}
    elif family == "eps-sweep":
        legend = {k: f"{k}: {m['label']} (robust acc {m['accuracy']['adversarial']:.1%})" for k, m in models.items()}
        extra["curves"] = {"disparity": disparity, "layers": layers, "legend": legend}
        title = f"Clean vs adversarial disparity over depth by training eps ({atk}; {data_text})"
    else:  # cross-model
        keys = [r.key for r, _ in pairs]
        cm = {}
        for tr, (a, b) in (("ST", (0, 1)), ("AT", (2, 3))):
            la, lb = lab[pairs[a][1]], lab[pairs[b][1]]
            p = _heatmap_panel(results, f"{tr}: {keys[a]} ({la}) vs {keys[b]} ({lb}), adversarial inputs",
                               (la, "adversarial"), (lb, "adversarial"))
            p["training"] = tr
            panels.append(p)
            m = np.asarray(p["matrix"])
            cm[tr] = {"mean": float(m.mean()),
                      "diagonal_mean": float(np.diag(m).mean()) if m.shape[0] == m.shape[1] else None}
        summary["cross_model_cka"] = cm
        summary["cross_model_cka_definition"] = "mean entry of the adversarial-vs-adversarial cross-model heatmap"
        title = f"Cross-model CKA (CL vs SL) on adversarial inputs, ST vs AT ({atk}; {data_text})"
    return {"schema": "clrobust.figure/1", "family": family, "title": title, "attack": results["attack"],
            "attack_text": atk,
            "data": results["data"], "n_samples": results["n_samples"], "layer_set": settings.layers,
            "seed": settings.seed, "models": models, "panels": panels, **extra, "summary": summary,
            "versions": versions()}


def compute_figures(families: Sequence[str], settings: FigureSettings, progress: bool = True,
                    cache_dir: Optional[Path] = None) -> Dict[str, Dict[str, Any]]:
    """Numbers of every figure in ``families``: one ``run_compare`` over all their models, probes as needed."""
    specs: List[str] = []
    if "cross-model" in families:
        cm = [s for _, s in family_models("cross-model", settings)]
        if cm[0] == cm[1] or cm[2] == cm[3]:
            raise ClrobustError("cross-model compares two different models per pair; give distinct models "
                                "for CL and SL in --models.")
    for f in families:
        for _, s in family_models(f, settings):
            if s not in specs:
                specs.append(s)
    cs = CompareSettings(models=specs, data=settings.data, data_root=settings.data_root, split="test",
                         layers=settings.layers, attack=replace(settings.attack), n_samples=settings.n_samples,
                         batch_size=settings.batch_size, seed=settings.seed, device=settings.device,
                         load_options=settings.load_options, probe_train=settings.n_train,
                         classifier=settings.classifier)
    results = run_compare(cs, progress=progress)
    labels = dict(zip(specs, list(results["layers"])))
    out: Dict[str, Dict[str, Any]] = {}
    for f in families:
        probes = compute_probes(f, settings, progress, cache_dir) if f == "at-probes" else None
        out[f] = family_data(f, settings, results, probes, labels)
    return out


def compute_probes(family: str, settings: FigureSettings, progress: bool = True,
                   cache_dir: Optional[Path] = None) -> Dict[str, Any]:
    """Per-layer linear probes of every model of ``family`` (train split fit, test clean / adversarial)."""
    from clrobust.checkpoints import load
    from clrobust.data import load_dataset
    from clrobust.heads import choose_classifier, ensure_classifier
    from clrobust.probes import probe_layers

    train = load_dataset(settings.data, "train", settings.data_root).subset(settings.n_train)
    test = load_dataset(settings.data, "test", settings.data_root).subset(settings.n_samples)
    res = {}
    for role, spec in family_models(family, settings):
        lm = load(spec, device=settings.device, **settings.load_options.kwargs())
        choose_classifier(lm, test.num_classes, settings.data, settings.classifier)
        ensure_classifier(lm, train, settings.seed, progress)  # the attack needs a real head
        r = probe_layers(lm.network, train, test, settings.layers, replace(settings.attack), settings.batch_size,
                         settings.seed, progress, cache_dir, settings.device)
        res[role.key] = r.to_dict()
    return res


# ---------------------------------------------------------------- drawing


def draw_family(data: Dict[str, Any], out: Path) -> List[Path]:
    """Draw one figure from its numbers to ``out``.png and ``out``.pdf; returns the paths."""
    from clrobust import plots

    family = data["family"]
    if family in ("st-clean-vs-adv", "at-probes"):
        roles = list(data["models"])
        n = len(roles)
        if family == "st-clean-vs-adv":
            fig, axes = plots.new_figure(n, 2, figsize=(10, 4.4 * n), squeeze=False)
            where = {(p["role"], p["input"]): axes[roles.index(p["role"]), 0 if p["input"] == "clean" else 1]
                     for p in data["panels"]}
        else:
            fig, axes = plots.new_figure(3, n, figsize=(5.2 * n, 13), squeeze=False,
                                     gridspec_kw={"height_ratios": [1, 1, 0.7]})
            where = {(p["role"], p["input"]): axes[0 if p["input"] == "clean" else 1, roles.index(p["role"])]
                     for p in data["panels"]}
        for p in data["panels"]:
            ax = where[(p["role"], p["input"])]
            plots.heatmap(ax, np.asarray(p["matrix"]), p["row_layers"], p["col_layers"], p["title"],
                          f"{p['rows']['model']} - {p['rows']['input']}",
                          f"{p['cols']['model']} - {p['cols']['input']}")
        if family == "at-probes":
            for j, key in enumerate(roles):
                pr = data["probes"].get(key)
                ax = axes[2, j]
                if pr is None:
                    ax.set_axis_off()
                    continue
                plots.probe_axes(ax, pr["layers"], {"train": pr["train_accuracy"], "clean": pr["clean_accuracy"],
                                                    "adversarial": pr["adversarial_accuracy"]},
                                 f"{key}: linear probe per layer\n{_attack_text(pr['attack'])}, "
                                 f"fit on {pr['n_train']} train images",
                                 chance=1.0 / pr["n_classes"])
    elif family == "eps-sweep":
        fig, ax = plots.new_figure(figsize=(8, 4.8))
        c = data["curves"]
        plots.disparity_axes(ax, c["disparity"], c["layers"], data["title"], c["legend"])
    else:
        fig, axes = plots.new_figure(1, 2, figsize=(11, 5.2), squeeze=False)
        for ax, p in zip(axes[0], data["panels"]):
            plots.heatmap(ax, np.asarray(p["matrix"]), p["row_layers"], p["col_layers"], p["title"],
                          f"{p['rows']['model']} - adversarial", f"{p['cols']['model']} - adversarial")
    if family != "eps-sweep":
        fig.suptitle(data["title"], fontsize=10)
    fig.tight_layout()
    if family == "at-probes" and data["probes"]:
        fig.text(0.5, 0.003, "probe features: " + next(iter(data["probes"].values()))["pooling"],
                 ha="center", va="bottom", fontsize=7)
    paths = [Path(str(out) + ".png"), Path(str(out) + ".pdf")]
    fig.savefig(paths[0], dpi=120)
    fig.savefig(paths[1])
    return paths


def check_models(families: Sequence[str], settings: FigureSettings) -> None:
    """Fail before any work when a model of ``families`` is neither a file nor in the zoo."""
    from clrobust.checkpoints import resolve

    for f in families:
        for role, spec in family_models(f, settings):
            try:
                resolve(spec)
            except ClrobustError as exc:
                raise ClrobustError(f"{f} ({role.key}): {str(exc).rstrip('.')}; train the zoo "
                                    f"(bash analyses/train_zoo.sh) or pass --models {role.model}=PATH.") from None


def output_names(families: Sequence[str]) -> List[str]:
    return [f"{f}.{ext}" for f in families for ext in ("png", "pdf", "json")]


def make_figures(families: Sequence[str], settings: FigureSettings, out: Path, overwrite: bool = False,
                 progress: bool = True, check: bool = False) -> Dict[str, Any]:
    """Compute, draw and write every figure of ``families`` into ``out`` (PNG, PDF, JSON each).

    With ``check``, also tests the paper's findings and writes ``findings.json``.
    Returns ``{"figures": {family: data}, "files": [...], "findings": [...]}``.
    """
    check_models(families, settings)
    out = prepare_out_dir(Path(out), output_names(families) + (["findings.json"] if check else []), overwrite)
    figs = compute_figures(families, settings, progress, cache_dir=out / "features")
    files: List[Path] = []
    for f, data in figs.items():
        write_json(out / f"{f}.json", data)
        files.append(out / f"{f}.json")
        files += draw_family(data, out / f)
    result: Dict[str, Any] = {"figures": figs, "files": files}
    if check:
        findings = check_findings(figs)
        write_json(out / "findings.json", {"findings": [asdict(x) for x in findings],
                                           "large_disparity_threshold": LARGE_DISPARITY})
        files.append(out / "findings.json")
        result["findings"] = findings
    return result


# ---------------------------------------------------------------- findings


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


def check_findings(figs: Dict[str, Dict[str, Any]]) -> List[Finding]:
    """Test the paper's four findings on the figures' summary numbers (those not computed are 'not checked')."""
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
