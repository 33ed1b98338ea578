"""Cohort manifest: parse and validate the CSV/TSV that lists every image and mask file.

Columns (DESIGN.md): ``subject``, ``timepoint``, ``site`` (optional), ``kind``
(``image``/``mask``), ``contrast``, ``method`` (masks), ``labels`` (masks), ``path``
(relative to the manifest's folder). Row numbers in messages are spreadsheet rows: the
header is row 1, the first file is row 2.
"""

from __future__ import annotations

import errno
import logging
import math
import os
import stat
import warnings
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd

from thaldask import config
from thaldask import schema as _schema
from thaldask._shared.compute import active_client, run_batches
from thaldask._shared.paths import is_url
from thaldask.cohort._csv import read_table
from thaldask.cohort.labels import parse_labels
from thaldask.errors import LabelConventionError, ManifestError, ThaldaskWarning

__all__ = [
    "MANIFEST_COLUMNS",
    "REQUIRED_COLUMNS",
    "SUPPORTED_SUFFIXES",
    "MAX_VOXELS_PER_AXIS",
    "MAX_VOXEL_SIZE_MM",
    "FileCheck",
    "check_file",
    "read_manifest",
    "validate",
    "read_header",
    "scan_table",
]

MANIFEST_COLUMNS = list(_schema.MANIFEST_COLUMNS)
REQUIRED_COLUMNS = list(_schema.REQUIRED_MANIFEST_COLUMNS)
SUPPORTED_SUFFIXES = (".nii", ".nii.gz", ".mgz", ".mgh")
KINDS = _schema.MANIFEST_KINDS

#: largest number of voxels along one axis a plausible MR volume declares
MAX_VOXELS_PER_AXIS = 2048
#: largest plausible voxel edge, mm
MAX_VOXEL_SIZE_MM = 20.0
#: qform and sform "agree" within these: rotation/zoom entries, translation in mm
QFORM_SFORM_TOLERANCE = (1e-3, 0.1)
#: the smallest voxel volume (mm³, |det| of the affine's 3x3 part) that is not "singular"
MIN_VOXEL_VOLUME_MM3 = 1e-6
_MGH_DATA_OFFSET = 284  # fixed header size of an MGH file


