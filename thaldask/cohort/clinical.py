"""Clinical table: read and validate covariates/outcomes per (subject, timepoint).

Columns (DESIGN.md): ``subject``, ``timepoint`` required; known covariates are checked for
type and range when present: ``site`` (str), ``group`` (MS, NMOSD, MOGAD, HC), ``age``
(years, 0-120), ``sex`` (F, M; group and sex are case-insensitive and upper-cased), ``disease_duration`` (years, >= 0), ``edss`` (0-10 in 0.5
steps), ``sdmt`` (0-110), ``years_since_baseline`` (>= 0), ``icv_mm3`` (> 0), ``repeat_of``
(a scan-rescan repeat: the subject's visit it repeats, empty for visits). Other columns
are kept as they are. Empty cells are missing values (NaN).
"""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from thaldask.cohort._csv import read_table
from thaldask.errors import ClinicalTableError, ThaldaskWarning
from thaldask.schema import REPEAT_COLUMN

__all__ = [
    "read_clinical",
    "validate_clinical",
    "GROUPS",
    "NUMERIC_RANGES",
    "NUMERIC_COLUMNS",
    "STRING_COLUMNS",
]

GROUPS = ("MS", "NMOSD", "MOGAD", "HC")
SEXES = ("F", "M")
#: column -> (min, max, step or None); bounds inclusive
NUMERIC_RANGES: dict[str, tuple[float, float, float | None]] = {
    "age": (0.0, 120.0, None),
    "disease_duration": (0.0, 100.0, None),
    "edss": (0.0, 10.0, 0.5),
    "sdmt": (0.0, 110.0, None),
    "years_since_baseline": (0.0, 100.0, None),
    "icv_mm3": (1.0, 5.0e6, None),
}
#: the clinical contract's known columns besides subject and timepoint
NUMERIC_COLUMNS: tuple[str, ...] = tuple(NUMERIC_RANGES)
STRING_COLUMNS: tuple[str, ...] = ("site", "group", "sex")
_DECIMAL_COMMA = re.compile(r"[+-]?\d+,\d+")


def read_clinical(path: str | os.PathLike) -> pd.DataFrame:
    """Read a clinical CSV/TSV as strings (no validation); ``row`` = spreadsheet row.

    Read by the same strict reader as the manifest
    (:func:`thaldask.cohort._csv.read_table`): UTF-8 with or without a byte-order mark,
    every row with the header's field count.

    Raises
    ------
    ClinicalTableError
        not found, not UTF-8 (naming the line), or a row with the wrong number of fields.
    """
    return read_table(path, what="clinical table", error=ClinicalTableError)


