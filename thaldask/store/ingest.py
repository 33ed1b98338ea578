"""Ingest a cohort manifest (NIfTI/MGZ files) into the cohort store, one Dask task per scan."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass

import numpy as np
import pandas as pd

from thaldask.cohort.labels import parse_labels, split_binary_by_midline
from thaldask.cohort.manifest import scan_table, validate
from thaldask.errors import (
    GridMismatchError,
    LabelConventionError,
    ScanError,
    StoreConflictError,
    StoreNotFoundError,
    ThaldaskError,
)
from thaldask.store import _io
from thaldask.store.core import (
    BINARY,
    NAN_REPLACED,
    RESAMPLED,
    SCALED,
    CohortStore,
    append_scans,
    create_store,
    decode_decimal,
    default_layout,
    is_remote,
    n_decimals,
    open_store,
    set_clinical,
)

__all__ = ["ingest", "REPORT_COLUMNS"]

REPORT_COLUMNS = [
    "row", "subject", "timepoint", "kind", "contrast", "method", "path",
    "status", "resampled", "reason",
]
#: a NaN fraction above this fails the image; below, NaNs become 0 and are recorded
MAX_NAN_FRACTION = 0.5


@dataclass
class _Plan:
    scans: pd.DataFrame
    reference: list[str]
    grid_shape: tuple[int, int, int]
    scan_meta: dict
    orig_axcodes: list[str]
    specs: list[dict]
    image_dtypes: dict


def _array_name(kind: str, contrast: str, method: str) -> str:
    return f"images/{contrast}" if kind == "image" else f"masks/{method}/{contrast}"


def plan_ingest(df: pd.DataFrame) -> _Plan:
    """From a validated manifest (with headers), each scan's reference grid and tasks."""
    scans = scan_table(df)
    n = len(scans)
    ref_contrast, specs, axc = [], [], []
    meta = {
        "affine": np.zeros((n, 4, 4)),
        "shape": np.zeros((n, 3), np.int32),
        "spacing": np.zeros((n, 3)),
        "orig_affine": np.zeros((n, 4, 4)),
        "orig_shape": np.zeros((n, 3), np.int32),
        "orig_ornt": np.zeros((n, 3, 2)),
        "header": np.zeros((n, _io.HEADER_BYTES), np.uint8),
        "header_info": np.zeros((n, 2), np.int32),
    }
    groups = df.groupby(["subject", "timepoint"], sort=False)
    for i, (s, t) in enumerate(zip(scans["subject"], scans["timepoint"], strict=False)):
        rows = groups.get_group((s, t))
        imgs = rows[rows["kind"] == "image"]
        ref = imgs[imgs["contrast"] == "T1w"]
        ref = ref.iloc[0] if len(ref) else imgs.iloc[0]
        shape3 = tuple(ref["shape"][:3])
        aff = np.asarray(ref["affine"], dtype=np.float64)
        ornt = _io.ras_orientation(aff)
        rshape = _io.ras_shape(shape3, ornt)
        import nibabel.orientations as no

        ras_aff = aff @ no.inv_ornt_aff(ornt, shape3)
        meta["affine"][i] = ras_aff
        meta["shape"][i] = rshape
        meta["spacing"][i] = np.sqrt((ras_aff[:3, :3] ** 2).sum(0))
        meta["orig_affine"][i] = aff
        meta["orig_shape"][i] = shape3
        meta["orig_ornt"][i] = ornt
        fmt, hb = _header_bytes(ref["file"])
        meta["header"][i, : len(hb)] = np.frombuffer(hb, np.uint8)
        meta["header_info"][i] = (fmt, len(hb))
        ref_contrast.append(str(ref["contrast"]))
        axc.append(_io.axcodes(aff))
        entries = []
        order = [int(ref.name)] + [k for k in imgs.index if k != ref.name] + list(
            rows.index[rows["kind"] == "mask"]
        )
        for k in order:
            r = df.loc[k]
            entries.append(
                {
                    "row": int(r["row"]),
                    "kind": r["kind"],
                    "contrast": r["contrast"],
                    "method": r["method"],
                    "labels": r["labels"],
                    "path": r["path"],
                    "file": r["file"],
                    "array": _array_name(r["kind"], r["contrast"], r["method"]),
                    "is_ref": k == int(ref.name),
                }
            )
        specs.append({"scan": i, "subject": s, "timepoint": t, "entries": entries,
                      "voxels": int(np.prod(rshape)) * len(entries)})
    grid = tuple(int(v) for v in meta["shape"].max(0))
    return _Plan(scans, ref_contrast, grid, meta, axc, specs, _image_dtypes(df, specs, meta))