def read_manifest(path: str | os.PathLike) -> pd.DataFrame:
    """Read a manifest CSV/TSV into a DataFrame (eager, no file checks).

    Returns a DataFrame with the manifest columns as stripped strings (missing optional
    columns become empty strings) plus ``row`` (spreadsheet row number, header = 1 unless
    comment lines precede it) and ``file`` (absolute path of each listed file).
    ``df.attrs["source"]`` holds the manifest's path. Call :func:`validate` before using it.

    The file is read by :func:`thaldask.cohort._csv.read_table`: UTF-8 with or without a
    byte-order mark, ``#`` comment lines before the header, every row with the header's
    field count.

    Raises
    ------
    ManifestError
        if the file cannot be read (not found, not UTF-8, a row with the wrong number of
        fields) or lacks a required column; one line naming the file and row.
    """
    path = Path(path)
    df = read_table(path, what="manifest", error=ManifestError, lower_columns=True)
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
    extra = [c for c in df.columns if c not in MANIFEST_COLUMNS and c != "row"]
    df = df[["row", *MANIFEST_COLUMNS, *extra]].copy()
    root = path.resolve().parent
    df["file"] = [
        p if (not p or is_url(p) or os.path.isabs(p)) else str(root / p)
        for p in df["path"]
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


class _Collect(logging.Handler):
    """Keeps the messages nibabel logs while it fixes a header on load."""

    def __init__(self):
        super().__init__(level=logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def _load_reporting_fixes(file: str):
    """``read_header(file)`` and the header fixes nibabel logged while loading it.

    nibabel silently repairs some header fields on load (a zero pixdim becomes 1, a negative
    one its absolute value) and logs what it did to ``nibabel.global``; those messages are
    the only record of the original values without reading the header a second time.
    """
    handler = _Collect()
    logger = logging.getLogger("nibabel.global")
    logger.addHandler(handler)
    try:
        img = read_header(file)
    finally:
        logger.removeHandler(handler)
    return img, handler.messages


def _stored_dtype(img) -> str:
    """Data type of the voxel values as read: on-disk type when unscaled, else float32."""
    import numpy as np

    dt = np.dtype(img.header.get_data_dtype())
    # nibabel moves scl_slope/scl_inter from the header into the array proxy on load
    slope = float(getattr(img.dataobj, "slope", 1.0))
    inter = float(getattr(img.dataobj, "inter", 0.0))
    scaled = slope != 1.0 or inter != 0.0
    return "float32" if scaled or dt.kind == "f" else dt.name


def _x(shape) -> str:
    return "x".join(str(int(n)) for n in shape)


def _mm(zooms) -> str:
    return "x".join(f"{float(z):g}" for z in zooms)


class FileCheck(NamedTuple):
    """Outcome of :func:`check_file` for one listed file.

    ``problem`` is empty when the file can be used, else one line saying why not;
    ``warning`` is empty or one line about something accepted with an assumption. ``shape``
    (tuple), ``affine`` (4x4 float64 array) and ``dtype`` (voxel type as read) come from the
    header, and are None when there is a problem or the header was not read.
    """

    problem: str = ""
    warning: str = ""
    shape: tuple | None = None
    affine: np.ndarray | None = None
    dtype: str | None = None
    header: tuple | None = None  # (class name, bytes) of the header as loaded, when kept


def _stat_problem(file: str) -> tuple[str, os.stat_result | None]:
    try:
        st = os.stat(file)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "symbolic link loop (the link points back to itself)", None
        if exc.errno == errno.ENOENT and os.path.islink(file):
            try:
                target = os.readlink(file)
            except OSError:
                target = "?"
            return f"broken symbolic link (points to {target!r}, which does not exist)", None
        if exc.errno == errno.ENOENT:
            return f"file not found ({file})", None
        if exc.errno == errno.EACCES:
            return "not readable (permission denied)", None
        return f"cannot be read ({exc.strerror or exc})", None
    if stat.S_ISDIR(st.st_mode):
        return "is a folder, not an image file", None
    if not stat.S_ISREG(st.st_mode):
        return "is not a regular file", None
    if st.st_size == 0:
        return "empty file (0 bytes)", None
    return "", st


def _gzip_isize(file: str) -> int | None:
    """The uncompressed size (mod 2**32) a gzip file's trailer records (4 bytes read)."""
    try:
        with open(file, "rb") as f:
            f.seek(-4, os.SEEK_END)
            return int.from_bytes(f.read(4), "little")
    except OSError:
        return None


def _header_problem(img, file: str, size: int, fixes: list[str]) -> tuple[str, list[str]]:
    """First implausibility of a loaded header (or ""), and the warnings about it."""
    hdr = img.header
    notes: list[str] = []
    shape = tuple(int(n) for n in img.shape)
    sp = shape[:3] if len(shape) == 4 and shape[3] == 1 else shape
    if len(sp) != 3:
        if len(shape) == 4:
            return f"is 4-D with {shape[3]} volumes ({_x(shape)}); one 3-D volume is needed", notes
        return f"is {len(shape)}-D ({_x(shape)}); a 3-D volume is needed", notes
    if any(n > MAX_VOXELS_PER_AXIS for n in sp):
        return f"declares {_x(sp)} voxels (limit {MAX_VOXELS_PER_AXIS} per axis)", notes
    if any(n < 2 for n in sp):
        return f"declares {_x(sp)} voxels (at least 2 per axis)", notes
    dt = np.dtype(hdr.get_data_dtype())
    if dt.kind not in "biuf":
        return f"holds {dt.name} values; real numbers are needed", notes
    is_nifti = "qform_code" in hdr
    qcode = int(hdr["qform_code"]) if is_nifti else 0
    scode = int(hdr["sform_code"]) if is_nifti else 0
    zooms = [float(z) for z in hdr.get_zooms()[:3]]
    if any("should be positive" in m for m in fixes):
        return "voxel size (pixdim) is negative in the header; voxel sizes must be > 0 mm", notes
    if not all(math.isfinite(z) for z in zooms):
        return f"voxel size {_mm(zooms)} mm is not finite", notes
    if any(z <= 0 for z in zooms):
        return f"voxel size {_mm(zooms)} mm; voxel sizes must be > 0 mm", notes
    if any(z > MAX_VOXEL_SIZE_MM for z in zooms):
        return f"voxel size {_mm(zooms)} mm (limit {MAX_VOXEL_SIZE_MM:g} mm)", notes
    if any("should be non-zero" in m for m in fixes):
        if qcode > 0 and scode == 0:
            return "voxel size (pixdim) is 0 mm but the qform needs it; voxel sizes must be > 0 mm", notes
        notes.append(
            "voxel size (pixdim) is 0 in the header"
            + ("; the sform gives the grid" if scode > 0 else " and it has no qform/sform; taken as 1 mm")
        )
    with np.errstate(all="ignore"):
        aff = np.asarray(img.affine, dtype=np.float64)
        if not np.all(np.isfinite(aff)):
            return "affine holds non-finite values (NaN or inf)", notes
        det = float(np.linalg.det(aff[:3, :3]))
        if abs(det) < MIN_VOXEL_VOLUME_MM3:
            return f"affine is singular (determinant {det:.3g}); its voxels have no volume", notes
        if qcode > 0 and scode > 0:
            q, s = np.asarray(hdr.get_qform(), np.float64), np.asarray(hdr.get_sform(), np.float64)
            if not np.all(np.isfinite(q)):
                return "qform holds non-finite values (NaN or inf)", notes
            d_rzs = float(np.max(np.abs(q[:3, :3] - s[:3, :3])))
            d_t = float(np.max(np.abs(q[:3, 3] - s[:3, 3])))
            tol_rzs, tol_t = QFORM_SFORM_TOLERANCE
            if d_rzs > tol_rzs or d_t > tol_t:
                return (
                    f"qform and sform disagree (by {d_rzs:.3g} in rotation/zoom, {d_t:.3g} mm in "
                    f"translation; tolerance {tol_rzs:g} and {tol_t:g} mm); fix the header or reset "
                    "one of them", notes
                )
    itemsize = np.dtype(hdr.get_data_dtype()).itemsize
    n_bytes = math.prod(shape) * itemsize
    low = file.lower()
    # nibabel keeps the data offset on the array proxy (the loaded header's vox_offset is 0)
    offset = getattr(img.dataobj, "offset", None)
    if offset is None:
        offset = int(hdr["vox_offset"]) if is_nifti else _MGH_DATA_OFFSET
    offset = int(offset)
    if low.endswith((".nii", ".mgh")):
        if offset + n_bytes > size:
            return (
                f"truncated: the header declares {_x(shape)} voxels of "
                f"{np.dtype(hdr.get_data_dtype()).name} ({offset + n_bytes} bytes with the header) "
                f"but the file has {size} bytes", notes
            )
    elif n_bytes < 2**32:
        isize = _gzip_isize(file)
        need = offset + n_bytes
        # NIfTI ends with its data; MGH may carry optional tags after it
        if isize is not None and (isize < need if low.endswith(".mgz") else isize != need):
            notes.append(
                f"the gzip trailer records {isize} bytes uncompressed but the header declares "
                f"{offset + n_bytes}; the file may be truncated"
            )
    return "", notes


def check_file(file: str, *, read_header: bool = True, keep_header: bool = False) -> FileCheck:
    """Check one image or mask file before anything is built on it; never raises for the file.

    Checks, in order: a supported suffix (``.nii``, ``.nii.gz``, ``.mgz``, ``.mgh``); that
    the path is a regular, non-empty file (not missing, a folder, a broken link or a link
    loop); then, with ``read_header``, one nibabel load of the header and its plausibility:
    3-D (a 4-D with one volume is allowed), 2..2048 voxels per axis, finite voxel sizes in
    (0, 20] mm, a finite non-singular affine, qform and sform agreeing when both are set,
    and (uncompressed files) a file large enough for the data its header declares. URLs are
    not checked.

    Returns
    -------
    FileCheck
        ``problem`` (one line, "" when usable), ``warning`` (one line or ""), and the
        header's ``shape``/``affine``/``dtype`` (None when there is a problem); with
        ``keep_header``, ``header`` is (nibabel header class name, header bytes as loaded).

    Notes
    -----
    A zero voxel size in a header without qform/sform is a warning: nibabel takes it as
    1 mm. A gzip-compressed file is not decompressed: its trailer (the last 4 bytes, the
    uncompressed size mod 2**32) is compared with the size the header declares, and a
    difference is only a warning, since a multi-member gzip file's trailer counts its last
    member only. A truncated file ends in compressed data, so its "trailer" almost never
    matches.
    """
    if not str(file).lower().endswith(SUPPORTED_SUFFIXES):
        return FileCheck(f"unsupported file type; allowed: {', '.join(SUPPORTED_SUFFIXES)}")
    if is_url(file):
        return FileCheck()
    problem, st = _stat_problem(file)
    if problem:
        return FileCheck(problem)
    if not read_header:
        return FileCheck()
    try:
        img, fixes = _load_reporting_fixes(file)
    except PermissionError:
        return FileCheck("not readable (permission denied)")
    except Exception as exc:  # nibabel raises many types for a broken header
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return FileCheck(f"unreadable header ({reason})")
    try:
        problem, notes = _header_problem(img, file, st.st_size, fixes)
    except Exception as exc:  # a header so odd that inspecting it fails
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return FileCheck(f"unreadable header ({reason})")
    if problem:
        return FileCheck(problem, "; ".join(notes))
    return FileCheck(
        "",
        "; ".join(notes),
        tuple(int(n) for n in img.shape),
        np.asarray(img.affine, dtype=np.float64),
        _stored_dtype(img),
        (type(img.header).__name__, bytes(img.header.binaryblock)) if keep_header else None,
    )


def check_files(files: list, read_header: bool = True, keep: list | None = None) -> list[FileCheck]:
    """:func:`check_file` of each file ("" or None: nothing listed, nothing checked), keeping
    the header of the files ``keep`` marks; one batch of :func:`validate`'s header reads,
    run on a cluster's worker when there is one."""
    keep = keep or [False] * len(files)
    return [check_file(f, read_header=read_header, keep_header=k) if f else FileCheck()
            for f, k in zip(files, keep, strict=True)]


def _check_all(files: list, keep: list, read_header: bool, client, progress: bool) -> list[FileCheck]:
    """:func:`check_files` of every file, on the active cluster's workers when there is one
    and the manifest needs more than one task, else here."""
    client = active_client(client)
    per_task = max(1, int(config.get("cohort.files-per-check-task")))
    if client is None or len(files) <= per_task:
        return check_files(files, read_header, keep)
    items = list(zip(files, keep, strict=True))
    groups = [items[k : k + per_task] for k in range(0, len(items), per_task)]
    out = run_batches(_check_group, groups, client=client, label="check files", unit="files",
                      progress=progress, key_prefix="thaldask-check-files", args=(read_header,))
    return [c for batch in out for c in batch]


def _check_group(items: list, read_header: bool) -> list[FileCheck]:
    """:func:`check_files` of (file, keep its header) pairs."""
    return check_files([f for f, _ in items], read_header, [k for _, k in items])


def _manifest_problems(df: pd.DataFrame, src: str) -> list[tuple[int, str]]:
    """Problems of the manifest as a whole (no file is opened)."""
    problems: list[tuple[int, str]] = []

    def bad(row: int, msg: str):
        problems.append((int(row), f"{src} row {row}: {msg}"))

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
    for (s, t), grp in df.groupby(["subject", "timepoint"], sort=False):
        sites = sorted(set(grp["site"]) - {""})
        if len(sites) > 1:
            bad(int(grp["row"].iloc[0]), f"subject {s!r} timepoint {t!r} has several sites {sites}")
    return problems


def _raise(src: str, problems: list[tuple[int, str]]):
    problems = sorted(problems, key=lambda p: p[0])
    lines = [p[1] for p in problems]
    n = len(lines)
    raise ManifestError(f"{src}: {n} problem{'s' if n > 1 else ''}; first: {lines[0]}", problems=lines)


def validate(
    manifest: pd.DataFrame | str | os.PathLike,
    *,
    check_files: bool = True,
    read_headers: bool = True,
    on_file_error: str = "raise",
    client=None,
    progress: bool = False,
) -> pd.DataFrame:
    """Validate a manifest: problems of the manifest at once, problems of one file per row.

    Manifest problems (checked first, without opening a file): empty required values,
    ``kind``, label conventions of masks, duplicate (subject, timepoint, kind, contrast,
    method), masks without an image of their subject/timepoint/contrast, several sites in
    one scan. They always raise, all listed at once.

    File problems (:func:`check_file`, one header read per file): missing, empty, a folder,
    a link loop, an unsupported suffix, an unreadable or implausible header. A mask whose
    image has a file problem gets one too.

    Parameters
    ----------
    manifest : path of a manifest CSV/TSV, or a DataFrame from :func:`read_manifest`
    check_files : check the listed files (else only the manifest itself)
    read_headers : read each file's header (else only that the file exists)
    on_file_error : ``"raise"`` (default): file problems raise together with manifest
        problems; ``"flag"``: they are returned in the ``problem`` column and only manifest
        problems raise.
    client : a ``distributed.Client``; None uses the active client if any. With a client,
        the files are checked on its workers, ``thaldask.cohort.files-per-check-task`` per
        task (the same checks, results in manifest order); without one, in this process.
    progress : show the checks' progress on stderr (with a client)

    Returns
    -------
    pandas.DataFrame
        the manifest (read if a path was given) with ``problem`` and ``warning`` (one line
        each, ``"<manifest> row N: '<path>': reason"``, empty string when none) and, when
        ``read_headers``, ``shape`` (tuple), ``affine`` (4x4 float64 array), ``dtype``
        (voxel type as read) and, for images, ``header`` (nibabel's header class name and
        bytes as loaded) from the headers, None for rows with a problem. With
        ``on_file_error="raise"`` each warning is also issued as a
        :class:`~thaldask.errors.ThaldaskWarning`.

    Raises
    ------
    ManifestError
        listing every problem (``.problems``), each ``<manifest> row N: <file>: reason``.
    """
    if on_file_error not in ("raise", "flag"):
        raise ValueError(f"on_file_error must be 'raise' or 'flag'; got {on_file_error!r}")
    if isinstance(manifest, pd.DataFrame) and manifest.attrs.get("validated") and "affine" in manifest:
        flagged = [p for p in manifest.get("problem", pd.Series(dtype=str)) if p]
        if on_file_error == "flag" or not flagged:
            return manifest
        _raise(Path(manifest.attrs.get("source", "manifest")).name, [(0, p) for p in flagged])
    df = read_manifest(manifest) if not isinstance(manifest, pd.DataFrame) else manifest.copy()
    src = Path(df.attrs.get("source", "manifest")).name
    if len(df) == 0:
        raise ManifestError(f"{src}: the manifest lists no files")
    problems = _manifest_problems(df, src)
    if problems and on_file_error == "flag":
        _raise(src, problems)
    n = len(df)
    checks = [FileCheck()] * n
    if check_files:
        keep = (df["kind"] == "image").tolist()  # a scan's stored header is its image's
        checks = _check_all(list(df["file"]), keep, read_headers, client, progress)
    row_problem = [
        f"{src} row {r}: {p!r}: {c.problem}" if c.problem else ""
        for r, p, c in zip(df["row"], df["path"], checks, strict=True)
    ]
    row_warning = [
        f"{src} row {r}: {p!r}: {c.warning}" if c.warning else ""
        for r, p, c in zip(df["row"], df["path"], checks, strict=True)
    ]
    image_of = {}
    for k, r in enumerate(df.itertuples(index=False)):
        if r.kind == "image":
            image_of.setdefault((r.subject, r.timepoint, r.contrast), k)
    for k, r in enumerate(df.itertuples(index=False)):
        if r.kind != "mask" or row_problem[k]:
            continue
        i = image_of.get((r.subject, r.timepoint, r.contrast))
        if i is not None and checks[i].problem:
            row_problem[k] = (
                f"{src} row {r.row}: {r.path!r}: its image (row {df['row'].iloc[i]}) failed: {checks[i].problem}"
            )
    if on_file_error == "raise":
        problems += [(int(r), p) for r, p in zip(df["row"], row_problem, strict=True) if p]
        if problems:
            _raise(src, problems)
        for w in row_warning:
            if w:
                warnings.warn(w, ThaldaskWarning, stacklevel=2)
    df["problem"] = row_problem
    df["warning"] = row_warning
    if check_files and read_headers:
        for col in ("shape", "affine", "dtype", "header"):
            vals = [None if p else getattr(c, col) for p, c in zip(row_problem, checks, strict=True)]
            df[col] = pd.Series(vals, index=df.index, dtype=object)
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
