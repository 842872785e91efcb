"""The ``figures`` job: one ``compare-layers`` pass over every model the families need, probes where a
family has them, then each family's numbers, files and (optionally) the findings check."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Type

from clrobust.compare import CompareResult, CompareSettings, run_compare
from clrobust.data import data_fields
from clrobust.distributed import Dist
from clrobust.errors import ClrobustError
from clrobust.figures.at_probes import AtProbes
from clrobust.figures.base import FigureResult, FigureSettings, Role
from clrobust.figures.cross_model import CrossModel
from clrobust.figures.eps_sweep import EpsSweep
from clrobust.figures.findings import Finding, FindingsResult, check_findings
from clrobust.figures.st_clean_vs_adv import StCleanVsAdv
from clrobust.names import FIGURE_FAMILIES
from clrobust.results import OutputFolder, Result

#: Family name -> its result class, in the order ``figures all`` draws them.
FAMILY_CLASSES: Dict[str, Type[FigureResult]] = {c.FAMILY: c for c in (StCleanVsAdv, AtProbes, EpsSweep, CrossModel)}
FAMILIES = FIGURE_FAMILIES
assert FAMILIES == tuple(FAMILY_CLASSES), "clrobust.names.FIGURE_FAMILIES must list the families in order"
ROLES: Dict[str, List[Role]] = {f: list(c.ROLES) for f, c in FAMILY_CLASSES.items()}


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


def compute_figures(families: Sequence[str], settings: FigureSettings, progress: bool = True,
                    cache_dir: Optional[Path] = None, dist: Optional[Dist] = None) -> Dict[str, FigureResult]:
    """Numbers of every figure in ``families``: one ``run_compare`` over all their models, probes as needed."""
    return compute_figures_and_results(families, settings, progress, cache_dir, dist)[0]


def compute_figures_and_results(families: Sequence[str], settings: FigureSettings, progress: bool = True,
                                cache_dir: Optional[Path] = None, dist: Optional[Dist] = None
                                ) -> Tuple[Dict[str, FigureResult], CompareResult]:
    """:func:`compute_figures` and the one ``compare-layers`` result the figures come from (under torchrun,
    ``dist``, the processes share the batches of every recording)."""
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
    cs = CompareSettings(models=specs, **data_fields(settings), split="test",
                         layers=settings.layers, attack=replace(settings.attack), n_samples=settings.n_samples,
                         batch_size=settings.batch_size, seed=settings.seed, device=settings.device,
                         load_options=settings.load_options, probe_train=settings.n_train,
                         classifier=settings.classifier,
                         adv_source=None if settings.adv_source is None else
                         settings.models.get(settings.adv_source, settings.adv_source))
    if cs.adv_source is not None and cs.adv_source not in specs:
        raise ClrobustError(f"--adv-source {settings.adv_source!r} is not one of these figures' models "
                            f"({', '.join(specs)}).")
    results = run_compare(cs, progress=progress, dist=dist)
    labels = dict(zip(specs, results.labels))
    out: Dict[str, FigureResult] = {}
    for f in families:
        cls = FAMILY_CLASSES[f]
        probes = compute_probes(f, settings, progress, cache_dir, dist) if getattr(cls, "NEEDS_PROBES", False) \
            else None
        out[f] = cls.build(settings, family_models(f, settings), results, labels, probes)
    return out, results


def compute_probes(family: str, settings: FigureSettings, progress: bool = True,
                   cache_dir: Optional[Path] = None, dist: Optional[Dist] = None) -> Dict[str, Any]:
    """Per-layer linear probes of every model of ``family`` (train split fit, test clean / adversarial)."""
    from clrobust.checkpoints import load
    from clrobust.data import chosen_images
    from clrobust.heads import choose_classifier, ensure_classifier
    from clrobust.probes import probe_layers

    train = chosen_images(settings, "train", settings.n_train, sampled=False)
    test = chosen_images(settings, "test", settings.n_samples)
    res = {}
    for role, spec in family_models(family, settings):
        lm = load(spec, device=settings.device, **settings.load_options.kwargs())
        choose_classifier(lm, test.num_classes, settings.data, settings.classifier)
        ensure_classifier(lm, train, settings.seed, progress)  # the attack needs a real head
        r = probe_layers(lm.network, train, test, settings.layers, replace(settings.attack), settings.batch_size,
                         settings.seed, progress, cache_dir, settings.device, dist)
        res[role.key] = r.to_dict()
    return res


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


@dataclass
class FiguresOutcome:
    """What ``make_figures`` computed and wrote."""

    figures: Dict[str, FigureResult]
    files: List[Path]
    findings: List[Finding] = field(default_factory=list)


def make_figures(families: Sequence[str], settings: FigureSettings, out: Path, overwrite: bool = False,
                 progress: bool = True, check: bool = False, dist: Optional[Dist] = None) -> FiguresOutcome:
    """Compute, draw and write every figure of ``families`` into ``out`` (PNG, PDF, JSON each).

    With ``check``, also tests the paper's findings and writes ``findings.json``. Under torchrun
    (``dist``) the processes share the batches and rank 0 writes.
    """
    check_models(families, settings)
    out = Path(out)
    main = dist is None or dist.is_main
    with OutputFolder(out, output_names(families) + (["findings.json"] if check else []), overwrite,
                      active=main) as folder:
        figs, compared = compute_figures_and_results(families, settings, progress and main,
                                                     cache_dir=out / "features", dist=dist)
        results: List[Result] = list(figs.values())
        findings = check_findings(figs, compared) if check else []
        if check:
            results.append(FindingsResult(findings, compared.uncertainty))
        files = folder.commit(results, settings.to_dict(), settings.seed)
    return FiguresOutcome(figs, files, findings)
