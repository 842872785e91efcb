"""The embedded zoo: models committed under ``checkpoints/`` and listed in its manifest."""

from __future__ import annotations

import json
import os
import site
import sys
import sysconfig
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from clrobust.errors import ClrobustError
from clrobust.uncertainty import wilson_interval, with_interval

#: The two models ``compare-layers`` compares when given none.
DEFAULT_PAIR = ("simclr-st-s0", "simclr-at-s0")


def zoo_dir() -> Path:
    """Where the zoo is: ``$CLROBUST_ZOO`` if set, else the clone's ``checkpoints/`` folder (a
    development install), else the copy an installed wheel brings (``<prefix>/share/clrobust/checkpoints``)."""
    env = os.environ.get("CLROBUST_ZOO")
    if env:
        return Path(env)
    clone = Path(__file__).resolve().parents[2] / "checkpoints"
    if (clone / "manifest.json").exists():
        return clone
    for prefix in (sysconfig.get_path("data"), sys.prefix, site.getuserbase()):
        installed = Path(prefix) / "share" / "clrobust" / "checkpoints"
        if (installed / "manifest.json").exists():
            return installed
    return clone


#: Manifest fields shown as percentages: a number or null.
_NUMBERS = ("clean_accuracy", "pgd20_8_255_accuracy", "tm1_pgd20_4_255_accuracy")


def manifest(directory: Optional[Path] = None) -> Dict[str, Any]:
    """The zoo's ``manifest.json``, checked: an object whose ``models`` is a list of objects, each
    with a string ``name`` and ``file`` and numbers (or null) for its accuracies.

    Raises:
        ClrobustError: an unreadable or malformed manifest, the entry and field named.
    """
    path = (directory or zoo_dir()) / "manifest.json"
    if not path.exists():
        return {"models": []}
    fix = "rebuild it with `clrobust zoo --rebuild-manifest`"
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ClrobustError(f"zoo manifest {str(path)!r} is unreadable ({' '.join(str(exc).split())}); "
                            f"{fix}.") from None
    if not isinstance(data, dict) or not isinstance(data.get("models", []), list):
        raise ClrobustError(f"zoo manifest {str(path)!r} is not an object with a list of models; {fix}.")
    for i, e in enumerate(data.get("models", [])):
        problem = None
        if not isinstance(e, dict):
            problem = f"is a {type(e).__name__}, not an object"
        elif not all(isinstance(e.get(k), str) and e.get(k) for k in ("name", "file")):
            problem = "lacks a name or a file"
        else:
            bad = [k for k in _NUMBERS if e.get(k) is not None
                   and (isinstance(e[k], bool) or not isinstance(e[k], (int, float)))]
            problem = f"has a {bad[0]} that is not a number" if bad else None
        if problem:
            raise ClrobustError(f"zoo manifest {str(path)!r}: model entry {i} {problem}; {fix}.")
    return data


def entries(directory: Optional[Path] = None) -> List[Dict[str, Any]]:
    return list(manifest(directory).get("models", []))


def names(directory: Optional[Path] = None) -> List[str]:
    return [e["name"] for e in entries(directory)]


def resolve(name_or_path: str) -> Tuple[str, Path]:
    """Map a zoo name, a checkpoint path or a library model (``torchvision:NAME[=WEIGHTS]``) to (label, path)."""
    from clrobust.checkpoints.library import library_label, parse_library_spec

    library = parse_library_spec(name_or_path)
    if library is not None:
        weights = library[1]
        if weights is not None and not weights.is_file():
            raise ClrobustError(f"weights file {str(weights)!r} of {library[0]} not found; check the path.")
        return library_label(name_or_path), weights if weights is not None else Path(name_or_path)
    p = Path(name_or_path)
    if p.suffix in (".safetensors", ".json", ".pt", ".pth", ".ckpt", ".tar", ".t7") or p.exists() \
            or os.sep in name_or_path:
        if not p.exists() and not p.with_name(p.name + ".safetensors").exists():
            raise ClrobustError(f"checkpoint {name_or_path!r} not found.")
        label = p.name
        for suffix in (".safetensors", ".json", ".pth.tar", ".pt", ".pth", ".ckpt", ".tar", ".t7"):
            if label.endswith(suffix) and len(label) > len(suffix):
                label = label[: -len(suffix)]
                break
        return label, p
    zoo = zoo_dir()
    candidate = zoo / f"{name_or_path}.safetensors"
    if candidate.exists():
        return name_or_path, candidate
    known = names()
    raise ClrobustError(f"unknown model {name_or_path!r}: not a file and not in the zoo "
                        f"({', '.join(known) if known else 'zoo is empty'}).")


