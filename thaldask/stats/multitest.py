"""NaN-safe multiple-testing corrections.

statsmodels' ``multipletests`` returns an all-NaN family if one p-value is NaN. Here a NaN
p-value (a model that could not be fitted) stays NaN and is left out of the family; the
others are corrected among themselves.
"""

from __future__ import annotations

import numpy as np

__all__ = ["p_adjust", "fdr_bh", "holm"]


def holm(p) -> np.ndarray:
    """Holm step-down adjusted p-values; NaN entries are left out and stay NaN.

    >>> holm([0.01, np.nan, 0.04, 0.03]).round(3).tolist()
    [0.03, nan, 0.06, 0.06]
    """
    p = np.asarray(p, dtype=float)
    out = np.full(p.shape, np.nan)
    ok = np.isfinite(p)
    q = p[ok]
    m = q.size
    if m == 0:
        return out
    order = np.argsort(q, kind="mergesort")
    adj = np.maximum.accumulate((m - np.arange(m)) * q[order])
    res = np.empty(m)
    res[order] = np.minimum(adj, 1.0)
    out[ok] = res
    return out


def fdr_bh(p) -> np.ndarray:
    """Benjamini–Hochberg adjusted p-values (q-values); NaN entries are left out and stay NaN.

    >>> fdr_bh([0.01, 0.04, np.nan, 0.03]).round(3).tolist()
    [0.03, 0.04, nan, 0.04]
    """
    p = np.asarray(p, dtype=float)
    out = np.full(p.shape, np.nan)
    ok = np.isfinite(p)
    q = p[ok]
    m = q.size
    if m == 0:
        return out
    order = np.argsort(q, kind="mergesort")[::-1]
    adj = np.minimum.accumulate(q[order] * m / np.arange(m, 0, -1))
    res = np.empty(m)
    res[order] = np.minimum(adj, 1.0)
    out[ok] = res
    return out


_METHODS = {"holm": holm, "fdr_bh": fdr_bh, "bh": fdr_bh}


def p_adjust(p, method: str = "fdr_bh") -> np.ndarray:
    """Adjust p-values with ``method`` (``"fdr_bh"`` or ``"holm"``), NaN-safe."""
    try:
        return _METHODS[method](p)
    except KeyError:
        raise ValueError(
            f"unknown p-value adjustment {method!r}; allowed: {sorted(_METHODS)}"
        ) from None
