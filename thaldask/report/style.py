"""Colour-blind-safe palette and matplotlib settings shared by every report figure.

Colours are the Okabe–Ito palette (Okabe & Ito 2008, "Color Universal Design"), which stays
distinguishable under the common colour-vision deficiencies. Methods get colours, contrasts
get marker shapes, so no figure relies on colour alone.
"""

from __future__ import annotations

import functools
import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # the report never opens a window; safe inside Dask workers

import matplotlib.pyplot as plt  # noqa: E402

from thaldask._shared.paths import atomic_write  # noqa: E402

__all__ = [
    "OKABE_ITO",
    "GT_COLOUR",
    "PRED_COLOUR",
    "method_colours",
    "contrast_markers",
    "styled",
    "new_figure",
    "save",
    "png_bytes",
]

OKABE_ITO = {
    "blue": "#0072B2",
    "orange": "#E69F00",
    "bluish_green": "#009E73",
    "vermillion": "#D55E00",
    "reddish_purple": "#CC79A7",
    "sky_blue": "#56B4E9",
    "yellow": "#F0E442",
    "black": "#000000",
}
_CYCLE = [
    OKABE_ITO[k]
    for k in ("blue", "orange", "bluish_green", "vermillion", "reddish_purple", "sky_blue", "black")
]
_MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*", "<", ">"]

#: contour colour of the manual ground truth in visual QC (bright on a grey image)
GT_COLOUR = OKABE_ITO["yellow"]
#: contour colour of a method's mask in visual QC
PRED_COLOUR = OKABE_ITO["sky_blue"]

RC = {
    "figure.dpi": 100,
    "savefig.dpi": 110,
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.labelsize": 9,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "legend.fontsize": 8,
    "legend.frameon": False,
    "axes.prop_cycle": matplotlib.cycler(color=_CYCLE),
}


def method_colours(methods) -> dict[str, str]:
    """Map each method name to an Okabe–Ito colour, in the order given (cycling after 7)."""
    return {m: _CYCLE[i % len(_CYCLE)] for i, m in enumerate(methods)}


def contrast_markers(contrasts) -> dict[str, str]:
    """Map each contrast name to a marker shape, in the order given."""
    return {c: _MARKERS[i % len(_MARKERS)] for i, c in enumerate(contrasts)}


def styled(func):
    """Run a figure-making function under the report's matplotlib style."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        with plt.rc_context(RC):
            return func(*args, **kwargs)

    return wrapper


def new_figure(width: float, height: float, nrows: int = 1, ncols: int = 1, *, layout="constrained", **kwargs):
    """``plt.subplots`` under the report's style; returns (fig, axes) with axes squeezed=False.

    ``layout=None`` for grids of images with fixed margins (``fig.subplots_adjust``): the
    constrained layout measures every text box on each draw, which doubles a montage's cost."""
    return plt.subplots(
        nrows, ncols, figsize=(width, height), squeeze=False, layout=layout, **kwargs
    )


def png_bytes(fig) -> bytes:
    """``fig`` as PNG bytes (as :func:`save` would write them); releases its memory."""
    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png")
    finally:
        plt.close(fig)
    return buf.getvalue()


def save(fig, path) -> None:
    """Write ``fig`` to ``path`` atomically (format from the suffix) and release its memory."""
    try:
        with atomic_write(path, "wb") as f:
            fig.savefig(f, format=Path(path).suffix.lstrip(".") or "png")
    finally:
        plt.close(fig)