def expand_group(spec: str) -> List[str]:
    """The checkpoints a model argument names: a group of one recipe's training runs, or itself.

    * ``NAME@a,b,c``: ``NAME-a``, ``NAME-b``, ``NAME-c`` (zoo names or paths; a ``.safetensors``
      suffix of NAME stays at the end), e.g. ``simclr-at@s0,s1,s2``;
    * a glob (``runs/simclr-at-s*.safetensors``): the matching files, sorted;
    * anything else: ``[spec]``.

    Raises:
        ClrobustError: an empty ``@`` list or a glob that matches nothing.
    """
    import glob

    if "@" in spec:
        base, _, members = spec.rpartition("@")
        names = [m.strip() for m in members.split(",") if m.strip()]
        if not base or not names:
            raise ClrobustError(f"model group {spec!r}: write NAME@a,b,c (e.g. simclr-at@s0,s1,s2).")
        stem, suffix = (base[: -len(".safetensors")], ".safetensors") if base.endswith(".safetensors") else (base, "")
        return [f"{stem}-{m}{suffix}" for m in names]
    if any(c in spec for c in "*?["):
        hits = sorted(p for p in glob.glob(os.path.expanduser(spec)) if not p.endswith(".json"))
        if not hits:
            raise ClrobustError(f"model group {spec!r} matches no file.")
        return hits
    return [spec]


def expand_models(specs: List[str]) -> Tuple[List[str], Dict[str, List[str]]]:
    """Every model argument expanded (:func:`expand_group`), and the groups: argument -> its specs
    (only arguments that named more than one checkpoint)."""
    out: List[str] = []
    groups: Dict[str, List[str]] = {}
    for spec in specs:
        members = expand_group(spec)
        out += members
        if len(members) > 1 or members != [spec]:
            groups[spec] = members
    return out, groups


_COLUMNS = [("name", "name", "{}"), ("scheme", "scheme", "{}"), ("scenario", "scenario", "{}"),
            ("train data", "train_data", "data"), ("width", "width", "{}"), ("device", "device", "{}"),
            ("train eps", "eps", "{}"), ("train attack", "train_attack", "{}"), ("epochs", "epochs", "{}"),
            ("seed", "seed", "{}"), ("train time", "train_seconds", "time"), ("clean", "clean_accuracy", "ci"),
            ("PGD-20 8/255 (II)", "pgd20_8_255_accuracy", "ci"),
            ("PGD-20 4/255 (I)", "tm1_pgd20_4_255_accuracy", "ci")]


def _cell(e: Dict[str, Any], key: str, fmt: str) -> str:
    if key == "train_data" and e.get(key) is None:  # a manifest from before train_data was recorded
        key, fmt = "data", "{}"
    if e.get(key) is None:
        return "-"
    if fmt == "time":
        return duration(e)
    if fmt == "data":  # the training images, short: cifar10-mini, cifar10-jpeg/train (an image folder's name)
        return str(e[key]).removeprefix("image folder ").removesuffix(" train split")
    if fmt == "ci":
        low, high = (e.get(f"{key}_ci") or (None, None))
        return with_interval(e[key], low, high, percent=True)
    return fmt.format(e[key])