def _image_dtypes(df: pd.DataFrame, specs, meta) -> dict[str, str]:
    """Storage type per image contrast: int16 when every file of it is unscaled 8/16-bit
    integer on its scan's reference grid (exact, half the bytes of float32), else float32."""
    small = {"uint8", "int8", "int16"}
    out: dict[str, str] = {}
    by_row = df.set_index("row")
    for sp in specs:
        i = sp["scan"]
        for e in sp["entries"]:
            if e["kind"] != "image":
                continue
            r = by_row.loc[e["row"]]
            e["same_grid"] = bool(_io.same_grid(
                r["affine"], r["shape"][:3], meta["orig_affine"][i], meta["orig_shape"][i]
            ))
            ok = str(r.get("dtype", "float32")) in small and e["same_grid"]
            out[e["array"]] = "int16" if out.get(e["array"], "int16") == "int16" and ok else "float32"
    return out


def _header_bytes(file: str) -> tuple[int, bytes]:
    import nibabel as nib

    img = nib.load(file)
    hdr = img.header.copy()
    if isinstance(img, nib.Nifti2Image):
        fmt = _io.FORMAT_NIFTI2
    elif isinstance(img, nib.Nifti1Image):
        fmt = _io.FORMAT_NIFTI1
    else:
        fmt = _io.FORMAT_MGH
    if fmt != _io.FORMAT_MGH:
        _io.scrub_header(hdr)
    return fmt, bytes(hdr.binaryblock)


# ---------------------------------------------------------------- per-scan task


class _MoreDecimals(Exception):
    """An image has values beyond the decimals its (decimal) store array holds."""


def _reason(exc: BaseException) -> str:
    msg = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {msg}" if msg else type(exc).__name__


def ingest_scan(
    store_path: str,
    spec: dict,
    *,
    overwrite: bool = False,
    split_binary: bool = False,
    storage_options=None,
    store: CohortStore | None = None,
    loaded: dict | None = None,
) -> list[dict]:
    """Decode, reorient/resample and write every file of one scan. Never raises for bad
    input: each file's outcome is a report row (status written/skipped/failed).
    ``loaded`` maps file paths to volumes already decoded (:func:`_io.load_volume`)."""
    st = store or open_store(store_path, storage_options=storage_options)
    i = spec["scan"]
    aff_ras = st.affines[i]
    shape_ras = tuple(int(v) for v in st.shapes[i])
    orig_aff = st.orig_affines[i]
    orig_shape = tuple(int(v) for v in st.orig_shapes[i])
    ornt = st.orig_ornt[i]
    out = []
    ref_failed = None
    for e in spec["entries"]:
        row = {
            "row": e["row"], "subject": spec["subject"], "timepoint": spec["timepoint"],
            "kind": e["kind"], "contrast": e["contrast"], "method": e["method"],
            "path": e["path"], "status": "failed", "resampled": False, "reason": "",
        }
        out.append(row)
        if ref_failed is not None:
            row["reason"] = f"reference image of this scan failed ({ref_failed})"
            continue
        try:
            res = _ingest_file(
                st, i, e, aff_ras, shape_ras, orig_aff, orig_shape, ornt,
                overwrite=overwrite, split_binary=split_binary,
                volume=(loaded or {}).get(e["file"]),
            )
            row.update(res)
        except _MoreDecimals as exc:  # the array is re-encoded as float32, then this is redone
            row.update(status="deferred", reason=str(exc), array=e["array"])
        except (ThaldaskError, ValueError, OSError, EOFError, MemoryError) as exc:
            row["reason"] = _reason(exc)
            if e["is_ref"]:
                ref_failed = row["reason"]
    return out


def ingest_batch(store_path: str, specs: list[dict], **kwargs) -> list[dict]:
    """:func:`ingest_scan` for a few scans in one task (the store opened once)."""
    st = open_store(store_path, storage_options=kwargs.get("storage_options"))
    rows: list[dict] = []
    for sp in specs:
        rows.extend(ingest_scan(store_path, sp, store=st, **kwargs))
    return rows


