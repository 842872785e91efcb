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

#: The two models ``compare-layers`` compares when given none.
DEFAULT_PAIR = ("simclr-st", "simclr-at")


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
            ("data", "data", "{}"), ("width", "width", "{}"), ("device", "device", "{}"),
            ("train eps", "eps", "{}"), ("train attack", "train_attack", "{}"), ("epochs", "epochs", "{}"),
            ("seed", "seed", "{}"), ("clean", "clean_accuracy", "{:.1%}"),
            ("PGD-20 8/255 (II)", "pgd20_8_255_accuracy", "{:.1%}"),
            ("PGD-20 4/255 (I)", "tm1_pgd20_4_255_accuracy", "{:.1%}")]


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
    return {
        "name": weights.stem, "file": weights.name,
        "sha256": hashlib.sha256(weights.read_bytes()).hexdigest(),
        "size_bytes": weights.stat().st_size,
        "arch": meta["model"]["arch"], "width": meta["model"]["width"],
        "scheme": tr.get("scheme"), "scenario": tr.get("scenario"), "adv_method": tr.get("adv_method"),
        "eps": tr.get("eps_text") if tr.get("scenario") != "st" else "-",
        "train_attack": tr.get("train_attack"), "epochs": tr.get("epochs") if not tr.get("init") else
        f"{tr.get('classifier_epochs')} (+ {Path(str(tr.get('init'))).stem})",
        "seed": tr.get("seed"), "data": tr.get("data"), "train_seconds": tr.get("train_seconds"),
        "device": tr.get("device"),  # None: trained before the device was recorded (the shipped zoo: the CPU)
        "eval_data": m.get("eval_data", tr.get("data")), "storage": meta.get("storage", "float32"),
        **{k: m.get(k) for k in ("clean_accuracy", "pgd20_8_255_accuracy", "tm1_pgd20_4_255_accuracy",
                                 "eval_samples")},
    }


def rebuild_manifest(directory: Path) -> Dict[str, Any]:
    """Rewrite ``manifest.json`` and ``MANIFEST.md`` from every checkpoint's JSON in ``directory``."""
    directory = Path(directory)
    models = [_entry_from_metadata(p) for p in sorted(directory.glob("*.safetensors"))]
    order = {n: i for i, n in enumerate(["simclr-st", "simclr-at", "supcon-st", "supcon-at", "supervised-st",
                                         "supervised-at", "simclr-pat", "simclr-fat", "simclr-clae",
                                         "simclr-at-eps2", "simclr-at-eps16"])}
    models.sort(key=lambda e: (order.get(e["name"], 99), e["name"]))
    data: Dict[str, Any] = {"description": "clrobust embedded zoo, trained on cifar10-mini (4,660 train images); "
                           "accuracies on its 846 test images. Retrain: bash analyses/train_zoo.sh",
            "models": models}
    (directory / "manifest.json").write_text(json.dumps(data, indent=2) + "\n")
    (directory / "MANIFEST.md").write_text("# Embedded zoo\n\n" + data["description"] + "\n\n" +
                                          table(models, markdown=True) + "\n")
    return data


def table(models: List[Dict[str, Any]], markdown: bool = False) -> str:
    """The zoo as a text (or Markdown) table."""
    if not models:
        return "the zoo is empty (train it with analyses/train_zoo.sh)"
    rows = [[c[0] for c in _COLUMNS]]
    for e in models:
        rows.append([("-" if e.get(k) is None else fmt.format(e[k])) for _, k, fmt in _COLUMNS])
    if markdown:
        out = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
        out += ["| " + " | ".join(r) + " |" for r in rows[1:]]
        return "\n".join(out)
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows)