def _entry_from_metadata(path: Path) -> Dict[str, Any]:
    import hashlib

    try:
        meta = json.loads(path.with_suffix(".json").read_text())
        meta["model"]["arch"], meta["model"]["width"]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ClrobustError(f"{str(path.with_suffix('.json'))!r} is missing or malformed ({type(exc).__name__}: "
                            f"{exc}); every zoo checkpoint needs the metadata its training wrote.") from None
    tr, m = meta.get("training", {}), meta.get("metrics", {})
    weights = path.with_suffix(".safetensors")
    entry: Dict[str, Any] = {
        "name": weights.stem, "file": weights.name,
        "sha256": hashlib.sha256(weights.read_bytes()).hexdigest(),
        "size_bytes": weights.stat().st_size,
        "arch": meta["model"]["arch"], "width": meta["model"]["width"],
        "scheme": tr.get("scheme"), "scenario": tr.get("scenario"), "adv_method": tr.get("adv_method"),
        "eps": tr.get("eps_text") if tr.get("scenario") != "st" else "-",
        "train_attack": tr.get("train_attack"), **training_summary(tr),
        "eval_data": m.get("eval_data", tr.get("data")), "storage": meta.get("storage", "float32"),
        "eval_samples": m.get("eval_samples"),
        "eval_images": m.get("eval_images") or (f"the first {m['eval_samples']} of the "
                                                f"{m.get('eval_data', tr.get('data'))} test split"
                                                if m.get("eval_samples") else None),
    }
    n = m.get("eval_samples")
    for key in _NUMBERS:  # each accuracy with its 95% Wilson interval over the evaluation images
        entry[key] = m.get(key)
        if isinstance(n, int) and n > 0 and m.get(key) is not None:
            entry[f"{key}_ci"] = list(wilson_interval(round(m[key] * n), n))
    return entry


def _devices(tr: Dict[str, Any]) -> Any:
    """The device a model trained on, or every kind when resumed runs used several (``cpu+cuda``); None for a
    model trained before the device was recorded (the shipped width-8 zoo: the CPU)."""
    kinds = sorted({str(d).split()[0] for d in tr.get("train_devices") or []})
    return "+".join(kinds) if len(kinds) > 1 else tr.get("device")


def training_summary(tr: Dict[str, Any]) -> Dict[str, Any]:
    """What a checkpoint's ``training`` metadata says about how it was trained: data, epochs, seed, device and
    the cost (summed over resumed runs; ``train_seconds`` alone for models trained before the rest was recorded)."""
    return {
        "epochs": tr.get("epochs") if not tr.get("init") else
        f"{tr.get('classifier_epochs')} (+ {Path(str(tr.get('init'))).stem})",
        "seed": tr.get("seed"), "data": tr.get("data"), "train_data": _train_images(tr),
        "device": _devices(tr),
        **{k: tr.get(k) for k in ("train_seconds", "optimizer_steps", "train_images", "train_devices",
                                  "train_precisions", "untimed_epochs") if tr.get(k) is not None},
    }


def duration(e: Dict[str, Any]) -> str:
    """``31 min`` or ``2.4 h`` (a :func:`training_summary`'s time); ``>=`` when it is a lower bound (epochs trained
    before timings were recorded, or a model from before the time was summed over resumed runs: its last run only)."""
    s = float(e["train_seconds"])
    text = f"{s / 60:.0f} min" if s < 5400 else f"{s / 3600:.1f} h"
    return (">=" + text) if e.get("untimed_epochs") or "optimizer_steps" not in e else text


def _train_images(tr: Dict[str, Any]) -> Optional[str]:
    """Which images a model was trained on, in words (the folder's name, never the machine's path to it)."""
    data = tr.get("data")
    if data == "imagefolder":
        root = Path(str(tr.get("data_root") or "?")).name
        return f"image folder {root}/train" + (f", first {tr['n_train']}" if tr.get("n_train") else "")
    if data is None:
        return None
    return f"{data} train split" + (f", first {tr['n_train']}" if tr.get("n_train") else "")