#: a task gets scans until it holds this many voxels (~ one 256^3 image and its mask) ...
BATCH_VOXELS = 24_000_000
#: ... or this many scans: tasks of ~0.1-1 s, few enough for a small graph
BATCH_SCANS = 16


def batches(specs: list[dict], *, voxels: int = BATCH_VOXELS, scans: int = BATCH_SCANS):
    """Group consecutive scans into tasks of at least ``voxels`` voxels or ``scans`` scans."""
    out, cur, n = [], [], 0
    for sp in specs:
        cur.append(sp)
        n += sp.get("voxels", voxels)
        if n >= voxels or len(cur) >= scans:
            out.append(cur)
            cur, n = [], 0
    if cur:
        out.append(cur)
    return out


def _ingest_file(
    st: CohortStore, i, e, aff_ras, shape_ras, orig_aff, orig_shape, ornt, *, overwrite,
    split_binary, volume=None,
):
    name = e["array"]
    # fast path: the same source file is already stored
    old = st.stored_file_hash(name, i)
    if old is not None:
        import hashlib

        if hashlib.sha256(_io.read_bytes(e["file"])).digest() == old:
            return {"status": "skipped", "reason": "same file already stored"}
    vol = volume if volume is not None else _io.load_volume(e["file"], kind=e["kind"])
    grid = st.grid_shape
    flags = 0
    note = ""
    dec = None
    data = vol.data
    same = _io.same_grid(vol.affine, data.shape, orig_aff, orig_shape)
    if e["kind"] == "image":
        target = np.dtype(e.get("dtype", "float32"))
        # a sum is finite only when every value is (NaN and inf propagate): one fast
        # pass over the usual clean image; a sum that overflows only costs the full check
        with np.errstate(over="ignore", invalid="ignore"):
            quick = data.dtype.kind != "f" or np.isfinite(np.sum(data, dtype=np.float32))
        if not quick:
            finite = np.isfinite(data)
            nbad = int(data.size - np.count_nonzero(finite))
            if nbad:
                if nbad > MAX_NAN_FRACTION * data.size:
                    raise ScanError(f"image is NaN-filled ({nbad} of {data.size} voxels not finite)")
                data = np.where(finite, data, np.float32(0))
                flags |= NAN_REPLACED
                note = f"{nbad} non-finite voxels set to 0"
        if vol.scaled:
            flags |= SCALED
        if same:
            _check_cast(data, target, name)
            ras = _io.to_ras(data, vol.affine, ornt)[0]
        else:
            if np.allclose(vol.affine, orig_aff, atol=1e-4):
                raise GridMismatchError(
                    f"image has shape {data.shape} but the scan's reference image has {orig_shape}"
                )
            ras = _io.resample_to(data, vol.affine, aff_ras, shape_ras, order=1)
            flags |= RESAMPLED
            _check_cast(ras, target, name)
        dec = st.decimal_scale(name) if target.kind == "f" else None
        if dec is not None:  # stored as integers value * scale: exact or refused here
            full = _io.quantised_copy(ras.astype(target, copy=False), grid, dec[0], dec[1],
                                      out=_io.scratch(grid, dec[1]))
            if full is None:
                raise _MoreDecimals(
                    f"values beyond the {n_decimals(dec[0])} decimals stored for {name}"
                )
        else:
            full = _io.c_copy(ras, grid, target, out=_io.scratch(grid, target))
    else:
        conv = parse_labels(e["labels"])
        sides = _mask_sides(data, conv)
        if same:
            ras = _io.to_ras(sides, vol.affine, ornt)[0]
        else:
            if np.allclose(vol.affine, orig_aff, atol=1e-4):
                raise GridMismatchError(
                    f"mask has shape {tuple(data.shape)} but its image has {orig_shape}"
                )
            _io.check_overlap(sides, vol.affine, sides.shape, aff_ras, shape_ras)
            ras = _io.resample_to(sides, vol.affine, aff_ras, shape_ras, order=0)
            flags |= RESAMPLED
            note = (
                f"resampled (nearest) from grid {tuple(data.shape)} "
                f"{_io.axcodes(vol.affine)} onto the image grid"
            )
        if conv.binary:
            if split_binary:
                ras = split_binary_by_midline(ras, aff_ras)
                note = (note + "; " if note else "") + "binary mask split at world x = 0"
            else:
                flags |= BINARY
        full = _io.c_copy(ras, grid, np.uint8, out=_io.scratch(grid, np.uint8))
    status = st.write_scan_array(
        name, i, full, flags=flags, source_shape=vol.data.shape, source_affine=vol.affine,
        file_sha256=vol.file_sha256, overwrite=overwrite,
        # only needed on re-runs; the digest is of the values stored
        content_sha256=lambda: _io.content_hash(
            full if dec is None else decode_decimal(full, dec[0], target), aff_ras
        ),
    )
    if status == "skipped":
        note = "same content already stored"
    return {"status": status, "resampled": bool(flags & RESAMPLED), "reason": note}


