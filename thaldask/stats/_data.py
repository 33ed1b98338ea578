"""Pull arrays and tidy frames out of the results dataset (dims subject, timepoint, method,
contrast, side; clinical covariates on (subject, timepoint))."""

from __future__ import annotations

import numpy as np
import pandas as pd
import xarray as xr

from thaldask.errors import StatsError


def names(values) -> str:
    """Values as a message lists them: plain strings joined by ", " (never numpy reprs).

    >>> names(np.array(["A", "B"]))
    'A, B'
    """
    return ", ".join(str(v) for v in values)


def require(ds: xr.Dataset, *names: str) -> None:
    missing = [n for n in names if n not in ds.variables]
    if missing:
        raise StatsError(
            f"results dataset lacks variable(s) {missing}; has {sorted(ds.data_vars)}"
        )


def sides(ds: xr.Dataset, side) -> list[str]:
    """Resolve a ``side`` option: a name, a list, ``"all"`` or None (total only)."""
    have = [str(s) for s in ds["side"].values] if "side" in ds.dims else ["total"]
    if side is None:
        want = ["total"] if "total" in have else have[:1]
    elif side == "all":
        want = have
    elif isinstance(side, str):
        want = [side]
    else:
        want = list(side)
    bad = [s for s in want if s not in have]
    if bad:
        raise StatsError(f"side {bad} not in the results dataset; has {have}")
    return want


def method_contrasts(ds: xr.Dataset, var: str = "volume_mm3") -> list[tuple[str, str]]:
    """(method, contrast) pairs with at least one finite value of ``var``."""
    da = ds[var]
    other = [d for d in da.dims if d not in ("method", "contrast")]
    present = np.isfinite(da).any(other).transpose("method", "contrast").values
    return [
        (str(m), str(c))
        for i, m in enumerate(ds["method"].values)
        for j, c in enumerate(ds["contrast"].values)
        if present[i, j]
    ]


def clinical_frame(ds: xr.Dataset) -> pd.DataFrame:
    """Clinical covariates as a DataFrame with a (subject, timepoint) MultiIndex."""
    cols = {}
    for name, var in ds.data_vars.items():
        if set(var.dims) == {"subject", "timepoint"}:
            cols[name] = var.transpose("subject", "timepoint").values.ravel()
    idx = pd.MultiIndex.from_product(
        [ds["subject"].values.astype(str), ds["timepoint"].values.astype(str)],
        names=["subject", "timepoint"],
    )
    df = pd.DataFrame(cols, index=idx)
    for c in df.columns:
        if df[c].dtype == object:
            num = pd.to_numeric(df[c], errors="coerce")
            if num.notna().sum() == df[c].notna().sum() and df[c].notna().any():
                df[c] = num
    return df


def zscore(x: np.ndarray, axis: int = -1, weights=None) -> np.ndarray:
    """Standardise along ``axis`` over rows with weight 1 (ddof = 1); others become NaN."""
    x = np.asarray(x, dtype=float)
    ok = np.isfinite(x) if weights is None else (np.asarray(weights, bool) & np.isfinite(x))
    n = ok.sum(axis=axis, keepdims=True)
    xs = np.where(ok, x, 0.0)
    m = xs.sum(axis=axis, keepdims=True) / n
    with np.errstate(invalid="ignore", divide="ignore"):
        sd = np.sqrt((np.where(ok, x - m, 0.0) ** 2).sum(axis=axis, keepdims=True) / (n - 1))
        return np.where(ok, (x - m) / sd, np.nan)


def design_columns(frame: pd.DataFrame, covariates) -> tuple[np.ndarray, list[str]]:
    """Numeric design columns for covariates: numeric columns as they are, categorical
    ones as treatment dummies (first level, sorted, is the reference)."""
    cols, names = [], []
    for c in covariates:
        if c not in frame:
            raise StatsError(f"covariate {c!r} not in the results dataset; has {list(frame)}")
        s = frame[c]
        if pd.api.types.is_numeric_dtype(s):
            cols.append(s.to_numpy(float))
            names.append(c)
        else:
            vals = s.astype(object).where(s.notna(), None)
            levels = sorted({str(v) for v in vals if v is not None and str(v) not in ("", "nan")})
            missing = np.array([v is None or str(v) in ("", "nan") for v in vals])
            for lev in levels[1:]:
                col = np.array([str(v) == lev for v in vals], dtype=float)
                col[missing] = np.nan
                cols.append(col)
                names.append(f"{c}[T.{lev}]")
    X = np.column_stack(cols) if cols else np.empty((len(frame), 0))
    return X, names
