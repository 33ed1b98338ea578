"""The statistics tables as xarray: what every ``fit_*`` function returns, and the stats
dataset the stage stores."""

from __future__ import annotations

import pandas as pd
import xarray as xr

from thaldask.errors import StatsError
from thaldask.schema import TABLE_KEYS

__all__ = ["tables_to_dataset", "table_to_xarray", "as_result"]


def tables_to_dataset(tables: dict[str, pd.DataFrame], attrs: dict | None = None) -> xr.Dataset:
    """The stage's tables as one xarray Dataset: each table's rows along a dim
    ``<table>_row``, columns as variables ``<table>__<column>``."""
    parts = []
    for name, df in tables.items():
        if df is None or not len(df):
            continue
        d = df.reset_index(drop=True).copy()
        for c in d.columns:
            if d[c].dtype == bool:
                d[c] = d[c].astype(bool)
            elif d[c].dtype == object:
                d[c] = d[c].map(lambda x: "" if x is None or (isinstance(x, float) and x != x) else str(x))
        x = xr.Dataset(
            {f"{name}__{c}": (f"{name}_row", d[c].to_numpy()) for c in d.columns}
        )
        parts.append(x)
    out = xr.merge(parts) if parts else xr.Dataset()
    out.attrs.update(attrs or {})
    return out


def table_to_xarray(name: str, table: pd.DataFrame) -> xr.Dataset:
    """One of the stage's tables as an xarray Dataset whose dims are the columns that
    identify its rows (e.g. ``clinical_cross`` -> outcome, method, contrast, side); cells
    without a row are NaN.

    >>> t = pd.DataFrame({"method": ["a", "b"], "contrast": ["T1w", "T1w"], "side": ["total"] * 2,
    ...                   "bias_mm3": [1.0, 2.0]})
    >>> table_to_xarray("agreement", t)["bias_mm3"].sel(side="total", contrast="T1w").values.tolist()
    [1.0, 2.0]
    """
    keys = [k for k in TABLE_KEYS.get(name, []) if k in table]
    if not keys or table[keys].duplicated().any():
        raise StatsError(f"table {name!r} has no unique row keys {TABLE_KEYS.get(name)}; columns {list(table)}")
    return table.set_index(keys).to_xarray()


def as_result(name: str, table: pd.DataFrame, *, as_frame: bool = False, attrs: dict | None = None):
    """What a public ``fit_*`` function returns: ``table`` itself when ``as_frame``, else
    :func:`table_to_xarray` of it with ``attrs`` (``None`` values dropped, sequences joined
    with ", ") and ``attrs["table"] = name``. A table without its key columns (no rows)
    becomes an empty Dataset."""
    if as_frame:
        return table
    keys = [k for k in TABLE_KEYS.get(name, []) if k in table]
    if not len(table) and not keys:
        out = xr.Dataset()
    else:
        out = table_to_xarray(name, table)
    out.attrs["table"] = name
    for k, v in (attrs or {}).items():
        if v is None:
            continue
        if isinstance(v, (list, tuple)):
            v = ", ".join(map(str, v))
        out.attrs[k] = v
    return out
