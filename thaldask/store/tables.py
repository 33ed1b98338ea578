"""The store's per-scan and clinical tables as columns (Zarr arrays), not root JSON.

Format 2 keeps every table that grows with the cohort out of the root ``zarr.json``, so
opening a store reads a few hundred bytes whatever its size, and a task that needs only a
grid or a path never parses a table:

* the scan table and each scan's reference contrast and orientation code:
  ``scan/subject``, ``scan/timepoint``, ``scan/site``, ``scan/reference``,
  ``scan/orig_axcodes`` (one string array each, one chunk, rewritten whole when scans are
  appended, like the other ``scan/`` arrays);
* the clinical table: one array per column under ``_tables/clinical/<k>`` (float64 for
  numbers, NaN missing; strings, "" missing), its column names and dtypes in the root
  attribute ``clinical``.

Format 1 held these in the root attributes; :func:`migrate_store` (``thaldask store
migrate``) moves them, and ingest does so by itself before it changes a format-1 store.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from thaldask.store.format import SCAN, TABLES

__all__ = ["SCAN_COLUMNS", "write_scan_table", "read_scan_column", "write_clinical", "read_clinical",
           "clinical_array", "v1_tables"]

#: the string columns of ``scan/``: the scan table, then reference contrast and orientation
SCAN_COLUMNS = ("subject", "timepoint", "site", "reference", "orig_axcodes")


def clinical_array(k: int) -> str:
    """``_tables/clinical/<k>``: column ``k`` of the clinical table."""
    return f"{TABLES}/clinical/{int(k)}"


def _write_strings(zstore, name: str, values) -> None:
    import zarr

    arr = np.asarray(["" if v is None else str(v) for v in values], dtype=object)
    z = zarr.create_array(store=zstore, name=name, shape=arr.shape, chunks=(max(len(arr), 1),),
                          dtype=str, fill_value="", overwrite=True)
    if len(arr):
        z[...] = arr


def write_scan_table(zstore, scans: pd.DataFrame, reference, orig_axcodes) -> None:
    """(Re)write the ``scan/`` string columns whole (one object each).

    Only the process that creates or grows a store calls this, before any task writes."""
    cols = {"subject": scans["subject"], "timepoint": scans["timepoint"], "site": scans["site"],
            "reference": list(reference), "orig_axcodes": list(orig_axcodes)}
    n = len(scans)
    for key in SCAN_COLUMNS:
        if len(cols[key]) != n:
            raise ValueError(f"scan table column {key!r} has {len(cols[key])} values for {n} scans")
        _write_strings(zstore, f"{SCAN}/{key}", list(cols[key]))


def read_scan_column(zstore, key: str) -> np.ndarray:
    """One ``scan/`` string column as an object array of ``str``."""
    import zarr

    z = zarr.open_array(store=zstore, path=f"{SCAN}/{key}", mode="r", zarr_format=3)
    return np.asarray(z[...]).astype(object)  # numpy strings -> Python str, in C


def write_clinical(zstore, df: pd.DataFrame) -> dict:
    """Write the clinical table's columns; returns the root attribute that describes them."""
    import zarr

    dtypes = {}
    for k, col in enumerate(df.columns):
        s = df[col]
        if pd.api.types.is_numeric_dtype(s):  # numbers and booleans: float64, NaN missing
            arr = pd.to_numeric(s, errors="coerce").to_numpy(dtype="float64")
            z = zarr.create_array(store=zstore, name=clinical_array(k), shape=arr.shape,
                                  chunks=(max(len(arr), 1),), dtype="float64", fill_value=np.nan,
                                  overwrite=True)
            if len(arr):
                z[...] = arr
        else:
            _write_strings(zstore, clinical_array(k), [None if pd.isna(v) else v for v in s])
        dtypes[str(col)] = str(s.dtype)
    return {"columns": [str(c) for c in df.columns], "dtypes": dtypes, "n": int(len(df))}


def read_clinical(zstore, payload: dict) -> pd.DataFrame:
    """The clinical table described by the root attribute ``payload``."""
    import zarr

    out = {}
    for k, col in enumerate(payload["columns"]):
        z = zarr.open_array(store=zstore, path=clinical_array(k), mode="r", zarr_format=3)
        v = z[...]
        dt = payload["dtypes"][col]
        if dt.startswith(("float", "int")):
            out[col] = np.asarray(v, dtype="float64")
        elif dt == "bool":
            out[col] = pd.Series(np.asarray(v, dtype="float64") != 0, dtype=bool)
        else:
            col_v = np.asarray(v).astype(object)
            col_v[col_v == ""] = None
            out[col] = pd.Series(col_v, dtype=object)
    df = pd.DataFrame(out, columns=payload["columns"])
    if len(df) != int(payload["n"]):
        raise ValueError(f"clinical table has {len(df)} rows; its description says {payload['n']}")
    return df


def v1_tables(attrs: dict) -> tuple[pd.DataFrame, list, list, pd.DataFrame | None]:
    """(scans, reference, orig_axcodes, clinical) of a format-1 store's root attributes."""
    s = attrs["scans"]
    scans = pd.DataFrame({k: pd.Series(s[k], dtype=object).astype(str) for k in ("subject", "timepoint", "site")})
    clin = None
    c = attrs.get("clinical")
    if c:
        clin = pd.DataFrame(c["data"], columns=c["columns"])
        for col, dt in c["dtypes"].items():
            if dt.startswith(("float", "int")):
                clin[col] = pd.to_numeric(clin[col], errors="coerce").astype("float64")
            else:
                clin[col] = clin[col].astype(object)
    return scans, list(attrs.get("reference", [])), list(attrs.get("orig_axcodes", [])), clin
