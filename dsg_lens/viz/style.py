"""One publication style and one colour map for every dsg-lens figure (forget, retain, base and methods).

Figures are built on :class:`matplotlib.figure.Figure` (no pyplot, no global backend change) and saved with the
Agg canvas as PNG and SVG.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import matplotlib
from matplotlib.axes import Axes
from matplotlib.figure import Figure

COLORS: dict[str, str] = {
    "forget": "#c0392b",
    "retain": "#2471a3",
    "base": "#7f7f7f",
    "dsg": "#1e8449",
    "dsg-window": "#82c341",
    "static": "#e67e22",
    "rmu": "#8e44ad",
    "selected": "#c0392b",
    "other": "#b3b3b3",
    "tau": "#111111",
}
"""Colour of each series name (lower-case); see :func:`color` for aliases and unknown names."""

ALIASES = {"farrell": "static", "static clamping": "static", "static-clamp": "static", "static_clamp": "static",
           "window": "dsg-window", "windowgate": "dsg-window", "paper": "dsg", "no guardrail": "base"}
_FALLBACK = ["#17becf", "#bcbd22", "#e377c2", "#8c564b", "#1f77b4", "#ff7f0e", "#9467bd", "#2ca02c"]

RC = {
    "font.family": "DejaVu Sans",
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.labelsize": 9,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "grid.linewidth": 0.5,
    "legend.fontsize": 8,
    "legend.frameon": False,
    "lines.linewidth": 1.6,
    "lines.markersize": 4,
    "savefig.bbox": "tight",
    "svg.fonttype": "none",
    "svg.hashsalt": "dsg-lens",  # fixed element ids: redrawing unchanged data leaves the SVG unchanged
}


def color(name: str) -> str:
    """The colour of series ``name`` (case-insensitive, aliases such as "farrell" -> "static"); names not in
    :data:`COLORS` get a stable colour from a fallback palette (the same in every figure)."""
    key = name.strip().lower()
    key = ALIASES.get(key, key)
    if key in COLORS:
        return COLORS[key]
    return _FALLBACK[zlib.crc32(key.encode()) % len(_FALLBACK)]


def figure_paths(stem: str | Path) -> list[Path]:
    """The two files a figure ``stem`` is saved as: ``stem.png`` and ``stem.svg``."""
    stem = Path(stem)
    return [stem.with_suffix(".png"), stem.with_suffix(".svg")]


@contextmanager
def styled_figure(
    stem: str | Path, width: float = 3.6, height: float = 2.7, ncols: int = 1
) -> Iterator[tuple[Figure, list[Axes]]]:
    """Draw in the house style inside the ``with`` block (``ncols`` axes, each ``width`` x ``height`` inches);
    on exit the figure is saved to :func:`figure_paths` (PNG at 200 dpi, SVG with text kept as text)."""
    with matplotlib.rc_context(RC):
        fig = Figure(figsize=(width * ncols, height), layout="constrained")
        axes = [fig.add_subplot(1, ncols, i + 1) for i in range(ncols)]
        yield fig, axes
        png, svg = figure_paths(stem)
        png.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(png, dpi=200)
        fig.savefig(svg, metadata={"Date": None})