def _check_cast(data: np.ndarray, target: np.dtype, name: str) -> None:
    """Refuse values the array's storage type cannot hold exactly."""
    if target.kind not in "iu" or np.can_cast(data.dtype, target, casting="safe"):
        return
    if data.dtype.kind == "f" and not np.array_equal(data, np.round(data)):
        raise ScanError(f"{name} is stored as {target} but this file holds non-integer values")
    info = np.iinfo(target)
    lo, hi = (data.min(), data.max()) if data.size else (0, 0)
    if lo < info.min or hi > info.max:
        raise ScanError(f"{name} is stored as {target} but this file holds values {lo}..{hi}")


def _mask_sides(data: np.ndarray, conv) -> np.ndarray:
    """Validate a mask's values and map them to 0/1/2 (binary: 0/1)."""
    if data.dtype.kind == "f":
        if not np.all(np.isfinite(data)) or not np.array_equal(data, np.round(data)):
            raise LabelConventionError("mask holds non-integer values")
        data = data.astype(np.int64)
    elif data.dtype.kind == "b":
        data = data.astype(np.uint8)
    elif data.dtype.kind not in "iu":
        raise LabelConventionError(f"mask has data type {data.dtype}; integers required")
    if data.size:
        lo = int(data.min()) if data.dtype.kind == "i" else 0
        hi = int(data.max())
        if lo < 0 or hi > 65535:
            raise LabelConventionError(f"mask holds labels outside 0..65535 ({lo}..{hi})")
    if conv.binary:
        allowed = {0, *conv.ids} if conv.ids else {0, 1}
    elif conv.name.split(":")[0].lower() in ("freesurfer", "synthseg", "first", "aseg", "dbsegment"):
        allowed = None  # atlas/DL outputs carry many other structures: dropped
    else:
        allowed = {0, *conv.left, *conv.right}
    return _io.fast_sides(data, conv, allowed=allowed)


# ---------------------------------------------------------------- driver


def _stderr_console():
    from rich.console import Console

    return Console(stderr=True)


def _merge_plan(st: CohortStore, plan: _Plan) -> tuple[_Plan | None, str, int]:
    """Fit a manifest's plan onto an existing store.

    Scans already stored keep their index and must keep their reference grid; new scans
    are appended (their grids must fit the stored padded grid). Returns (plan re-indexed
    to the store, reason if impossible, number of appended scans).
    """
    old = list(zip(st.scans["subject"], st.scans["timepoint"], strict=False))
    pos = {k: i for i, k in enumerate(old)}
    keys = list(zip(plan.scans["subject"], plan.scans["timepoint"], strict=False))
    for j, k in enumerate(keys):
        i = pos.get(k)
        if i is None:
            continue
        if not (
            np.allclose(st.orig_affines[i], plan.scan_meta["orig_affine"][j], atol=1e-6)
            and np.array_equal(st.orig_shapes[i], plan.scan_meta["orig_shape"][j])
        ):
            return None, f"the reference grid of {k[0]} {k[1]} differs from the stored one", 0
    added = [j for j, k in enumerate(keys) if k not in pos]
    if added:
        need = plan.scan_meta["shape"][added].max(0)
        if np.any(need > np.asarray(st.grid_shape)):
            return None, (
                f"new scans need grid {tuple(int(v) for v in need)} but the store's padded grid "
                f"is {st.grid_shape}"
            ), 0
    index = {k: pos[k] for k in keys if k in pos}
    for n, j in enumerate(added):
        index[keys[j]] = len(old) + n
    for sp in plan.specs:
        sp["scan"] = index[(sp["subject"], sp["timepoint"])]
    if not added:
        return plan, "", 0
    meta = {}
    for key, arr in plan.scan_meta.items():
        meta[key] = np.concatenate([np.asarray(st._array(f"scan/{key}")[...]), arr[added]])
    scans = pd.concat([st.scans, plan.scans.iloc[added]], ignore_index=True)
    scans.index.name = "scan"
    merged = _Plan(
        scans=scans,
        reference=st.reference + [plan.reference[j] for j in added],
        grid_shape=st.grid_shape,
        scan_meta=meta,
        orig_axcodes=list(st._attrs.get("orig_axcodes", [])) + [plan.orig_axcodes[j] for j in added],
        specs=plan.specs,
        image_dtypes=plan.image_dtypes,
    )
    return merged, "", len(added)


