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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar, Dict, List, Mapping, Optional, Sequence, Type, TypeVar

from clrobust.errors import ClrobustError
from clrobust.provenance import versions, write_json

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
    return {"command": dict(settings), "versions": versions(), "seed": seed}


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
