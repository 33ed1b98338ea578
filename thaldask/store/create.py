"""Creating and growing a cohort store, and the rule about where thaldask may write.

thaldask creates a store only in a new folder or an empty one, and writes only inside a
folder that already is a thaldask store (a Zarr group whose root metadata carries the
``thaldask`` marker, :data:`~thaldask.store.format.ROOT_ATTR`). Anything else at the target
(a folder of NIfTIs, a manifest, a plain Zarr group, a file) is refused with
:class:`~thaldask.errors.NotAStoreError` and left untouched: ``zarr.open_group(mode="w")``
and recursive deletes run only on paths checked here.
"""

from __future__ import annotations

import datetime as _dt
import json
import os

import numpy as np
import pandas as pd

from thaldask import __version__
from thaldask._shared.paths import is_remote
from thaldask.errors import NotAStoreError, StoreConflictError, StoreError
from thaldask.store.backend import make_zarr_store
from thaldask.store.codecs import default_layout
from thaldask.store.cohort_store import CohortStore, write_scan_meta
from thaldask.store.format import (
    FORMAT_VERSION,
    HASH_LEN,
    IMAGES,
    MASKS,
    PROBS,
    RECORD_LEN,
    ROOT_ATTR,
    ROOT_METADATA,
    hash_array,
    is_per_scan,
    record_array,
)
from thaldask.store.tables import v1_tables, write_clinical, write_scan_table

__all__ = [
    "create_store",
    "migrate_store",
    "append_scans",
    "grow_grid",
    "regrid_scans",
    "set_clinical",
    "is_store",
    "check_store_target",
]


# ---------------------------------------------------------------- where thaldask may write
def _fs(path: str, storage_options=None):
    import fsspec

    return fsspec.core.url_to_fs(path, **(storage_options or {}))


def _listing(path: str, storage_options=None) -> tuple[str, list[str], list[str]] | None:
    """None when nothing is at ``path``; else (kind, file names, folder names) with kind
    ``"file"`` or ``"folder"``."""
    if is_remote(path):
        fs, p = _fs(path, storage_options)
        if not fs.exists(p):
            return None
        if fs.isfile(p):
            return "file", [], []
        files, dirs = [], []
        for e in fs.ls(p, detail=True):
            name = os.path.basename(str(e["name"]).rstrip("/"))
            (dirs if e.get("type") == "directory" else files).append(name)
        return "folder", sorted(files), sorted(dirs)
    path = path[len("file://"):] if path.startswith("file://") else path
    if not os.path.lexists(path):
        return None
    if not os.path.isdir(path):
        return "file", [], []
    files, dirs = [], []
    with os.scandir(path) as it:
        for e in it:
            (dirs if e.is_dir(follow_symlinks=False) else files).append(e.name)
    return "folder", sorted(files), sorted(dirs)


def _root_attrs(path: str, storage_options=None) -> dict | None:
    """Root attributes of a Zarr v3 group at ``path``, or None when there is none."""
    try:
        if is_remote(path):
            fs, p = _fs(path, storage_options)
            raw = fs.cat(p.rstrip("/") + "/" + ROOT_METADATA)
        else:
            path = path[len("file://"):] if path.startswith("file://") else path
            with open(os.path.join(path, ROOT_METADATA), "rb") as f:
                raw = f.read()
        meta = json.loads(raw)
    except (OSError, ValueError):
        return None
    if not isinstance(meta, dict) or meta.get("node_type") != "group":
        return None
    return meta.get("attributes") or {}


def is_store(path: str, *, storage_options: dict | None = None) -> bool:
    """Whether ``path`` is a thaldask store (its root metadata carries thaldask's marker)."""
    attrs = _root_attrs(str(path), storage_options)
    return attrs is not None and isinstance(attrs.get(ROOT_ATTR), dict)


