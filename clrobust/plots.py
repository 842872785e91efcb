"""Figures from arrays; nothing here computes a result.

Figures are :class:`matplotlib.figure.Figure` objects saved straight to files: no
pyplot state, and matplotlib's backend is neither chosen nor changed by clrobust
(importing it in a notebook leaves the notebook's backend alone).
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Tuple

import numpy as np


def new_figure(nrows: int = 1, ncols: int = 1, *, figsize: Tuple[float, float], **kw: Any) -> Tuple[Any, Any]:
    """(figure, axes) drawn off-screen, as ``plt.subplots`` gives them, without touching pyplot."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    return fig, fig.subplots(nrows, ncols, **kw)


def _set_title(ax: Any, title: str, fontsize: float = 9) -> None:
    """``ax``'s title, each line wrapped at word breaks to the axes' width (a long model name or path
    would otherwise run into the colour bar or the next panel)."""
    spec = ax.get_subplotspec()  # the axes' grid slot (what is left of it once a colour bar took its share)
    box = spec.get_position(ax.figure) if spec is not None else ax.get_position()
    inches = box.width * ax.figure.get_figwidth()
    chars = max(24, int(inches * 170 / fontsize))  # 19 characters an inch at 9 pt, as drawn
    ax.set_title("\n".join(textwrap.fill(line, chars) for line in title.split("\n")), fontsize=fontsize)


def heatmap(ax, matrix: np.ndarray, rows: Sequence[str], cols: Sequence[str], title: str,
            row_label: str = "", col_label: str = "", cbar: bool = True) -> None:
    """A CKA heatmap on ``ax``, colour scale fixed to [0, 1], first layer at the bottom-left."""
    import seaborn as sns

    sns.heatmap(matrix[::-1], ax=ax, vmin=0, vmax=1, cmap="magma", square=True, cbar=cbar,
                xticklabels=list(cols), yticklabels=list(rows)[::-1], cbar_kws={"label": "linear CKA"})
    _set_title(ax, title)
    ax.set_xlabel(col_label, fontsize=8)
    ax.set_ylabel(row_label, fontsize=8)
    ax.tick_params(labelsize=6)


def interval_width_heatmap(ax, width: np.ndarray, rows: Sequence[str], cols: Sequence[str], title: str) -> None:
    """The width of each entry's 95% interval (same layout as :func:`heatmap`, its own colour scale)."""
    import seaborn as sns

    sns.heatmap(width[::-1], ax=ax, vmin=0, cmap="viridis", square=True, xticklabels=list(cols),
                yticklabels=list(rows)[::-1], cbar_kws={"label": "95% interval width"})
    _set_title(ax, title)
    ax.tick_params(labelsize=6)


def save_heatmap(path: Path, matrix: np.ndarray, rows: Sequence[str], cols: Sequence[str], title: str,
                 row_label: str = "", col_label: str = "", ci_width: Optional[np.ndarray] = None) -> None:
    """A CKA heatmap; with ``ci_width``, a second panel beside it holds each entry's interval width."""
    size = max(4.5, 0.32 * max(len(rows), len(cols)) + 2)
    if ci_width is None:
        fig, ax = new_figure(figsize=(size + 1, size))
        heatmap(ax, matrix, rows, cols, title, row_label, col_label)
    else:
        fig, (ax, ax_w) = new_figure(1, 2, figsize=(2 * size + 2, size))
        heatmap(ax, matrix, rows, cols, title, row_label, col_label)
        interval_width_heatmap(ax_w, ci_width, rows, cols, f"width of the 95% bootstrap interval\n(max "
                               f"{float(np.nanmax(ci_width)):.3f})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def disparity_axes(ax, curves: Mapping[str, Sequence[float]], layers: Mapping[str, Sequence[str]],
                   title: str, legend: Optional[Mapping[str, str]] = None,
                   bands: Optional[Mapping[str, Mapping[str, Sequence[float]]]] = None,
                   baselines: Optional[Mapping[str, Sequence[float]]] = None) -> None:
    """Disparity 1 - CKA(clean_l, adv_l) over relative depth, one line per model, with its 95% band
    (``bands``: label -> {"ci_low", "ci_high"}) and a dashed line of the same colour for the random-noise
    control (``baselines``: label -> curve)."""
    for label, values in curves.items():
        v = np.asarray(values, dtype=float)
        depth = np.linspace(0, 1, len(v)) if len(v) > 1 else np.zeros(1)
        (line,) = ax.plot(depth, v, marker="o", ms=3, label=(legend or {}).get(label, label))
        band = (bands or {}).get(label)
        if band:
            ax.fill_between(depth, band["ci_low"], band["ci_high"], color=line.get_color(), alpha=0.2, lw=0)
        base = (baselines or {}).get(label)
        if base is not None:
            ax.plot(depth, np.asarray(base, dtype=float), ls="--", lw=1, color=line.get_color(),
                    label=f"{label}: random noise, same eps")
    first = next(iter(layers.values()))
    if all(list(l) == list(first) for l in layers.values()):
        ticks = np.linspace(0, 1, len(first)) if len(first) > 1 else [0]
        ax.set_xticks(ticks)
        ax.set_xticklabels(first, rotation=60, ha="right", fontsize=6)
        ax.set_xlabel("layer")
    else:
        ax.set_xlabel("relative depth")
    ax.set_ylim(0, 1.02)
    ax.set_ylabel("disparity  1 - CKA(clean, adversarial)")
    _set_title(ax, title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)


def save_disparity(path: Path, curves: Mapping[str, Sequence[float]], layers: Mapping[str, Sequence[str]],
                   title: str, legend: Optional[Mapping[str, str]] = None,
                   bands: Optional[Mapping[str, Mapping[str, Sequence[float]]]] = None,
                   baselines: Optional[Mapping[str, Sequence[float]]] = None) -> None:
    fig, ax = new_figure(figsize=(7, 4.2))
    disparity_axes(ax, curves, layers, title, legend, bands, baselines)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def probe_axes(ax, layers: Sequence[str], curves: Mapping[str, Sequence[float]], title: str,
               chance: Optional[float] = None, bands: Optional[Mapping[str, Sequence[Sequence[float]]]] = None) -> None:
    """Linear-probe accuracy over depth, one line per curve (e.g. train, clean, adversarial), with a shaded
    95% band for the curves in ``bands`` (name -> per layer [low, high])."""
    x = np.arange(len(layers))
    styles = {"train": ":", "clean": "-", "adversarial": "--"}
    for name, values in curves.items():
        (line,) = ax.plot(x, np.asarray(values, dtype=float), marker="o", ms=3, ls=styles.get(name, "-"), label=name)
        band = (bands or {}).get(name)
        if band:
            b = np.asarray(band, dtype=float)
            ax.fill_between(x, b[:, 0], b[:, 1], color=line.get_color(), alpha=0.15, lw=0)
    if chance is not None:
        ax.axhline(chance, color="grey", lw=0.8, ls="-.", label="chance")
    ax.set_xticks(x)
    ax.set_xticklabels(list(layers), rotation=60, ha="right", fontsize=6)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("layer")
    ax.set_ylabel("linear-probe accuracy")
    _set_title(ax, title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
