"""Cohort manifest: parse and validate the CSV/TSV that lists every image and mask file.

Columns (DESIGN.md): ``subject``, ``timepoint``, ``site`` (optional), ``kind``
(``image``/``mask``), ``contrast``, ``method`` (masks), ``labels`` (masks), ``path``
(relative to the manifest's folder). Row numbers in messages are spreadsheet rows: the
header is row 1, the first file is row 2.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from thaldask.cohort.labels import parse_labels
from thaldask import schema as _schema
from thaldask.errors import LabelConventionError, ManifestError

__all__ = [
    "MANIFEST_COLUMNS",
    "REQUIRED_COLUMNS",
    "SUPPORTED_SUFFIXES",
    "read_manifest",
    "validate",
    "read_header",
    "scan_table",
]

MANIFEST_COLUMNS = list(_schema.MANIFEST_COLUMNS)
REQUIRED_COLUMNS = list(_schema.REQUIRED_MANIFEST_COLUMNS)
SUPPORTED_SUFFIXES = (".nii", ".nii.gz", ".mgz", ".mgh")
KINDS = _schema.MANIFEST_KINDS


def _is_remote(path: str) -> bool:
    return "://" in str(path)


def read_manifest(path: str | os.PathLike) -> pd.DataFrame:
    """Read a manifest CSV/TSV into a DataFrame (eager, no file checks).

    Returns a DataFrame with the manifest columns as stripped strings (missing optional
    columns become empty strings) plus ``row`` (spreadsheet row number, header = 1) and
    ``file`` (absolute path of each listed file). ``df.attrs["source"]`` holds the
    manifest's path. Call :func:`validate` before using it.

    Raises
    ------
    ManifestError
        if the file cannot be read or lacks a required column.
    """
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"{path}: manifest not found")
    sep = "\t" if path.suffix.lower() in (".tsv", ".tab") else None
    try:
        df = pd.read_csv(
            path,
            sep=sep,
            engine="python",
            dtype=str,
            keep_default_na=False,
            skipinitialspace=True,
        )
    except Exception as exc:  # pandas raises many types for broken CSV
        raise ManifestError(f"{path}: cannot be parsed as CSV/TSV ({exc})") from None
    df.columns = [str(c).strip().lower() for c in df.columns]
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise ManifestError(
            f"{path}: missing column(s) {', '.join(missing)}; "
            f"required: {', '.join(REQUIRED_COLUMNS)} (optional: site, method, labels)"
        )
    for c in MANIFEST_COLUMNS:
        if c not in df.columns:
            df[c] = ""
        df[c] = df[c].fillna("").astype(str).str.strip()
    df["kind"] = df["kind"].str.lower()
    extra = [c for c in df.columns if c not in MANIFEST_COLUMNS]
    df = df[MANIFEST_COLUMNS + extra].copy()
    df.insert(0, "row", range(2, len(df) + 2))
    root = path.resolve().parent
    df["file"] = [
        p if (not p or _is_remote(p) or os.path.isabs(p)) else str(root / p) for p in df["path"]
    ]
    df = df.reset_index(drop=True)
    df.attrs["source"] = str(path)
    return df


def read_header(file: str):
    """Load a NIfTI/MGH image lazily (header only) with nibabel; raise on failure."""
    import nibabel as nib

    low = file.lower()
    if not low.endswith(SUPPORTED_SUFFIXES):
        raise ValueError(f"unsupported file type; allowed: {', '.join(SUPPORTED_SUFFIXES)}")
    img = nib.load(file)
    _ = img.shape, img.affine
    return img


def _stored_dtype(img) -> str:
    """Data type of the voxel values as read: on-disk type when unscaled, else float32."""
    import numpy as np

    dt = np.dtype(img.header.get_data_dtype())
    # nibabel moves scl_slope/scl_inter from the header into the array proxy on load
    slope = float(getattr(img.dataobj, "slope", 1.0))
    inter = float(getattr(img.dataobj, "inter", 0.0))
    scaled = slope != 1.0 or inter != 0.0
    return "float32" if scaled or dt.kind == "f" else dt.name


def validate(
    manifest: pd.DataFrame | str | os.PathLike,
    *,
    check_files: bool = True,
    read_headers: bool = True,
) -> pd.DataFrame:
    """Validate a manifest and report every problem at once.

    Checks: required values, ``kind``, label conventions of masks, duplicate
    (subject, timepoint, kind, contrast, method), masks without an image of their
    subject/timepoint/contrast, inconsistent site within a scan, missing files, unsupported
    file types and unreadable headers.

    Returns
    -------
    pandas.DataFrame
        the manifest (read if a path was given) with ``shape`` (tuple), ``affine``
        (4x4 float64 array) and ``dtype`` (voxel type as read) columns from the headers
        when ``read_headers``.

    Raises
    ------
    ManifestError
        listing every problem (``.problems``), each ``<manifest> row N: <file>: reason``.
    """
    if isinstance(manifest, pd.DataFrame) and manifest.attrs.get("validated") and "affine" in manifest:
        return manifest
    df = read_manifest(manifest) if not isinstance(manifest, pd.DataFrame) else manifest.copy()
    src = Path(df.attrs.get("source", "manifest")).name
    problems: list[tuple[int, str]] = []

    def bad(row: int, msg: str):
        problems.append((row, f"{src} row {row}: {msg}"))

    if len(df) == 0:
        raise ManifestError(f"{src}: the manifest lists no files")
    for r in df.itertuples(index=False):
        where = f"{r.path!r}: " if r.path else ""
        for col in REQUIRED_COLUMNS:
            if not getattr(r, col):
                bad(r.row, f"{where}empty {col!r}")
        if r.kind and r.kind not in KINDS:
            bad(r.row, f"{where}kind {r.kind!r} is not one of {', '.join(KINDS)}")
        if r.kind == "mask":
            if not r.method:
                bad(r.row, f"{where}mask without a method (use 'gt' for manual ground truth)")
            try:
                parse_labels(r.labels if r.labels else None)
            except LabelConventionError as exc:
                bad(r.row, f"{where}{exc}")
        elif r.kind == "image" and r.method:
            bad(r.row, f"{where}an image has method {r.method!r}; only masks have a method")
    # duplicates
    key = ["subject", "timepoint", "kind", "contrast", "method"]
    dup = df[df.duplicated(key, keep=False)]
    for _, grp in dup.groupby(key, sort=False):
        first = int(grp["row"].iloc[0])
        for r in grp.iloc[1:].itertuples(index=False):
            bad(
                r.row,
                f"{r.path!r}: duplicate of row {first} (subject {r.subject!r}, timepoint "
                f"{r.timepoint!r}, {r.kind} {r.contrast!r}{' ' + r.method if r.method else ''})",
            )
    # masks need an image of the same scan and contrast
    images = set(
        zip(*(df.loc[df["kind"] == "image", c] for c in ("subject", "timepoint", "contrast")), strict=False)
    )
    for r in df[df["kind"] == "mask"].itertuples(index=False):
        if (r.subject, r.timepoint, r.contrast) not in images:
            bad(
                r.row,
                f"{r.path!r}: mask without an image of subject {r.subject!r}, timepoint "
                f"{r.timepoint!r}, contrast {r.contrast!r}",
            )
    # one site per scan
    for (s, t), grp in df.groupby(["subject", "timepoint"], sort=False):
        sites = sorted(set(grp["site"]) - {""})
        if len(sites) > 1:
            bad(int(grp["row"].iloc[0]), f"subject {s!r} timepoint {t!r} has several sites {sites}")
    shapes: list = [None] * len(df)
    affines: list = [None] * len(df)
    dtypes: list = [None] * len(df)
    if check_files:
        for k, r in enumerate(df.itertuples(index=False)):
            if not r.file:
                continue
            if not r.file.lower().endswith(SUPPORTED_SUFFIXES):
                bad(r.row, f"{r.path!r}: unsupported file type; allowed: {', '.join(SUPPORTED_SUFFIXES)}")
                continue
            if _is_remote(r.file):
                continue
            if not os.path.isfile(r.file):
                bad(r.row, f"{r.path!r}: file not found ({r.file})")
                continue
            if read_headers:
                try:
                    img = read_header(r.file)
                except Exception as exc:
                    reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                    bad(r.row, f"{r.path!r}: unreadable header ({reason})")
                    continue
                shapes[k] = tuple(int(n) for n in img.shape)
                affines[k] = img.affine.astype("float64")
                dtypes[k] = _stored_dtype(img)
    if problems:
        problems.sort(key=lambda p: p[0])
        lines = [p[1] for p in problems]
        n = len(lines)
        raise ManifestError(
            f"{src}: {n} problem{'s' if n > 1 else ''}; first: {lines[0]}", problems=lines
        )
    if check_files and read_headers:
        df["shape"] = shapes
        df["affine"] = affines
        df["dtype"] = dtypes
        df.attrs["validated"] = True
    return df


def scan_table(manifest: pd.DataFrame) -> pd.DataFrame:
    """One row per (subject, timepoint) scan in manifest order: subject, timepoint, site."""
    scans = (
        manifest.groupby(["subject", "timepoint"], sort=False)["site"]
        .agg(lambda s: next((v for v in s if v), ""))
        .reset_index()
    )
    scans.index.name = "scan"
    return scans[["subject", "timepoint", "site"]]