def validate_clinical(
    table: pd.DataFrame | str | os.PathLike,
    *,
    manifest: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Validate a clinical table; report every problem at once.

    Parameters
    ----------
    table : path or DataFrame from :func:`read_clinical`
    manifest : if given, (subject, timepoint) pairs absent from it are reported with a
        :class:`~thaldask.errors.ThaldaskWarning` (kept in the table, never an error).

    Returns
    -------
    pandas.DataFrame
        typed table (numeric columns float64, NaN for empty), without ``row``.

    Raises
    ------
    ClinicalTableError
        wrong types, out-of-range values, unknown group/sex, duplicate rows; ``.problems``
        lists each as ``<file> row N: column: reason``.
    """
    if isinstance(table, pd.DataFrame) and table.attrs.get("validated"):
        return table
    df = read_clinical(table) if not isinstance(table, pd.DataFrame) else table.copy()
    if "row" not in df.columns:
        df.insert(0, "row", range(2, len(df) + 2))
    src = Path(df.attrs.get("source", "clinical")).name
    problems: list[tuple[int, str]] = []

    def bad(row, msg):
        problems.append((int(row), f"{src} row {row}: {msg}"))

    missing = [c for c in ("subject", "timepoint") if c not in df.columns]
    if missing:
        raise ClinicalTableError(f"{src}: missing column(s) {', '.join(missing)}")
    out = df.copy()
    for c in ("subject", "timepoint"):
        out[c] = out[c].astype(str).str.strip()
        for r, v in zip(out["row"], out[c], strict=False):
            if v in ("", "nan"):
                bad(r, f"{c}: empty")
    for col, (lo, hi, step) in NUMERIC_RANGES.items():
        if col not in out.columns:
            continue
        raw = out[col].astype(str).str.strip()
        vals = pd.to_numeric(raw.where(raw != "", None), errors="coerce").astype("float64")
        commas = [(r, s) for r, s in zip(out["row"], raw, strict=False) if _DECIMAL_COMMA.fullmatch(s)]
        if commas:
            r, s = commas[0]
            more = f" (and {len(commas) - 1} more row{'s' if len(commas) > 2 else ''})" if len(commas) > 1 else ""
            bad(r, f"{col}: {s!r} looks like a decimal comma{more}; write numbers with a point ({s.replace(',', '.')})")
        for r, s, v in zip(out["row"], raw, vals, strict=False):
            if s == "" or s.lower() in ("nan", "na", "n/a") or _DECIMAL_COMMA.fullmatch(s):
                continue
            if not np.isfinite(v):
                bad(r, f"{col}: {s!r} is not a number")
            elif v < lo or v > hi:
                bad(r, f"{col}: {s} outside {lo:g}..{hi:g}")
            elif step and abs(v / step - round(v / step)) > 1e-9:
                bad(r, f"{col}: {s} is not a multiple of {step:g}")
        out[col] = vals
    for col, allowed in (("group", GROUPS), ("sex", SEXES)):
        if col not in out.columns:
            continue
        vals = out[col].astype(str).str.strip()
        vals = vals.where(~vals.str.upper().isin(allowed), vals.str.upper())  # 'f' -> 'F'
        for r, v in zip(out["row"], vals, strict=False):
            if v and v not in allowed:
                bad(r, f"{col}: {v!r} is not one of {', '.join(allowed)}")
        out[col] = vals.where(vals != "", None).astype(object)
    if "site" in out.columns:
        out["site"] = out["site"].astype(str)
    if REPEAT_COLUMN in out.columns:  # a scan-rescan repeat names a visit of its subject
        rep = out[REPEAT_COLUMN].astype(object).where(out[REPEAT_COLUMN].notna(), "").astype(str).str.strip()
        rep = rep.where(~rep.isin(["nan", "None"]), "")
        have = set(zip(out["subject"], out["timepoint"], strict=False))
        for r, s_, t, v in zip(out["row"], out["subject"], out["timepoint"], rep, strict=False):
            if v == t:
                bad(r, f"{REPEAT_COLUMN}: {v!r} is the row's own timepoint")
            elif v and (s_, v) not in have:
                bad(r, f"{REPEAT_COLUMN}: subject {s_!r} has no timepoint {v!r} to repeat")
        out[REPEAT_COLUMN] = rep.astype(object)
    dup = out[out.duplicated(["subject", "timepoint"], keep=False)]
    for _, grp in dup.groupby(["subject", "timepoint"], sort=False):
        first = int(grp["row"].iloc[0])
        for r in grp["row"].iloc[1:]:
            bad(r, f"duplicate of row {first} (subject {grp['subject'].iloc[0]!r}, timepoint {grp['timepoint'].iloc[0]!r})")
    if problems:
        problems.sort(key=lambda p: p[0])
        lines = [p[1] for p in problems]
        raise ClinicalTableError(
            f"{src}: {len(lines)} problem{'s' if len(lines) > 1 else ''}; first: {lines[0]}",
            problems=lines,
        )
    if manifest is not None:
        have = set(zip(manifest["subject"].astype(str), manifest["timepoint"].astype(str), strict=False))
        subjects = set(manifest["subject"].astype(str))
        absent_s = sorted(set(out["subject"]) - subjects)
        absent_t = [
            (s, t) for s, t in zip(out["subject"], out["timepoint"], strict=False) if s in subjects and (s, t) not in have
        ]
        if absent_s or absent_t:
            parts = []
            if absent_s:
                parts.append(f"subjects absent from the manifest: {', '.join(absent_s[:10])}"
                             + (f" (+{len(absent_s) - 10} more)" if len(absent_s) > 10 else ""))
            if absent_t:
                parts.append(
                    "scans absent from the manifest: "
                    + ", ".join(f"{s}/{t}" for s, t in absent_t[:10])
                    + (f" (+{len(absent_t) - 10} more)" if len(absent_t) > 10 else "")
                )
            warnings.warn(f"{src}: " + "; ".join(parts), ThaldaskWarning, stacklevel=2)
    out = out.drop(columns=["row"]).reset_index(drop=True)
    out.attrs = {"validated": True}
    return out