def _fill_sites(scans: pd.DataFrame, clin: pd.DataFrame) -> None:
    """Sites missing from the manifest are taken from the clinical table (in place)."""
    site = {
        (str(s), str(t)): str(v)
        for s, t, v in zip(clin["subject"], clin["timepoint"], clin["site"], strict=False)
        if v is not None and str(v) not in ("", "nan", "None")
    }
    for k in scans.index:
        if not scans.at[k, "site"]:
            scans.at[k, "site"] = site.get((scans.at[k, "subject"], scans.at[k, "timepoint"]), "")


def _remove_store(path: str, storage_options=None):
    if is_remote(path):
        import fsspec

        fs, p = fsspec.core.url_to_fs(path, **(storage_options or {}))
        if fs.exists(p):
            fs.rm(p, recursive=True)
    elif os.path.exists(path):
        shutil.rmtree(path)


def _write_report(path: str, report: pd.DataFrame, storage_options=None):
    if is_remote(path):
        import fsspec

        with fsspec.open(path.rstrip("/") + "/ingest_report.csv", "w", **(storage_options or {})) as f:
            report.to_csv(f, index=False)
    else:
        report.to_csv(os.path.join(path, "ingest_report.csv"), index=False)


def ingest(
    manifest,
    store: str | os.PathLike,
    *,
    clinical=None,
    overwrite: bool = False,
    client=None,
    progress: bool = True,
    storage_options: dict | None = None,
    layout: dict | None = None,
    split_binary: bool = False,
) -> pd.DataFrame:
    """Ingest every file of a manifest into a cohort store, one Dask task per scan.

    The manifest (and clinical table) are validated before any graph is built. The store
    and all its arrays are created by this process; each task writes whole scans into
    their own chunks; metadata is consolidated once at the end. Re-running skips scans
    already stored with the same content.

    Parameters
    ----------
    manifest : path of a manifest CSV/TSV, or a DataFrame from ``read_manifest``
    store : path or fsspec URL of the store (created if absent)
    clinical : path or DataFrame of the clinical table (validated, stored in the attrs)
    overwrite : replace stored content that differs (and a store whose scan list differs)
    client : a ``distributed.Client``; None uses the active client if any, else dask's
        threaded scheduler in this process
    progress : show a progress bar on stderr
    storage_options : fsspec options for URLs
    layout : chunking/compression override (see ``DEFAULT_LAYOUT``)
    split_binary : split binary masks into left (1) / right (2) at world x = 0 (RAS); by
        default they are stored as 1 = thalamus and flagged ``binary`` in the records

    Returns
    -------
    pandas.DataFrame
        the ingest report, one row per manifest file: status written/skipped/failed and a
        one-line reason; also written to ``STORE/ingest_report.csv``.

    Raises
    ------
    ManifestError, ClinicalTableError
        the inputs are invalid (every problem listed).
    StoreConflictError
        a stored scan's reference grid changed, or new scans do not fit the stored grid,
        and ``overwrite`` is False (which rebuilds the store). New scans are appended.
    """
    from thaldask.cohort.clinical import validate_clinical

    store = str(store)
    if not is_remote(store):
        store = os.path.abspath(store)  # workers may run elsewhere in the file system
    df = validate(manifest)
    clin = validate_clinical(clinical, manifest=df) if clinical is not None else None
    plan = plan_ingest(df)
    if clin is not None and "site" in clin.columns:
        _fill_sites(plan.scans, clin)
    st = None
    try:
        st = open_store(store, storage_options=storage_options)
    except StoreNotFoundError:
        st = None
    if st is not None:
        merged, why, n_added = _merge_plan(st, plan)
        if merged is None:
            if not overwrite:
                raise StoreConflictError(
                    f"{store}: cannot take this manifest ({why}); pass --overwrite to rebuild "
                    "the store from it, or use a new store"
                )
            _remove_store(store, storage_options)
            st = None
        elif n_added:
            plan = merged
            append_scans(st, plan.scans, plan.scan_meta, plan.reference, plan.orig_axcodes)
            st = open_store(store, storage_options=storage_options)
    if st is None:
        st = create_store(
            store,
            scans=plan.scans,
            grid_shape=plan.grid_shape,
            scan_meta=plan.scan_meta,
            reference=plan.reference,
            orig_axcodes=plan.orig_axcodes,
            layout=layout,
            storage_options=storage_options,
        )
    # create every array before any task writes
    stored = {}
    lay = {**default_layout(), **(st._attrs.get("layout") or {})}
    probed, loaded = [], {}  # scans whose files were decoded to choose a float codec
    for name in sorted({e["array"] for sp in plan.specs for e in sp["entries"]}):
        dtype = plan.image_dtypes.get(name, "uint8")
        decimals = None
        if dtype == "float32" and lay["float_codec"] == "auto" and not _exists(st, name):
            decimals, sp, vols = _probe_decimals(plan, name)
            if sp is not None and not any(sp is p for p in probed):
                probed.append(sp)
            loaded.update(vols)
        st.ensure_array(name, dtype=dtype, decimals=decimals)
        stored[name] = st._array(name).dtype.str
    for sp in plan.specs:
        for e in sp["entries"]:
            e["dtype"] = stored[e["array"]]
    if clin is not None:
        set_clinical(st, clin)
    kwargs = {"overwrite": overwrite, "split_binary": split_binary,
              "storage_options": storage_options}
    rows = []
    for sp in probed:  # written here, from the volumes already decoded
        rows.extend(ingest_scan(store, sp, store=st, loaded=loaded, **kwargs))
    loaded.clear()
    rest = [sp for sp in plan.specs if not any(sp is p for p in probed)]
    rows += _run(store, rest, client=client, progress=progress, kwargs=kwargs)
    deferred = [r for r in rows if r["status"] == "deferred"]
    if deferred:  # an image with more decimals than its array: re-encode, then redo these
        for name in sorted({r["array"] for r in deferred}):
            first = next(r for r in deferred if r["array"] == name)
            n = st.recode_as_float(name)
            if progress:
                _stderr_console().print(
                    f"{name}: {first['subject']} {first['timepoint']} has {first['reason']}; "
                    f"re-encoded its {n} stored scans as float32 (values unchanged)"
                )
        redo = {r["row"] for r in deferred}
        specs = [dict(sp, entries=[e for e in sp["entries"] if e["row"] in redo])
                 for sp in plan.specs]
        specs = [sp for sp in specs if sp["entries"]]
        again = {r["row"]: r for r in _run(store, specs, client=client, progress=progress,
                                          kwargs=kwargs)}
        why = {r["row"]: r["reason"] for r in deferred}
        for row, r in again.items():
            if r["status"] == "written":
                r["reason"] = f"{why[row]}: array re-encoded as float32 first"
        rows = [again.get(r["row"], r) if r["status"] == "deferred" else r for r in rows]
        for r in rows:
            if r["status"] == "deferred":  # cannot happen after re-encoding; never silent
                r["status"] = "failed"
    report = pd.DataFrame(rows, columns=REPORT_COLUMNS).sort_values("row").reset_index(drop=True)
    _write_report(store, report, storage_options)
    st.consolidate()
    return report