def rebuild_manifest(directory: Path) -> Dict[str, Any]:
    """Rewrite ``manifest.json`` and ``MANIFEST.md`` from every checkpoint's JSON in ``directory``."""
    directory = Path(directory)
    models = [_entry_from_metadata(p) for p in sorted(directory.glob("*.safetensors"))]
    order = {n: i for i, n in enumerate(["simclr-st", "simclr-at", "supcon-st", "supcon-at", "supervised-st",
                                         "supervised-at", "simclr-pat", "simclr-fat", "simclr-clae",
                                         "simclr-at-eps2", "simclr-at-eps16"])}
    models.sort(key=lambda e: (order.get(e["name"], 99), e["name"]))
    data: Dict[str, Any] = {"description": describe(models), "models": models}
    (directory / "manifest.json").write_text(json.dumps(data, indent=2) + "\n")
    (directory / "MANIFEST.md").write_text("# Embedded zoo\n\n" + data["description"] + "\n\n" +
                                          table(models, markdown=True) + "\n")
    return data


def describe(models: List[Dict[str, Any]]) -> str:
    """The manifest's description: which images the models were trained on and which the accuracies come from."""
    trained = sorted({str(e.get("train_data") or e.get("data")) for e in models})
    evaluated = sorted({str(e.get("eval_images")) for e in models if e.get("eval_images")})
    return (f"clrobust zoo of {len(models)} models, trained on: {'; '.join(trained)}. Accuracies on "
            f"{'; '.join(evaluated) or 'unrecorded images'}, each with its 95% Wilson interval over those "
            "images; PGD-20 at 8/255 end to end (threat model II) and the label-free representation attack at "
            "4/255 (threat model I). Train time: over every resumed run, less any time the job was stopped "
            "(which older records include). Retrain: bash "
            "analyses/train_zoo.sh (this zoo) or analyses/train_zoo_full.sh DATA_ROOT (the 50,000-image zoo).")


def table(models: List[Dict[str, Any]], markdown: bool = False) -> str:
    """The zoo as a text (or Markdown) table."""
    if not models:
        return "the zoo is empty (train it with analyses/train_zoo.sh)"
    rows = [[c[0] for c in _COLUMNS]]
    for e in models:
        rows.append([_cell(e, k, fmt) for _, k, fmt in _COLUMNS])
    if markdown:
        out = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
        out += ["| " + " | ".join(r) + " |" for r in rows[1:]]
        return "\n".join(out)
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows)


#: A manifest accuracy -> the audit row that measures it (attack, norm, eps); the clean accuracy is every row's.
_AUDIT_ROWS: Dict[str, Tuple[str, str, float]] = {"pgd20_8_255_accuracy": ("pgd20", "Linf", 8 / 255),
                                                  "tm1_pgd20_4_255_accuracy": ("tm1-pgd20", "Linf", 4 / 255)}


