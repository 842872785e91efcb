"""Typed results and the one writer of every job's output folder.

A job (compare-layers, probe-layers, audit, figures) has a settings dataclass, a
``run()`` and a result dataclass derived from :class:`Result`. A result knows its
JSON layout (``to_dict``, with a ``schema`` version, and ``from_dict``/``read`` back),
its CSV tables, its Markdown summary and the figures drawn from it; only
:func:`write_results` puts files on disk.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar, Dict, List, Mapping, Optional, Sequence, Type, TypeVar

from clrobust.errors import ClrobustError
from clrobust.provenance import arithmetic, versions, write_json

R = TypeVar("R", bound="Result")
#: Draws one figure into the given path.
Drawer = Callable[[Path], None]


@dataclass
class Table:
    """A CSV file's content: a header and rows of plain values."""

    header: List[str]
    rows: List[List[Any]]


class Result:
    """What every job's result can say about itself; see the module docstring."""

    #: ``clrobust.<job>/<version>``: raised when a key changes meaning or goes away.
    SCHEMA: ClassVar[str] = ""

    def json_name(self) -> str:
        """File name of the JSON (``results.json``, ``report.json``, ...)."""
        raise NotImplementedError

    def to_dict(self) -> Dict[str, Any]:
        """The JSON layout, ``schema`` first."""
        raise NotImplementedError

    @classmethod
    def from_dict(cls: Type[R], d: Mapping[str, Any]) -> R:
        raise NotImplementedError

    @classmethod
    def read(cls: Type[R], path: Path) -> R:
        """A result written earlier; refuses a file of another job or schema version."""
        try:
            d = json.loads(Path(path).read_text())
        except (OSError, ValueError) as exc:
            raise ClrobustError(f"cannot read {str(path)!r} as a result file: {exc}") from None
        if not isinstance(d, dict) or d.get("schema") != cls.SCHEMA:
            got = d.get("schema") if isinstance(d, dict) else type(d).__name__
            raise ClrobustError(f"{str(path)!r} has schema {got!r}, not {cls.SCHEMA!r}.")
        return cls.from_dict(d)

    def tables(self) -> Dict[str, Table]:
        """CSV files by name."""
        return {}

    def markdown_name(self) -> Optional[str]:
        return None

    def markdown(self) -> str:
        """A short human-readable summary (written to :meth:`markdown_name` when it has one)."""
        return ""

    def figures(self) -> Dict[str, Drawer]:
        """Figure files by name, each drawn from this result only."""
        return {}

    def file_names(self) -> List[str]:
        """Every file :func:`write_results` writes for this result."""
        md = self.markdown_name()
        return [self.json_name(), *self.tables(), *([md] if md else []), *self.figures()]


def settings_record(settings: Mapping[str, Any], seed: int) -> Dict[str, Any]:
    """settings.json: the command's settings, its seed and the versions that shaped the numbers."""
    return {"command": dict(settings), "versions": versions(), "seed": seed, "arithmetic": arithmetic()}


def write_results(out: Path, results: Sequence[Result], settings: Optional[Mapping[str, Any]] = None,
                  seed: int = 0) -> List[Path]:
    """Write every result's JSON, CSV tables, Markdown and figures, then ``settings.json``, into ``out``.

    ``out`` must exist (jobs check it before any work). Returns the paths written.
    """
    out = Path(out)
    written: List[Path] = []
    for r in results:
        write_json(out / r.json_name(), r.to_dict())
        written.append(out / r.json_name())
        for name, table in r.tables().items():
            with open(out / name, "w", newline="") as fh:
                w = csv.writer(fh)
                w.writerow(table.header)
                w.writerows(table.rows)
            written.append(out / name)
        md = r.markdown_name()
        if md:
            (out / md).write_text(r.markdown() + "\n")
            written.append(out / md)
        for name, draw in r.figures().items():
            draw(out / name)
            written.append(out / name)
    if settings is not None:
        write_json(out / "settings.json", settings_record(settings, seed))
        written.append(out / "settings.json")
    return written


MANIFEST = "manifest.json"
MANIFEST_SCHEMA = "clrobust.manifest/1"