def _exists(st: CohortStore, name: str) -> bool:
    try:
        st._array(name)
        return True
    except KeyError:
        return False


def _probe_decimals(plan: _Plan, name: str):
    """Decide how float image array ``name`` is stored, from its first readable file.

    Returns ((decimals, integer dtype) or None, that file's spec, {file: volume}): the
    caller writes that scan with the volume already decoded, so the decision costs no
    extra read. Decimals only when the file has them and no file of the contrast is
    resampled (interpolated values have none). A later scan with more decimals is caught
    when it is written, and the array is then re-encoded as float32
    (``CohortStore.recode_as_float``).
    """
    entries = [(sp, e) for sp in plan.specs for e in sp["entries"] if e["array"] == name]
    if not entries or not all(e.get("same_grid") for _, e in entries):
        return None, None, {}
    for sp, e in entries[:3]:
        try:
            vol = _io.load_volume(e["file"], kind="image")
        except (ThaldaskError, ValueError, OSError, EOFError, MemoryError):
            continue  # a bad file: its task reports it
        if vol.data.dtype.kind != "f":
            return None, sp, {e["file"]: vol}
        data = vol.data.astype(np.float32, copy=False)  # what the array will hold
        with np.errstate(over="ignore", invalid="ignore"):
            if not np.isfinite(np.sum(data, dtype=np.float32)):
                data = np.where(np.isfinite(data), data, np.float32(0))
        d = _io.decimal_places(data, sample=1 << 20)  # each write checks every voxel
        if d is None:
            return None, sp, {e["file"]: vol}
        k = float(max(-data.min(), data.max())) * 10.0**d
        # int16 when the values leave 1.5x headroom, else int32 (both exact)
        if k > (1 << 24) / 4:
            return None, sp, {e["file"]: vol}
        return (d, "int16" if k <= np.iinfo(np.int16).max / 1.5 else "int32"), sp, {e["file"]: vol}
    return None, None, {}