def check_store_target(path: str, *, storage_options: dict | None = None) -> bool:
    """Check that thaldask may write a store at ``path``.

    Returns False when ``path`` is free (nothing there, or an empty folder: a store may be
    created there) and True when it already is a thaldask store.

    Raises
    ------
    NotAStoreError
        something else is at ``path``; the message names it and what it holds.
    """
    path = str(path)
    found = _listing(path, storage_options)
    if found is None:
        return False
    kind, files, dirs = found
    if kind == "file":
        raise NotAStoreError(f"'{path}' is a file, not a thaldask store; choose a new folder")
    if not files and not dirs:
        return False
    if is_store(path, storage_options=storage_options):
        return True
    parts = []
    if files:
        parts.append(f"{len(files)} file{'s' if len(files) != 1 else ''}")
    if dirs:
        parts.append(f"{len(dirs)} folder{'s' if len(dirs) != 1 else ''}")
    example = files[0] if files else dirs[0] + "/"
    what = "a Zarr group without thaldask's marker, " if ROOT_METADATA in files else ""
    raise NotAStoreError(
        f"'{path}' exists and is not a thaldask store ({what}holds {' and '.join(parts)}, "
        f"e.g. {example}); choose a new folder"
    )


# ---------------------------------------------------------------- creation
def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _scan_frame(scans: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({k: [str(v) for v in scans[k]] for k in ("subject", "timepoint", "site")})


def create_store(
    path: str,
    *,
    scans: pd.DataFrame,
    grid_shape,
    scan_meta: dict,
    reference: list[str],
    orig_axcodes: list[str],
    layout: dict | None = None,
    storage_options: dict | None = None,
) -> CohortStore:
    """Create a new store with its scan table and scan-level metadata (written once).

    ``path`` must be new or an empty folder: a store is never created over anything, not
    even over another thaldask store.

    Raises
    ------
    NotAStoreError
        ``path`` holds something else than a thaldask store (nothing is touched).
    StoreConflictError
        ``path`` is a thaldask store already.
    """
    import zarr

    path = str(path)
    if check_store_target(path, storage_options=storage_options):
        raise StoreConflictError(f"'{path}' is already a thaldask store; open it instead")
    zs = make_zarr_store(path, storage_options=storage_options)
    scans = _scan_frame(scans)
    attrs = {
        ROOT_ATTR: {"format": FORMAT_VERSION, "version": __version__, "created": _now()},
        "n_scans": int(len(scans)),
        "grid_shape": [int(v) for v in grid_shape],
        "layout": {**default_layout(len(scans)), **(layout or {}),
                   **({"record_chunk_auto": False} if "record_chunk" in (layout or {}) else {})},
        "clinical": None,
    }
    # the target was just checked to be new or an empty folder
    zarr.open_group(store=zs, mode="w", zarr_format=3, attributes=json.loads(json.dumps(attrs)))
    write_scan_meta(zs, scan_meta)
    write_scan_table(zs, scans, reference, orig_axcodes)
    return CohortStore(path, storage_options=storage_options)


def append_scans(st: CohortStore, scans: pd.DataFrame, scan_meta: dict, reference, orig_axcodes):
    """Grow every per-scan array to ``len(scans)`` and rewrite the scan-level metadata.

    Called by the single process that plans an ingest, before any task writes.
    """
    n_old, n = st.n_scans, len(scans)
    for name, node in st.array_members():
        if is_per_scan(name) and node.shape and node.shape[0] == n_old:
            node.resize((n,) + tuple(node.shape[1:]))
    if st.format < 2:
        raise StoreError(f"{st.path}: a format-{st.format} store; run 'thaldask store migrate {st.path}' first")
    st.write_scan_meta(scan_meta)
    write_scan_table(st._zstore, _scan_frame(scans), reference, orig_axcodes)
    st.update_attrs({"n_scans": int(n)})


def _spatial(name: str) -> bool:
    return name.split("/", 1)[0] in (IMAGES, MASKS, PROBS)


def grow_grid(st: CohortStore, grid) -> tuple[int, int, int]:
    """Grow the store's padded grid in place to at least ``grid`` (never shrinks it).

    Every image, mask and probability array is resized along its three spatial axes:
    chunks already written stay as they are (zarr reads the new region as the fill value
    0, which is the zero padding), and each scan still owns every chunk of its region, so
    tasks keep writing whole scans independently. Arrays are resized before the root
    attribute changes, and the new grid is also the largest spatial shape of any array,
    so an interrupted growth is completed by the next ingest. Called by the process that
    plans an ingest, under the store lock, before any task writes. Returns the new grid.
    """
    new = np.maximum(np.asarray(st.grid_shape), np.asarray(grid, dtype=np.int64))
    members = [(n, z) for n, z in st.array_members() if _spatial(n) and len(z.shape) >= 4]
    for _, z in members:  # an earlier growth that stopped half way
        new = np.maximum(new, np.asarray(z.shape[-3:]))
    target = tuple(int(v) for v in new)
    for _, z in members:
        if tuple(z.shape[-3:]) != target:
            z.resize(tuple(z.shape[:-3]) + target)
    if target != tuple(st.grid_shape):
        st.update_attrs({"grid_shape": list(target)})
    return target


def regrid_scans(st: CohortStore, scans) -> list[str]:
    """Mark every stored array of ``scans`` not written (their reference grid changed).

    Only the write records and digests are cleared (one small chunk of each scan's own):
    the files of the manifest are then written afresh onto the new grid, and whatever
    else the scans held (masks of other methods or manifests) reads as missing until it is
    segmented or ingested again. Returns the names of the arrays that held a scan."""
    cleared = []
    for name, z in st.array_members():
        if not _spatial(name) or name.startswith(PROBS):
            continue
        try:
            rec_z = st.zarr_array(record_array(name), mode="r+")
            hash_z = st.zarr_array(hash_array(name), mode="r+")
        except KeyError:
            continue
        held = False
        for i in scans:
            if int(rec_z[int(i), 0]):
                rec_z[int(i)] = np.zeros(RECORD_LEN)  # not written first, then the digests
                hash_z[int(i)] = np.zeros(HASH_LEN, dtype=np.uint8)
                held = True
        if held:
            cleared.append(name)
    return cleared


def set_clinical(st: CohortStore, df: pd.DataFrame | None) -> None:
    """Store a validated clinical table: its columns as arrays (:mod:`~thaldask.store.tables`),
    their names and dtypes in the root attribute ``clinical``."""
    if st.format < 2:
        raise StoreError(f"{st.path}: a format-{st.format} store; run 'thaldask store migrate {st.path}' first")
    if df is None:
        st.update_attrs({"clinical": None})
        return
    st.update_attrs({"clinical": write_clinical(st._zstore, df)})


def migrate_store(path: str, *, storage_options: dict | None = None) -> tuple[int, int]:
    """Bring a store to the current format in place; returns (format before, after).

    Format 1 → 2 writes the scan and clinical tables as columns, then replaces the root
    attributes by their format-2 form in one write (an interrupted migration leaves a
    format-1 store that opens as before and migrates again). Everything else is untouched."""
    st = CohortStore(path, storage_options=storage_options)
    before = st.format
    if before >= FORMAT_VERSION:
        return before, before
    scans, reference, orig_axcodes, clin = v1_tables(st._attrs)
    write_scan_table(st._zstore, scans, reference, orig_axcodes)
    attrs = {k: v for k, v in st._attrs.items() if k not in ("scans", "reference", "orig_axcodes", "clinical")}
    attrs[ROOT_ATTR] = {**attrs[ROOT_ATTR], "format": FORMAT_VERSION, "migrated_from": before}
    attrs["n_scans"] = int(len(scans))
    attrs["clinical"] = write_clinical(st._zstore, clin) if clin is not None else None
    st._group.attrs.put(json.loads(json.dumps(attrs)))
    return before, FORMAT_VERSION
