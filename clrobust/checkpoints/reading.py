"""Read a checkpoint file into Python objects, safely by default.

``.pt``/``.pth``/``.ckpt``/``.tar``/``.t7`` files are read with
``torch.load(weights_only=True)``, which refuses to build arbitrary Python
objects; ``.safetensors`` files hold tensors only. A file that needs a global
outside torch's allow-list is refused with the global's name, unless the user
trusts it (``trust=True``, ``--trust-checkpoint``).
"""

from __future__ import annotations

import argparse
import pickle
import re
import warnings
from pathlib import Path
from typing import Any, Callable, List, Tuple, Union

import torch

from clrobust.errors import ClrobustError

#: Harmless classes some projects pickle beside their weights (SupContrast's ``opt``).
SAFE_GLOBALS: List[Union[Callable[..., Any], Tuple[Callable[..., Any], str]]] = [argparse.Namespace]

_GLOBAL_RE = re.compile(r"GLOBAL\s+([\w.]+)")
_WEIGHTS_ONLY_RE = re.compile(r"WeightsUnpickler error:\s*([^\n]+)")


def read_checkpoint_file(path: Union[str, Path], trust: bool = False) -> Any:
    """Return the object stored in ``path`` (a dict of tensors for safetensors).

    Raises:
        ClrobustError: missing, empty, truncated or HTML file, or a pickle needing
            a global that is not allow-listed while ``trust`` is False.
    """
    p = Path(path)
    if not p.is_file():
        raise ClrobustError(f"checkpoint {str(p)!r} not found; check the path.")
    with open(p, "rb") as f:
        head = f.read(512)
    if not head:
        raise ClrobustError(f"checkpoint {str(p)!r} is empty; re-download it.")
    if _looks_like_html(head):
        raise ClrobustError(f"{str(p)!r} is an HTML page, not a checkpoint (the download saved a web page); "
                            "download the file itself (the 'raw' or direct link).")
    if p.suffix == ".safetensors":
        return _read_safetensors(p)
    return _read_pickle(p, trust)


def _looks_like_html(head: bytes) -> bool:
    text = head.lstrip().lower()
    return text.startswith((b"<!doctype html", b"<html", b"<head", b"<?xml", b"<!--"))


def _read_safetensors(p: Path) -> Any:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(p), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise ClrobustError(f"checkpoint {str(p)!r} is corrupt or not a safetensors file "
                            f"({_first_line(exc)}); re-download it.") from None


def _read_pickle(p: Path, trust: bool) -> Any:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # pickle-protocol notes; errors still raise
            if trust:
                return torch.load(str(p), map_location="cpu", weights_only=False)
            with torch.serialization.safe_globals(SAFE_GLOBALS):
                return torch.load(str(p), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        name = offending_global(str(exc))
        if name is not None and not trust:
            raise ClrobustError(
                f"{str(p)!r} needs the Python global {name!r} to unpickle, which safe loading refuses "
                "(unpickling can run arbitrary code); if you trust the file's source, pass "
                "--trust-checkpoint (trust=True).") from None
        detail = _WEIGHTS_ONLY_RE.search(str(exc))
        if detail and not trust:
            raise ClrobustError(
                f"{str(p)!r} cannot be read safely ({detail.group(1).strip()}): it is corrupt, or a plain "
                "pickle that safe loading does not support; re-download it, or pass --trust-checkpoint "
                "(trust=True) if you trust its source.") from None
        raise ClrobustError(f"checkpoint {str(p)!r} is corrupt or not a PyTorch file "
                            f"({_short(exc)}); re-download it.") from None
    except ClrobustError:
        raise
    except ModuleNotFoundError as exc:
        raise ClrobustError(f"{str(p)!r} refers to module {exc.name!r}, which is not installed; "
                            "install it or convert the file on a machine that has it.") from None
    except Exception as exc:  # zip errors, truncation, EOF, bad magic number ...
        raise ClrobustError(f"checkpoint {str(p)!r} is corrupt, truncated or not a PyTorch file "
                            f"({_short(exc)}); re-download it.") from None


def offending_global(message: str) -> Union[str, None]:
    """The ``module.name`` global that torch's weights-only unpickler refused, if the message names one."""
    m = _GLOBAL_RE.search(message)
    return m.group(1) if m else None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _short(exc: BaseException) -> str:
    """A one-line summary of a torch.load failure (its messages run to many lines)."""
    text = " ".join(str(exc).split())
    m = re.search(r"(invalid load key[^.]*|failed finding central directory|"
                  r"PytorchStreamReader failed[^.]*|Ran out of input|unexpected EOF[^.]*)", text)
    if m:
        return m.group(1)
    text = text or type(exc).__name__
    return text if len(text) <= 160 else text[:157] + "..."