def _run(store, specs, *, client, progress, kwargs):
    if client is None:
        try:
            from distributed import default_client

            client = default_client()
        except (ImportError, ValueError):
            client = None
    rows: list[dict] = []
    if client is not None:
        slots = max(1, sum(client.nthreads().values()))
    else:
        import dask

        slots = int(dask.config.get("num_workers", None) or os.cpu_count() or 1)
    # at least two tasks per thread when the cohort allows, so that all workers stay busy
    groups = batches(specs, scans=max(1, min(BATCH_SCANS, -(-len(specs) // (2 * slots)))))
    bar = _Bar(len(specs), "ingest", enabled=progress)
    if client is not None:
        import uuid

        from distributed import as_completed

        run = uuid.uuid4().hex[:12]  # a fresh key per run: a re-run must re-check the store
        futs = {}
        for grp in groups:
            key = f"thaldask-ingest-{run}-{grp[0]['scan']}"
            f = client.submit(ingest_batch, store, grp, key=key, pure=False, retries=1, **kwargs)
            futs[f] = grp
        with bar:
            for fut in as_completed(list(futs)):
                grp = futs[fut]
                try:
                    rows.extend(fut.result())
                except Exception as exc:  # worker died or task crashed
                    for sp in grp:
                        rows.extend(_failed_rows(sp, f"task failed: {_reason(exc)}"))
                bar.advance(len(grp))
        return rows
    import dask

    sizes = {}
    tasks = []
    for k, grp in enumerate(groups):
        name = f"thaldask-ingest-{k}"
        sizes[name] = len(grp)
        tasks.append(dask.delayed(ingest_batch, pure=False)(store, grp, dask_key_name=name, **kwargs))
    from dask.callbacks import Callback

    class _CB(Callback):
        def _posttask(self, key, result, dsk, state, id):
            bar.advance(sizes.get(key, 0))

    with bar, _CB():
        results = dask.compute(*tasks, scheduler=dask.config.get("scheduler", None) or "threads")
    for r in results:
        rows.extend(r)
    return rows


def _failed_rows(sp, reason):
    return [
        {"row": e["row"], "subject": sp["subject"], "timepoint": sp["timepoint"], "kind": e["kind"],
         "contrast": e["contrast"], "method": e["method"], "path": e["path"], "status": "failed",
         "resampled": False, "reason": reason}
        for e in sp["entries"]
    ]


class _Bar:
    """A rich progress bar on stderr (no-op when disabled)."""

    def __init__(self, total: int, label: str, *, enabled: bool = True):
        self.total, self.label, self.enabled = total, label, enabled
        self._p = None
        self._t = None

    def __enter__(self):
        if self.enabled:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
            )

            self._p = Progress(
                TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                TimeElapsedColumn(), console=_stderr_console(), transient=False,
            )
            self._p.__enter__()
            self._t = self._p.add_task(self.label, total=self.total)
        return self

    def advance(self, n: int = 1):
        if self._p is not None:
            self._p.advance(self._t, n)

    def __exit__(self, *exc):
        if self._p is not None:
            self._p.__exit__(*exc)
        return False