def read_audit_report(path: Path) -> Dict[str, Any]:
    """An audit's ``report.json`` (or the folder holding it), checked to hold rows.

    Raises:
        ClrobustError: a missing, unreadable or malformed report, named.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "report.json"
    try:
        report = json.loads(path.read_text())
        rows = report["rows"]
        for r in rows:
            r["model"], r["attack"], r["norm"], float(r["eps"]), float(r["clean_accuracy"])
            float(r["robust_accuracy"]), int(r["n"])
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise ClrobustError(f"{str(path)!r} is no audit report ({type(exc).__name__}: {exc}); give the report.json "
                            "(or the --out folder) that `clrobust audit` wrote.") from None
    return report


def check_against_audits(models: List[Dict[str, Any]], reports: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Each manifest accuracy beside an audit's measurement of it (same model name, attack, norm and eps), both
    with their 95% Wilson intervals; ``within``: the audit's value lies inside the manifest's interval."""
    out: List[Dict[str, Any]] = []
    for e in models:
        for key in _NUMBERS:
            if e.get(key) is None:
                continue
            hit = None
            for report in reports:
                for r in report["rows"]:
                    if r["model"] != e["name"]:
                        continue
                    if key == "clean_accuracy":
                        hit = (float(r["clean_accuracy"]), int(r["n"]), report)
                    else:
                        attack, norm, eps = _AUDIT_ROWS[key]
                        if (r["attack"], r["norm"]) == (attack, norm) and abs(float(r["eps"]) - eps) < 1e-9:
                            hit = (float(r["robust_accuracy"]), int(r["n"]), report)
                    if hit:
                        break
                if hit:
                    break
            if hit is None:
                continue
            value, n, report = hit
            low, high = e.get(f"{key}_ci") or (None, None)
            out_ci = list(wilson_interval(round(value * n), n))
            out.append({"model": e["name"], "number": key, "manifest": e[key], "manifest_ci": [low, high],
                        "manifest_n": e.get("eval_samples"), "manifest_images": e.get("eval_images"),
                        "audit": value, "audit_ci": out_ci, "audit_n": n,
                        "audit_images": report.get("data", {}).get("chosen"),
                        "within": None if low is None or high is None else bool(low <= value <= high),
                        "overlap": None if low is None or high is None else
                        bool(low <= out_ci[1] and out_ci[0] <= high)})
    return out


def check_table(rows: List[Dict[str, Any]]) -> str:
    """:func:`check_against_audits` as a text table and a summary line."""
    if not rows:
        return "no manifest number has a matching audit row (same model name; pgd20 at 8/255, tm1-pgd20 at 4/255)"
    head = ["model", "number", "manifest [95% CI] (n)", "audit [95% CI] (n)", "within"]
    body = [[r["model"], r["number"],
             f"{with_interval(r['manifest'], r['manifest_ci'][0], r['manifest_ci'][1], percent=True)} "
             f"({r['manifest_n'] or '?'})",
             f"{with_interval(r['audit'], r['audit_ci'][0], r['audit_ci'][1], percent=True)} ({r['audit_n']})",
             "-" if r["within"] is None else "yes" if r["within"] else
             "intervals overlap" if r["overlap"] else "NO"] for r in rows]
    widths = [max(len(x[i]) for x in [head] + body) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(x, widths)).rstrip() for x in [head] + body]
    judged = [r for r in rows if r["within"] is not None]
    lines.append(f"{sum(r['within'] for r in judged)} of {len(judged)} audit numbers lie within the manifest's "
                 f"95% intervals, {sum(r['overlap'] for r in judged)} intervals overlap. Audit images: "
                 f"{'; '.join(sorted({str(r['audit_images'] or 'not recorded') for r in rows}))}; manifest images: "
                 f"{'; '.join(sorted({str(r['manifest_images']) for r in rows}))}. " + _clean_agreement(rows))
    return "\n".join(lines)


def _clean_agreement(rows: List[Dict[str, Any]]) -> str:
    """Whether each clean accuracy measured on as many images as the manifest's equals it, in images: an
    unattacked count has no random start, so any difference is the model or the images, not chance."""
    same = [r for r in rows if r["number"] == "clean_accuracy" and r["manifest_n"] == r["audit_n"]]
    if not same:
        return "No clean accuracy was measured on as many images as the manifest's."
    differ = [(r["model"], round((r["audit"] - r["manifest"]) * r["audit_n"])) for r in same
              if round(r["audit"] * r["audit_n"]) != round(r["manifest"] * r["audit_n"])]
    text = (f"Clean accuracy on as many images as the manifest's (--sampling first): equal for "
            f"{len(same) - len(differ)} of {len(same)} models")
    if differ:
        text += "; differs for " + ", ".join(f"{m} ({d:+d} image{'s' if abs(d) != 1 else ''})" for m, d in differ)
    return text + ". Attacked numbers also vary with the attack's random starts."
