"""Where each stored scan array came from: one table for the whole store.

``STORE/sources.csv`` has a row per (array, scan) that an ingest wrote or found already
stored: ``array, scan, subject, timepoint, path, sha256`` (``path`` as resolved at ingest:
an absolute path or a URL). It is written only by the process that plans an ingest, under
the store lock, after the tasks finish; a later ingest replaces the rows of the (array,
scan) pairs it wrote. Exports use it to name each mask's source image (BIDS ``Sources``).
"""

from __future__ import annotations

import io

import numpy as np
import pandas as pd

from thaldask._shared.paths import write_text
from thaldask.store.format import SOURCES, hash_array

__all__ = ["SOURCE_COLUMNS", "read_sources", "update_sources", "record_ingest"]

SOURCE_COLUMNS = ["array", "scan", "subject", "timepoint", "path", "sha256"]


def _url(store_path: str) -> str:
    return f"{str(store_path).rstrip('/')}/{SOURCES}"


def read_sources(store_path: str, *, storage_options: dict | None = None) -> pd.DataFrame:
    """The store's source table (empty, with its columns, when nothing was recorded)."""
    import fsspec

    try:
        with fsspec.open(_url(store_path), "rb", **(storage_options or {})) as f:
            data = f.read()
    except (FileNotFoundError, OSError):
        return pd.DataFrame(columns=SOURCE_COLUMNS)
    df = pd.read_csv(io.BytesIO(data), dtype=str, keep_default_na=False)
    df["scan"] = df["scan"].astype(int)
    return df[SOURCE_COLUMNS]


def update_sources(store_path: str, rows: pd.DataFrame, *, storage_options: dict | None = None
                   ) -> pd.DataFrame:
    """Replace the rows of ``rows``' (array, scan) pairs and write the table atomically."""
    old = read_sources(store_path, storage_options=storage_options)
    rows = rows[SOURCE_COLUMNS].astype({"scan": int})
    if len(old):
        keys = set(zip(rows["array"], rows["scan"], strict=True))
        keep = [k not in keys for k in zip(old["array"], old["scan"], strict=True)]
        rows = pd.concat([old[keep], rows], ignore_index=True)
    rows = rows.sort_values(["array", "scan"], kind="stable").reset_index(drop=True)
    write_text(_url(store_path), rows.to_csv(index=False), storage_options=storage_options)
    return rows


def record_ingest(st, specs, report: pd.DataFrame) -> None:
    """Record the source file (and its sha256) of every (array, scan) that an ingest
    wrote or found stored (``specs``: its plan's scans, ``report``: its report)."""
    entries = {e.row: (sp, e) for sp in specs for e in sp.entries}
    rows = []
    for r in report[report["status"].isin(["written", "skipped"])].itertuples():
        sp, e = entries.get(r.row, (None, None))
        if e is not None:
            rows.append({"array": e.array, "scan": sp.scan, "subject": sp.subject,
                         "timepoint": sp.timepoint, "path": e.file})
    if not rows:
        return
    df = pd.DataFrame(rows)
    digests = {}
    for name in df["array"].unique():  # one read of each array's digests
        digests[name] = np.asarray(st.zarr_array(hash_array(name))[...], dtype=np.uint8)[:, :32]
    df["sha256"] = [bytes(digests[a][i]).hex() for a, i in zip(df["array"], df["scan"], strict=True)]
    update_sources(st.path, df, storage_options=st.storage_options or None)
