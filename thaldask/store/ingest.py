"""Ingest a cohort manifest (NIfTI/MGZ files) into the cohort store, one Dask task per scan.

The plan (which file goes where) is built once in :mod:`thaldask.store.ingest_plan`; this
module decodes and writes files (per-scan tasks) and drives the run.
"""

from __future__ import annotations

import hashlib
import os
import sys

import numpy as np
import pandas as pd

from thaldask._shared.compute import active_client, n_slots, owned_batches, run_batches
from thaldask._shared.paths import is_remote
from thaldask.cohort.clinical import validate_clinical
from thaldask.cohort.labels import check_sides, label_values, parse_labels, split_binary_by_midline
from thaldask.cohort.manifest import validate
from thaldask.errors import (
    GridMismatchError,
    LabelConventionError,
    ScanError,
    StoreConflictError,
    ThaldaskError,
)
from thaldask.schema import GT_METHOD
from thaldask.store import fastcopy, nifti
from thaldask.store.codecs import choose_decimals, decode_decimal, default_layout, n_decimals
from thaldask.store.cohort_store import CohortStore, open_store
from thaldask.store.create import (
    append_scans,
    check_store_target,
    create_store,
    grow_grid,
    migrate_store,
    regrid_scans,
    set_clinical,
)
from thaldask.store.format import (
    BINARY,
    FORMAT_VERSION,
    NAN_REPLACED,
    RESAMPLED,
    SCALED,
)
from thaldask.store.ingest_job import (
    REPORT_COLUMNS,
    IngestJob,
    Outcome,
    prepare_ingest,
    report_frame,
    write_report,
)
from thaldask.store.ingest_plan import (
    FileEntry,
    IngestPlan,
    ScanSpec,
    merge_plan,
    only_rows,
    with_dtypes,
)
from thaldask.store.lock import store_lock
from thaldask.store.sources import record_ingest

__all__ = ["ingest", "REPORT_COLUMNS", "Outcome"]

#: reasons of stored rows that are also warnings on stderr (the data were usable, but odd)
WARN_REASONS = ("non-finite voxels set to 0", "image is all zeros", "no voxel of the")
#: a NaN fraction above this fails the image; below, NaNs become 0 and are recorded
MAX_NAN_FRACTION = 0.5


# ---------------------------------------------------------------- per-scan task


class _MoreDecimals(Exception):
    """An image has values beyond the decimals its (decimal) store array holds."""


def _reason(exc: BaseException) -> str:
    msg = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {msg}" if msg else type(exc).__name__


def ingest_scan(
    store_path: str,
    spec: ScanSpec,
    *,
    overwrite: bool = False,
    split_binary: bool = False,
    storage_options=None,
    store: CohortStore | None = None,
    loaded: dict | None = None,
) -> list[Outcome]:
    """Decode, reorient/resample and write every file of one scan. Never raises for bad
    input: each file has an :class:`Outcome` (status written/skipped/failed and why).
    ``loaded`` maps file paths to volumes already decoded (:func:`~thaldask.store.nifti.load_volume`)."""
    st = store or open_store(store_path, storage_options=storage_options)
    i = spec.scan
    geometry = {}

    def geo():  # read only when a file is decoded (a no-op re-ingest reads none of it)
        if not geometry:
            geometry["g"] = (st.affines[i], tuple(int(v) for v in st.shapes[i]), st.orig_affines[i],
                             tuple(int(v) for v in st.orig_shapes[i]), st.orig_ornt[i])
        return geometry["g"]

    out = []
    ref_failed = None
    for e in spec.entries:
        if ref_failed is not None:
            out.append(Outcome(e.row, "failed", False, f"reference image of this scan failed ({ref_failed})"))
            continue
        try:
            res = _ingest_file(
                st, i, e, geo,
                overwrite=overwrite, split_binary=split_binary,
                volume=(loaded or {}).get(e.file),
            )
            out.append(Outcome(e.row, res["status"], res.get("resampled", False), res["reason"]))
        except _MoreDecimals as exc:  # the array is re-encoded as float32, then this is redone
            out.append(Outcome(e.row, "deferred", False, str(exc), e.array))
        except (ThaldaskError, ValueError, OSError, EOFError, MemoryError) as exc:
            out.append(Outcome(e.row, "failed", False, _reason(exc)))
            if e.is_ref:
                ref_failed = out[-1].reason
    return out