class OutputFolder:
    """``--out``, written all or nothing.

    On entering: ``out`` must be a folder or absent; an exclusive lock beside it stops
    a second run; a complete earlier result (its ``manifest.json``, or for folders
    written before manifests existed, any of ``result_names``) is refused unless
    ``overwrite``; a staging folder beside ``out`` is created, so an unwritable
    place fails before any compute. :meth:`commit` writes every file into the
    staging folder, removes what the old manifest names (``--overwrite``, never a
    user's other files), moves the new files in and writes the manifest last. An
    exception or signal before that removes the staging folder: nothing that looks
    complete is left. ``active=False`` (torchrun ranks other than 0) does nothing.
    """

    def __init__(self, out: Path, result_names: Sequence[str], overwrite: bool, active: bool = True) -> None:
        self.out = Path(out)
        self.result_names = list(result_names)
        self.overwrite = overwrite
        self.active = active
        self.staging = self.out.parent / f".{self.out.name}.partial"
        self._lock: Optional[Any] = None
        self._created: List[Path] = []
        self.files: List[Path] = []

    def __enter__(self) -> "OutputFolder":
        if not self.active:
            return self
        out = self.out
        if out.exists() and not out.is_dir():
            raise ClrobustError(f"--out {str(out)!r} is a file, not a folder; choose another path.")
        self._created = [p for p in (out, *out.parents) if not p.exists()]  # removed again if the run fails
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ClrobustError(f"cannot create --out {str(out)!r} ({exc.strerror}); choose another path.") from None
        self._acquire_lock()
        try:
            previous = self.previous_files()
            if previous and not self.overwrite:
                raise ClrobustError(f"--out {str(out)!r} already holds results ({', '.join(previous[:3])}); "
                                    "choose another folder or pass --overwrite.")
            shutil.rmtree(self.staging, ignore_errors=True)  # left by a run that was killed outright
            self.staging.mkdir()
            out.mkdir(exist_ok=True)  # caches and resumable state live in --out itself
        except OSError as exc:
            self._release_lock()
            self._remove_created()
            raise ClrobustError(f"cannot write to --out {str(out)!r} ({exc.strerror}); "
                                "choose a folder you can write to.") from None
        except BaseException:
            self._release_lock()
            self._remove_created()
            raise
        return self

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        if self.active:
            shutil.rmtree(self.staging, ignore_errors=True)
            self._release_lock()
            if exc_type is not None:
                self._remove_created()

    def _remove_created(self) -> None:
        """A failed run leaves no folder it created, as long as nothing else was put there."""
        for folder in self._created:  # deepest first
            try:
                folder.rmdir()
            except OSError:
                break

    def previous_files(self) -> List[str]:
        """Files of a complete earlier result in ``out`` (from its manifest, else the known result names)."""
        manifest = self.out / MANIFEST
        if manifest.is_file():
            try:
                files = json.loads(manifest.read_text())["files"]
                return [str(f) for f in files if isinstance(f, str) and "/" not in f and f not in ("", ".", "..")]
            except (OSError, ValueError, KeyError, TypeError):
                return [MANIFEST]
        return [n for n in self.result_names if (self.out / n).exists()]

    def commit(self, results: Sequence[Result], settings: Optional[Mapping[str, Any]] = None,
               seed: int = 0) -> List[Path]:
        """Write ``results`` (and settings.json) and move them into ``out`` with a manifest."""
        if not self.active:
            return []
        staged = write_results(self.staging, results, settings, seed)
        names = [p.name for p in staged]
        for old in self.previous_files():
            if old not in names:
                (self.out / old).unlink(missing_ok=True)  # a stale figure of an earlier model, say
        (self.out / MANIFEST).unlink(missing_ok=True)
        for name in names:
            os.replace(self.staging / name, self.out / name)
        write_json(self.out / MANIFEST, {"schema": MANIFEST_SCHEMA, "files": names + [MANIFEST],
                                         "complete": True, "versions": versions()})
        self.files = [self.out / n for n in names] + [self.out / MANIFEST]
        return self.files

    def _acquire_lock(self) -> None:
        import fcntl

        path = self.out.parent / f".{self.out.name}.lock"
        try:
            fh = open(path, "w")
        except OSError as exc:
            raise ClrobustError(f"cannot write beside --out {str(self.out)!r} ({exc.strerror}); "
                                "choose a folder you can write to.") from None
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.close()
            raise ClrobustError(f"another clrobust run is writing --out {str(self.out)!r}; wait for it to finish "
                                "or choose another folder.") from None
        self._lock = (fh, path)

    def _release_lock(self) -> None:
        if self._lock is not None:
            fh, path = self._lock
            path.unlink(missing_ok=True)
            fh.close()
            self._lock = None