def ingest_batch(specs: list[ScanSpec], store_path: str, **kwargs) -> list[Outcome]:
    """:func:`ingest_scan` for a few scans in one task (the store opened once)."""
    st = open_store(store_path, storage_options=kwargs.get("storage_options"))
    rows: list[Outcome] = []
    with st.record_batch():  # the task owns its scans' record chunks: one write per chunk
        for sp in specs:
            rows.extend(ingest_scan(store_path, sp, store=st, **kwargs))
    return rows


#: a task gets scans until it holds this many voxels (~ one 256^3 image and its mask) ...
BATCH_VOXELS = 24_000_000
#: ... or this many scans: tasks of ~0.1-1 s, few enough for a small graph
BATCH_SCANS = 16


def batches(specs: list[ScanSpec], *, voxels: int = BATCH_VOXELS, scans: int = BATCH_SCANS, chunk: int = 1):
    """Group scans into tasks of at least ``voxels`` voxels or ``scans`` scans, each task
    holding whole record chunks (``scan // chunk``): no two tasks write one chunk."""
    out, cur, n = [], [], 0
    for grp in owned_batches(list(specs), lambda sp: sp.scan, chunk, 1):  # one chunk each
        cur += grp
        n += sum(sp.voxels for sp in grp)
        if n >= voxels or len(cur) >= scans:
            out.append(cur)
            cur, n = [], 0
    if cur:
        out.append(cur)
    return out


def _ingest_file(
    st: CohortStore, i, e: FileEntry, geo, *, overwrite, split_binary, volume=None,
):
    name = e.array
    # fast path: the same source file is already stored
    old = st.stored_file_hash(name, i)
    if old is not None:
        if hashlib.sha256(nifti.read_bytes(e.file)).digest() == old:
            return {"status": "skipped", "reason": "same file already stored"}
    aff_ras, shape_ras, orig_aff, orig_shape, ornt = geo()  # the scan's grid (read once)
    vol = volume if volume is not None else nifti.load_volume(e.file, kind=e.kind)
    grid = st.grid_shape
    flags = 0
    note = side_note = ""
    dec = None
    data = vol.data
    same = nifti.same_grid(vol.affine, data.shape, orig_aff, orig_shape)
    if e.kind == "image":
        target = np.dtype(e.dtype)
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
        if not data.any():
            note = (note + "; " if note else "") + "image is all zeros"
        if vol.scaled:
            flags |= SCALED
        if same:
            _check_cast(data, target, name)
            ras = nifti.to_ras(data, vol.affine, ornt)[0]
        else:
            if np.allclose(vol.affine, orig_aff, atol=1e-4):
                raise GridMismatchError(
                    f"image has shape {data.shape} but the scan's reference image has {orig_shape}"
                )
            ras = nifti.resample_to(data, vol.affine, aff_ras, shape_ras, order=1)
            flags |= RESAMPLED
            _check_cast(ras, target, name)
        dec = st.decimal_scale(name) if target.kind == "f" else None
        if dec is not None:  # stored as integers value * scale: exact or refused here
            full = fastcopy.quantised_copy(ras.astype(target, copy=False), grid, dec[0], dec[1],
                                      out=fastcopy.scratch(grid, dec[1]))
            if full is None:
                raise _MoreDecimals(
                    f"values beyond the {n_decimals(dec[0])} decimals stored for {name}"
                )
        else:
            full = fastcopy.c_copy(ras, grid, target, out=fastcopy.scratch(grid, target))
    else:
        conv = parse_labels(e.labels)
        sides, side_note = _mask_sides(data, conv, ground_truth=e.method == GT_METHOD)
        note = side_note
        if same:
            ras = nifti.to_ras(sides, vol.affine, ornt)[0]
        else:
            if np.allclose(vol.affine, orig_aff, atol=1e-4):
                raise GridMismatchError(
                    f"mask has shape {tuple(data.shape)} but its image has {orig_shape}"
                )
            nifti.check_overlap(sides, vol.affine, sides.shape, aff_ras, shape_ras)
            ras = nifti.resample_to(sides, vol.affine, aff_ras, shape_ras, order=0)
            flags |= RESAMPLED
            note = (note + "; " if note else "") + (
                f"resampled (nearest) from grid {tuple(data.shape)} "
                f"{nifti.axcodes(vol.affine)} onto the image grid"
            )
        if conv.binary:
            if split_binary:
                ras = split_binary_by_midline(ras, aff_ras)
                note = (note + "; " if note else "") + "binary mask split at world x = 0"
            else:
                flags |= BINARY
        full = fastcopy.c_copy(ras, grid, np.uint8, out=fastcopy.scratch(grid, np.uint8))
    status = st.write_scan_array(
        name, i, full, flags=flags, source_shape=vol.data.shape, source_affine=vol.affine,
        file_sha256=vol.file_sha256, overwrite=overwrite,
        # only needed on re-runs; the digest is of the values stored
        content_sha256=lambda: nifti.content_hash(
            full if dec is None else decode_decimal(full, dec[0], target), aff_ras
        ),
    )
    if status == "skipped":
        note = "; ".join(x for x in ("same content already stored", side_note) if x)
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


def _mask_sides(data: np.ndarray, conv, *, ground_truth: bool = False) -> tuple[np.ndarray, str]:
    """Validate a mask's values and map them to 0/1/2 (binary: 0/1); also a note.

    A sided mask in which the declared convention finds no voxel of a side is checked
    against the labels it holds (:func:`~thaldask.cohort.labels.check_sides`): a mask with
    no thalamus id at all but other labels (a 0/1 mask declared ``freesurfer``), and a
    ground-truth mask missing a side, are errors for the row; a method's mask missing one
    side (a segmentation failure worth scoring) is stored with a note saying so.
    """
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
    sides = fastcopy.fast_sides(data, conv, allowed=allowed)
    if conv.binary:
        return sides, ""
    counts = np.bincount(sides.reshape(-1), minlength=3)
    if counts[1] and counts[2]:
        return sides, ""
    if not counts[1] and not counts[2] and not data.any():
        return sides, "empty mask"
    # a side is missing: look at the labels (only on this rare path)
    try:
        check_sides(label_values(data), conv, require_both=True)
    except LabelConventionError as exc:
        if ground_truth or not (counts[1] or counts[2]):
            raise
        return sides, str(exc)
    return sides, ""


# ---------------------------------------------------------------- driver


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
    overwrite : replace stored scans of this manifest whose content differs, and re-grid a
        stored scan whose reference image now has another grid (its other arrays are then
        marked not written); never anything else: a store is never rebuilt or emptied.
        Scans larger than the padded grid grow it in place, with or without ``overwrite``
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
        the manifest or clinical table as a whole is invalid (every problem listed). A
        problem of one file (missing, unreadable, implausible header, ...) fails only that
        row: it is in the report with its reason, and everything else is ingested.
    NotAStoreError
        ``store`` exists and is neither empty nor a thaldask store (nothing is touched).
    StoreConflictError
        a stored scan's reference grid changed and ``overwrite`` is False; the store is left
        as it was.
    StoreBusyError
        another ingest is writing the same store (see :mod:`thaldask.store.lock`).
    """
    store = str(store)
    if not is_remote(store):
        store = os.path.abspath(store)  # workers may run elsewhere in the file system
    # problems of the manifest as a whole raise here, all at once; a bad file only fails
    # its own row, and the plan (padded grid, codecs, reference grids) is made from the
    # rows that passed their own checks
    df = validate(manifest, on_file_error="flag", client=client, progress=progress)
    clin = validate_clinical(clinical, manifest=df) if clinical is not None else None
    job = prepare_ingest(df, clin)
    del df  # what the tasks need is in the plan: only the job is kept from here
    # one writer at a time; a second ingest fails at once
    with store_lock(store, storage_options=storage_options):
        return _ingest_validated(job, clin, store, overwrite=overwrite, client=client,
                                 progress=progress, storage_options=storage_options,
                                 layout=layout, split_binary=split_binary)


def _ingest_validated(job: IngestJob, clin, store, *, overwrite, client, progress, storage_options,
                      layout, split_binary):
    is_store = check_store_target(store, storage_options=storage_options)
    for w in job.warnings:
        print(f"thaldask: warning: {w}", file=sys.stderr)
    plan = job.plan
    if plan is None:  # nothing usable: the report says why, nothing is created
        report = report_frame(job.files, job.failed)
        if is_store:
            write_report(store, report, storage_options)
        return report
    st = None
    if is_store:  # a thaldask store: new scans are appended, nothing stored is dropped
        st = open_store(store, storage_options=storage_options)
        if st.format < FORMAT_VERSION:  # an older layout: its tables move into columns first
            before, after = migrate_store(store, storage_options=storage_options)
            print(f"thaldask: {store}: store format {before} migrated to {after}", file=sys.stderr)
            st = open_store(store, storage_options=storage_options)
        fit = merge_plan(st, plan, overwrite=overwrite)
        if fit.plan is None:
            raise StoreConflictError(
                f"{store}: cannot take this manifest ({fit.why}); the stored scans are kept"
            )
        plan = fit.plan
        _grow(st, fit, progress=progress)
        if fit.n_added or fit.regrid or fit.grown:
            st = open_store(store, storage_options=storage_options)
    if st is None:  # a new or empty folder
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
    lay = {**default_layout(), **st.layout}
    probed, loaded = [], {}  # scans whose files were decoded to choose a float codec
    for name in plan.arrays():
        dtype = plan.image_dtypes.get(name, "uint8")
        decimals = None
        if dtype == "float32" and lay["float_codec"] == "auto" and not st.has_array(name):
            decimals, sp, vols = _probe_decimals(plan, name)
            if sp is not None and sp.scan not in probed:
                probed.append(sp.scan)
            loaded.update(vols)
        st.ensure_array(name, dtype=dtype, decimals=decimals)
        stored[name] = st.zarr_array(name).dtype.str
    plan = with_dtypes(plan, stored)
    if clin is not None:
        set_clinical(st, clin)
    kwargs = {"overwrite": overwrite, "split_binary": split_binary,
              "storage_options": storage_options}
    rows: list[Outcome] = []
    probed_specs = [sp for sp in plan.specs if sp.scan in probed]
    for sp in probed_specs:  # written here, from the volumes already decoded
        rows.extend(ingest_scan(store, sp, store=st, loaded=loaded, **kwargs))
    loaded.clear()
    rest = [sp for sp in plan.specs if sp.scan not in probed]
    rows += _run(store, rest, client=client, progress=progress, kwargs=kwargs, done=len(probed))
    del rest
    deferred = [r for r in rows if r.status == "deferred"]
    if deferred:  # an image with more decimals than its array: re-encode, then redo these
        for name in sorted({r.array for r in deferred}):
            first = next(r for r in deferred if r.array == name)
            n = st.recode_as_float(name)
            if progress:
                subject, timepoint = job.files.loc[first.row, ["subject", "timepoint"]]
                print(
                    f"{name}: {subject} {timepoint} has {first.reason}; "
                    f"re-encoded its {n} stored scans as float32 (values unchanged)",
                    file=sys.stderr,
                )
        specs = only_rows(plan.specs, {r.row for r in deferred})
        again = {r.row: r for r in _run(store, specs, client=client, progress=progress,
                                        kwargs=kwargs)}
        why = {r.row: r.reason for r in deferred}
        for row, r in again.items():
            if r.status == "written":
                again[row] = r._replace(reason=f"{why[row]}: array re-encoded as float32 first")
        rows = [again.get(r.row, r) if r.status == "deferred" else r for r in rows]
        # still deferred cannot happen after re-encoding; never silent
        rows = [r._replace(status="failed") if r.status == "deferred" else r for r in rows]
    report = report_frame(job.files, rows + job.failed)
    del rows
    src = job.source
    for r in report[report["status"] == "written"].itertuples():  # stored, but worth a look
        if any(w in str(r.reason) for w in WARN_REASONS):
            print(f"thaldask: warning: {src} row {r.row}: {r.path!r}: {r.reason}", file=sys.stderr)
    write_report(store, report, storage_options)
    record_ingest(st, plan.specs, report)
    st.consolidate()
    return report


def _grow(st: CohortStore, fit, *, progress: bool) -> None:
    """Apply a :class:`~thaldask.store.ingest_plan.StoreFit` to the store before any task
    writes: re-gridded scans forgotten, the padded grid grown, scans appended."""
    plan = fit.plan
    if fit.regrid:
        cleared = regrid_scans(st, fit.regrid)
        names = ", ".join(f"{st.scans.subject[i]} {st.scans.timepoint[i]}" for i in fit.regrid)
        print(
            f"thaldask: warning: {st.path}: the reference grid of {names} changed (--overwrite): "
            f"their {', '.join(cleared) or 'arrays'} are re-written from this manifest or "
            "marked not written (segment or ingest them again)",
            file=sys.stderr,
        )
    if fit.grown:
        before = st.grid_shape
        after = grow_grid(st, plan.grid_shape)
        if progress:
            print(f"{st.path}: padded grid grown from {before} to {after} in place",
                  file=sys.stderr)
    if fit.n_added or fit.regrid:
        append_scans(st, plan.scans, plan.scan_meta, plan.reference, plan.orig_axcodes)


def _probe_decimals(plan: IngestPlan, name: str):
    """Decide how float image array ``name`` is stored, from its first readable file.

    Returns ((decimals, integer dtype) or None, that file's scan, {file: volume}): the
    caller writes that scan with the volume already decoded, so the decision costs no
    extra read. Decimals only when the file has them and no file of the contrast is
    resampled (interpolated values have none); the decision on the values is
    :func:`~thaldask.store.codecs.choose_decimals`. A later scan with more decimals is
    caught when it is written, and the array is then re-encoded as float32
    (``CohortStore.recode_as_float``).
    """
    entries = [(sp, e) for sp in plan.specs for e in sp.entries if e.array == name]
    if not entries or not all(e.same_grid for _, e in entries):
        return None, None, {}
    for sp, e in entries[:3]:
        try:
            vol = nifti.load_volume(e.file, kind="image")
        except (ThaldaskError, ValueError, OSError, EOFError, MemoryError):
            continue  # a bad file: its task reports it
        if vol.data.dtype.kind != "f":
            return None, sp, {e.file: vol}
        return choose_decimals(vol.data), sp, {e.file: vol}
    return None, None, {}


def _run(store, specs, *, client, progress, kwargs, done=0):
    client = active_client(client)
    # at least two tasks per thread when the cohort allows, so that all workers stay busy
    per_task = -(-len(specs) // (2 * n_slots(client)))
    st = open_store(store, storage_options=kwargs.get("storage_options"))
    chunk = st.write_chunk(sorted({e.array for sp in specs for e in sp.entries}))
    groups = batches(specs, scans=max(1, min(BATCH_SCANS, per_task)), chunk=chunk)

    def failed(grp, exc):  # the task crashed or its worker died twice: its scans failed
        return [r for sp in grp for r in _failed_rows(sp, f"task failed: {_reason(exc)}")]

    results = run_batches(ingest_batch, groups, client=client, label="ingest", progress=progress,
                          key_prefix="thaldask-ingest", on_error=failed, args=(store,),
                          kwargs=kwargs, done=done)
    return [r for rows in results for r in rows]


def _failed_rows(sp, reason):
    return [Outcome(e.row, "failed", False, reason) for e in sp.entries]
