"""``evaluate``: every stored mask against ground truth, into the results dataset.

For each (method, contrast) mask array in the store (method ``gt`` excluded) and each scan
that has that mask, the prediction is compared with the scan's ground truth of the same
contrast if the scan has one, else with the ground truth of the scan's reference contrast
(T1w when present), else with its first ground truth in store order (all contrasts of a
scan share one voxel grid). ``gt_contrast`` in the results records the choice. A scan without any ground
truth still gets its volumes; its overlap and surface metrics are NaN.

Resumable and incremental: each scan's raw numbers are written to a small per-scan cache
(derived store arrays named by :func:`thaldask.store.format.metrics_array`) by the task
that computed them, together with a token of what they were computed from (the stored
content hashes of both masks, the GT contrast, the voxel size and the kernel version). A
re-run recomputes only scans whose token is missing (interrupted run) or different (a mask
changed); the rest is read back.

Graph: rows are grouped by (GT contrast, scan set); each group is one ``blockwise`` over
blocks of ``thaldask.metrics.scans-per-task`` scans whose task reads the block's GT once,
every prediction compared with it, computes, and writes its rows. Tasks receive the store
path and open it themselves; no array travels through the scheduler.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import os

import numpy as np
import pandas as pd
import xarray as xr

from thaldask import __version__, config
from thaldask._shared.compute import active_client
from thaldask._shared.paths import check_may_write, check_writable_dir, is_remote, write_text
from thaldask._shared.progress import Progress
from thaldask.cohort.clinical import NUMERIC_COLUMNS, STRING_COLUMNS
from thaldask.metrics.kernels import METRIC_FIELDS, RAW_FIELDS, SIDES, derive_metrics, pair_raw
from thaldask.store.cohort_store import open_array, open_store, write_derived_rows
from thaldask.store.format import hash_array, mask_array, metrics_array, metrics_cache, table_file
from thaldask.store.verify import read_scan

__all__ = ["evaluate", "results_to_frame", "CLINICAL_FLOATS", "CLINICAL_STRINGS"]

log = logging.getLogger(__name__)

#: bump when the kernels change numerically: invalidates every cached row
KERNEL_VERSION = "1"
TOKEN_LEN = 32

CLINICAL_STRINGS = STRING_COLUMNS
CLINICAL_FLOATS = NUMERIC_COLUMNS


# --------------------------------------------------------------------------- tasks
def _single(block):
    while isinstance(block, (list, tuple)):
        if len(block) != 1:
            raise ValueError("evaluate expects one chunk along x, y, z and per-scan fields")
        block = block[0]
    return block


def _eval_block(gt, spacing, scan, token, *preds, store_path, caches, with_gt, surface, storage_options=None):
    """Compute raw fields of one block of scans for every prediction sharing this GT, and
    write each (scan, prediction) row to its per-scan cache. ``caches``: (label, raw array,
    token array) per prediction.

    Runs inside a Dask task; returns (scan, prediction, side, field). A row that fails
    (unreadable data, bad labels) stays NaN without a token, so the next run retries it.
    """
    # blockwise without concatenation hands single-chunk contracted dims as nested lists
    gt, spacing, scan, token = (_single(a) for a in (gt, spacing, scan, token))
    preds = [_single(p) for p in preds]
    n, k = gt.shape[0], len(preds)
    out = np.full((n, k, 3, len(RAW_FIELDS)), np.nan)
    ok = np.zeros((n, k), bool)
    pv = RAW_FIELDS.index("pred_voxels")
    for i in range(n):  # the scans of one block
        for j, pred in enumerate(preds):  # the predictions compared with this GT
            try:
                if with_gt:
                    out[i, j] = pair_raw(gt[i], pred[i], spacing[i], surface=surface)
                else:  # no ground truth: volumes only
                    out[i, j, :, pv] = pair_raw(pred[i], pred[i], spacing[i], surface=False)[:, pv]
                ok[i, j] = True
            except Exception as exc:  # one bad scan never stops the cohort
                log.warning("evaluate: scan %d of %s failed: %s", int(scan[i, 0]), caches[j][0], exc)
    for j, (_, raw_name, token_name) in enumerate(caches):
        done = [i for i in range(n) if ok[i, j]]
        write_derived_rows(store_path, raw_name, {int(scan[i, 0]): out[i, j] for i in done},
                           storage_options=storage_options)
        # tokens last: a token marks its row complete
        write_derived_rows(store_path, token_name, {int(scan[i, 0]): token[i, j] for i in done},
                           storage_options=storage_options)
    return out


def _content_hashes(st, name: str) -> np.ndarray | None:
    """(scan, 32) content sha256 of a stored per-scan array, or None if unavailable."""
    try:
        if not st.has_array(hash_array(name)):
            return None
        return st.content_tokens(name)
    except Exception:
        return None


def _tokens(parts_per_scan: list[list[bytes]]) -> np.ndarray:
    out = np.zeros((len(parts_per_scan), TOKEN_LEN), np.uint8)
    for i, parts in enumerate(parts_per_scan):  # per scan: hashing a few bytes
        h = hashlib.sha256()
        for p in parts:
            h.update(len(p).to_bytes(4, "little"))
            h.update(p)
        out[i] = np.frombuffer(h.digest(), np.uint8)
    return out


def _ensure_cache(st, cache) -> tuple[np.ndarray, np.ndarray]:
    """Create the cache arrays of one (method, contrast) if needed; return raw and tokens."""
    _, raw_name, token_name = cache
    raw = st.ensure_derived(raw_name, row_shape=(3, len(RAW_FIELDS)), dtype="float64",
                            fill_value=np.nan)
    tok = st.ensure_derived(token_name, row_shape=(TOKEN_LEN,), dtype="uint8", fill_value=0)
    return raw, tok


# --------------------------------------------------------------------------- planning
def _gt_sources(st, gt_contrasts: list[str]) -> dict[str, np.ndarray]:
    return {c: np.asarray(st.has_mask("gt", c), bool) for c in gt_contrasts}


def _choose_gt(contrast: str, has_gt: dict[str, np.ndarray], n: int, reference=None) -> np.ndarray:
    """Per scan: the GT contrast to compare with ('' = none).

    Same contrast if the scan has that GT; else the GT of the scan's reference contrast (the
    one whose grid the scan uses, T1w when present); else the first GT in store order.
    """
    choice = np.full(n, "", dtype=object)
    for g in reversed(list(has_gt)):  # first GT wins: fill in reverse order
        choice[has_gt[g]] = g
    if reference is not None and len(reference) == n:
        ref = np.asarray(reference, dtype=object)
        for g in has_gt:
            sel = has_gt[g] & (ref == g)
            choice[sel] = g
    if contrast in has_gt:
        choice[has_gt[contrast]] = contrast
    return choice


def _plan(st, *, surface: bool):
    """Everything to compute: one entry per stored (method, contrast), incl. GT volumes."""
    methods = st.methods
    gt_contrasts = [c for m, c in methods if m == "gt"]
    has_gt = _gt_sources(st, gt_contrasts)
    n = st.n_scans
    try:
        reference = st.reference
    except Exception:
        reference = None
    spacing_b = [np.ascontiguousarray(st.spacing[i], dtype=np.float64).tobytes() for i in range(n)]
    hashes = {}
    entries = []
    for m, c in methods:
        name = mask_array(m, c)
        hashes[name] = _content_hashes(st, name)
    for m, c in methods:
        has_pred = np.asarray(st.has_mask(m, c), bool)
        if m == "gt":
            choice = np.full(n, "", dtype=object)  # GT volumes: no comparison
        else:
            choice = _choose_gt(c, has_gt, n, reference)
        ph = hashes[mask_array(m, c)]
        parts = []
        for i in range(n):
            g = choice[i]
            gh = hashes.get(mask_array("gt", g)) if g else None
            if ph is None or (g and gh is None):
                parts.append([os.urandom(16)])  # no content hash: always recompute
                continue
            parts.append(
                [
                    KERNEL_VERSION.encode(),
                    b"surface" if surface else b"nosurface",
                    ph[i].tobytes(),
                    g.encode(),
                    gh[i].tobytes() if g else b"",
                    spacing_b[i],
                ]
            )
        entries.append(
            {
                "method": m,
                "contrast": c,
                "has": has_pred,
                "gt": choice,
                "tokens": _tokens(parts),
                "cache": (metrics_cache(m, c), metrics_array(m, c, "raw"), metrics_array(m, c, "token")),
            }
        )
    return entries, _choose_gt("", has_gt, n, reference)


# --------------------------------------------------------------------------- evaluate
#: label written into a scan that cannot be read: the kernel rejects it, the row stays NaN
UNREADABLE = 255


def _load_scans(idx, *, store_path, array_name, grid, storage_options=None):
    """Masks of the scans ``idx`` (a block) as (k, x, y, z) uint8, read in the task.

    A scan whose chunk cannot be read is filled with :data:`UNREADABLE` and logged, so one
    bad scan never fails the task (and the graph) of the others.
    """
    name = array_name
    z = open_array(store_path, name, storage_options=storage_options)
    out = np.empty((len(idx),) + tuple(grid), np.uint8)
    for j, s in enumerate(np.asarray(idx).ravel()):  # the scans of one block
        try:
            out[j] = read_scan(z, int(s))  # a lost chunk is an error, never an empty mask
        except Exception as exc:
            log.warning("evaluate: %s of scan %d unreadable: %s", name, int(s), exc)
            out[j] = UNREADABLE
    return out


def _scan_loader(st, name: str, idx: np.ndarray, chunks: tuple[int, ...]):
    """Lazy (len(idx), x, y, z) array of one stored mask, one task per block of scans."""
    import dask.array as da

    ix = da.from_array(idx.astype(np.int64), chunks=(chunks,))
    g = tuple(int(v) for v in st.grid_shape)
    return da.blockwise(
        _load_scans,
        "sxyz",
        ix,
        "s",
        new_axes={"x": g[0], "y": g[1], "z": g[2]},
        dtype=np.uint8,
        meta=np.empty((0, 0, 0, 0), np.uint8),
        store_path=st.path,
        array_name=name,
        grid=g,
        storage_options=st.storage_options or None,
    )


def _compute_arrays(st, entries, *, surface: bool, block: int):
    """Lazy raw arrays for every (scan, mask) row whose cached token is stale.

    Rows are grouped by (ground-truth contrast, scan set): each group is one blockwise
    computation whose tasks read a block of scans' GT once for all its predictions.
    """
    import dask.array as da

    groups: dict[tuple, list[int]] = {}
    for k, e in enumerate(entries):
        raw, tok = _ensure_cache(st, e["cache"])
        e["raw"] = raw
        stale = e["has"] & ~np.all(tok == e["tokens"], axis=1)
        e["n_stale"] = int(stale.sum())
        for g in sorted(set(e["gt"][stale])):
            idx = np.flatnonzero(stale & (e["gt"] == g))
            groups.setdefault((g, idx.tobytes()), []).append(k)
    todo = []  # (entry indices, scan indices, dask array (scan, entry, side, field))
    for (g, idx_b), ks in groups.items():
        idx = np.frombuffer(idx_b, dtype=np.intp)
        chunks = tuple(min(block, len(idx) - s) for s in range(0, len(idx), block))
        preds = [
            _scan_loader(st, mask_array(entries[k]["method"], entries[k]["contrast"]), idx, chunks) for k in ks
        ]
        gt = _scan_loader(st, mask_array("gt", g), idx, chunks) if g else preds[0]
        sp = da.from_array(st.spacing[idx], chunks=(chunks, 3))
        sc = da.from_array(idx.astype(np.int64)[:, None], chunks=(chunks, 1))
        tok = np.stack([entries[k]["tokens"][idx] for k in ks], axis=1)  # (scan, entry, 32)
        tk = da.from_array(tok, chunks=(chunks, len(ks), TOKEN_LEN))
        args = [gt, "sxyz", sp, "sd", sc, "sa", tk, "sjt"]
        for p in preds:
            args += [p, "sxyz"]
        arr = da.blockwise(
            _eval_block,
            "sjfk",
            *args,
            new_axes={"f": 3, "k": len(RAW_FIELDS)},
            concatenate=False,  # one chunk along x, y, z: no copy
            dtype=np.float64,
            meta=np.empty((0, 0, 0, 0), np.float64),
            store_path=st.path,
            caches=[entries[k]["cache"] for k in ks],
            with_gt=bool(g),
            surface=surface,
            storage_options=st.storage_options or None,
        )
        todo.append((ks, idx, arr))
    return todo


def _block_units(todo) -> dict:
    """Task key of every scoring block -> its (scan, mask) rows, for the progress display."""
    units = {}
    for ks, _, arr in todo:
        for i, n in enumerate(arr.chunks[0]):
            units[(arr.name, i, 0, 0, 0)] = int(n) * len(ks)
    return units


def _run(todo, client, progress: bool):
    import dask
    from dask.callbacks import Callback

    arrays = [a for _, _, a in todo]
    if not arrays:
        return []
    units = _block_units(todo)
    client = active_client(client)
    with Progress(sum(units.values()), "evaluate", unit="rows", enabled=progress) as bar:
        if client is None:

            class _Advance(Callback):
                def _posttask(self, key, result, dsk, state, id):
                    if key in units:
                        bar.advance(units[key])

            with _Advance():
                return list(dask.compute(*arrays))
        from distributed import as_completed, futures_of

        persisted = client.persist(arrays)
        blocks = [f for f in futures_of(persisted) if f.key in units]
        for fut in as_completed(blocks):
            bar.advance(units[fut.key])
        return client.gather(client.compute(persisted))


def _natural_timepoints(values) -> list[str]:
    def key(t):
        t = str(t)
        if t.lower() in ("baseline", "bl", "base"):
            return (0, 0, t)
        if t[:1].lower() == "m" and t[1:].isdigit():
            return (1, int(t[1:]), t)
        digits = "".join(ch for ch in t if ch.isdigit())
        return (2, int(digits) if digits else 0, t)

    return sorted(pd.unique(pd.Series(values, dtype=str)), key=key)


def _assemble(st, entries, gt_main, *, synthetic):
    scans = st.scans
    subjects = list(pd.unique(scans["subject"]))
    timepoints = _natural_timepoints(scans["timepoint"])
    si = np.array([subjects.index(s) for s in scans["subject"]])
    ti = np.array([timepoints.index(t) for t in scans["timepoint"]])
    preds = [e for e in entries if e["method"] != "gt"]
    methods = sorted({e["method"] for e in preds})
    contrasts = sorted({e["contrast"] for e in preds}, key=lambda c: (c.count("+"), c))
    vv = np.prod(st.spacing, axis=1)
    shape5 = (len(subjects), len(timepoints), len(methods), len(contrasts), 3)
    met = np.full(shape5 + (len(METRIC_FIELDS),), np.nan)
    gt_used = np.full(shape5[:4], "", dtype=object)
    for e in preds:
        raw = np.where(e["has"][:, None, None], e["raw"], np.nan)
        d = derive_metrics(raw, vv)
        mi, ci = methods.index(e["method"]), contrasts.index(e["contrast"])
        have = e["has"]
        met[si[have], ti[have], mi, ci] = d[have]
        gt_used[si[have], ti[have], mi, ci] = e["gt"][have]
    # ground-truth volume: the scan's main GT (reference contrast, else first)
    gvol = np.full((len(subjects), len(timepoints), 3), np.nan)
    for e in entries:
        if e["method"] != "gt":
            continue
        pv = e["raw"][:, :, RAW_FIELDS.index("pred_voxels")] * vv[:, None]
        h = e["has"] & (gt_main == e["contrast"])
        gvol[si[h], ti[h]] = pv[h]
    gt_contrasts = [e["contrast"] for e in entries if e["method"] == "gt"]
    dims5 = ("subject", "timepoint", "method", "contrast", "side")
    data_vars = {f: (dims5, met[..., k]) for k, f in enumerate(METRIC_FIELDS) if f != "gt_volume_mm3"}
    # the GT each comparison used can differ per contrast; gt_volume_mm3 is the first GT's
    data_vars["gt_volume_mm3"] = (("subject", "timepoint", "side"), gvol)
    data_vars["gt_contrast"] = (dims5[:4], gt_used.astype(str))
    ds = xr.Dataset(
        data_vars,
        coords={
            "subject": np.array(subjects, dtype=str),
            "timepoint": np.array(timepoints, dtype=str),
            "method": np.array(methods, dtype=str),
            "contrast": np.array(contrasts, dtype=str),
            "side": list(SIDES),
        },
    )
    _add_covariates(ds, st, scans, si, ti)
    ds.attrs.update(
        {
            "synthetic": bool(synthetic),
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "thaldask_version": __version__,
            "store": st.path,
            "gt_contrasts": list(gt_contrasts),
            "gt_rule": "GT of the same contrast if the scan has it, else the GT of the scan's reference contrast, else its first GT",
            "empty_rule": "NaN metrics with pred_empty/gt_empty flags; see thaldask.metrics.kernels.derive_metrics",
        }
    )
    return ds


def _add_covariates(ds, st, scans, si, ti):
    shape = (ds.sizes["subject"], ds.sizes["timepoint"])
    site = np.full(shape, "", dtype=object)
    site[si, ti] = scans["site"].to_numpy()
    strings = {"site": site}
    floats = {}
    clin = st.clinical
    if clin is not None and len(clin):
        subj = {s: k for k, s in enumerate(ds.subject.values.tolist())}
        tps = {t: k for k, t in enumerate(ds.timepoint.values.tolist())}
        rows = [
            (subj.get(str(s)), tps.get(str(t)))
            for s, t in zip(clin["subject"], clin["timepoint"], strict=True)
        ]
        keep = np.array([a is not None and b is not None for a, b in rows], bool)
        a = np.array([r[0] for r, k in zip(rows, keep, strict=True) if k], dtype=np.int64)
        b = np.array([r[1] for r, k in zip(rows, keep, strict=True) if k], dtype=np.int64)
        sub = clin[keep]
        for col in clin.columns:
            if col in ("subject", "timepoint"):
                continue
            values = sub[col]
            if col in CLINICAL_FLOATS or (col not in CLINICAL_STRINGS and pd.api.types.is_numeric_dtype(values)):
                arr = np.full(shape, np.nan)
                arr[a, b] = pd.to_numeric(values, errors="coerce").to_numpy(dtype=np.float64)
                floats[col] = arr
            else:
                arr = strings.get(col, np.full(shape, "", dtype=object)).copy() if col == "site" else np.full(shape, "", dtype=object)
                vals = values.astype(object).where(values.notna(), "").astype(str).to_numpy()
                if col == "site":
                    vals = np.where(vals == "", arr[a, b], vals)
                arr[a, b] = vals
                strings[col] = arr
    for col in CLINICAL_FLOATS:
        floats.setdefault(col, np.full(shape, np.nan))
    for col in CLINICAL_STRINGS:
        strings.setdefault(col, np.full(shape, "", dtype=object))
    for col, arr in strings.items():
        ds[col] = (("subject", "timepoint"), arr.astype(str))
    for col, arr in floats.items():
        ds[col] = (("subject", "timepoint"), arr)


def results_to_frame(ds: xr.Dataset) -> pd.DataFrame:
    """The tidy table of a results dataset: one row per subject/timepoint/method/contrast/side
    that exists.

    Columns: the index dims, every (…, side) metric variable, ``gt_volume_mm3``,
    ``gt_contrast`` and the clinical covariates. The dataset keeps NaN for combinations
    without a mask (a method never run on a contrast, a scan a subject does not have); the
    table lists only the (subject, timepoint, method, contrast) whose mask was scored, i.e.
    with a volume or an empty-mask flag on some side (a mask that could not be read is NaN
    in the dataset, counted in ``attrs["n_failed"]``, and absent here until a re-run reads it).
    """
    dims5 = ("subject", "timepoint", "method", "contrast", "side")
    five = [v for v in ds.data_vars if ds[v].dims == dims5]
    marks = [v for v in ("volume_mm3", "pred_empty") if v in five]
    if marks:
        exists = np.zeros([ds.sizes[d] for d in dims5[:4]], bool)
        for v in marks:
            exists |= np.isfinite(ds[v].transpose(*dims5).values).any(axis=-1)
        ds = ds.assign(_exists=(dims5[:4], exists))
    df = ds[five + (["_exists"] if marks else [])].to_dataframe().reset_index()
    if marks:
        df = df[df.pop("_exists").to_numpy(bool)].reset_index(drop=True)
    gtc = ds["gt_contrast"].to_dataframe().reset_index()
    df = df.merge(gtc, on=list(dims5[:4]), how="left")
    gv = ds["gt_volume_mm3"].to_dataframe().reset_index()
    df = df.merge(gv, on=["subject", "timepoint", "side"], how="left")
    two = [v for v in ds.data_vars if ds[v].dims == ("subject", "timepoint")]
    if two:
        cov = ds[two].to_dataframe().reset_index()
        df = df.merge(cov, on=["subject", "timepoint"], how="left")
    order = list(dims5) + ["volume_mm3", "gt_volume_mm3"]
    rest = [c for c in df.columns if c not in order]
    return df[order + rest]



def _write_csv(df: pd.DataFrame, path: str, storage_options=None):
    write_text(path, df.to_csv(index=False), storage_options=storage_options)


def _is_synthetic(st) -> bool:
    attrs = st.attrs if hasattr(st, "attrs") else {}
    for key in ("synthetic",):
        if key in attrs:
            return bool(attrs[key])
        if key in attrs.get("thaldask", {}):
            return bool(attrs["thaldask"][key])
    clin = st.clinical
    return bool(clin is not None and "synthetic" in clin.columns and clin["synthetic"].astype(bool).all())


def evaluate(
    store_path: str,
    *,
    client=None,
    progress: bool = True,
    surface: bool = True,
    name: str = "results",
    csv_path: str | None = None,
    synthetic: bool | None = None,
    storage_options: dict | None = None,
) -> xr.Dataset:
    """Compare every stored mask with ground truth; write the results dataset and metrics.csv.

    Parameters
    ----------
    store_path : cohort store (path or URL)
    client : a ``distributed.Client``; None uses the current default client if any, else
        Dask's local threaded scheduler
    progress : show a progress bar (stderr)
    surface : compute HD95/ASSD (a few ms per pair)
    name : results dataset name in the store (``st.open_results(name)``)
    csv_path : where to write the tidy table; default ``metrics.csv`` inside the store,
        ``False``-y empty string to skip
    synthetic : mark the results as synthetic data (default: from the store's attributes)

    Returns
    -------
    xarray.Dataset (in memory) with dims subject, timepoint, method, contrast, side; see
    the Results dataset contract. ``attrs["n_computed"]``/``attrs["n_reused"]`` count the
    (scan, method, contrast) rows computed in this call and read back from earlier runs;
    ``attrs["n_failed"]`` the rows whose masks could not be read (NaN, retried next time).

    Notes
    -----
    Eager: this is the stage that computes. Each task handles ``thaldask.metrics.scans-per-task``
    scans of one (method, contrast) and writes their rows to the per-scan cache, so killed
    workers only cost their own tasks, and an interrupted call resumes where it stopped.
    """
    st = open_store(store_path, storage_options=storage_options)
    if csv_path is None:
        csv_path = table_file(st.path, "metrics")
    if csv_path and not is_remote(csv_path):  # a bad output path fails before any work
        check_writable_dir(os.path.dirname(os.path.abspath(csv_path)), create=False)
        check_may_write(csv_path)
    block = int(config.get("metrics.scans-per-task") or 4)
    entries, gt_main = _plan(st, surface=surface)
    todo = _compute_arrays(st, entries, surface=surface, block=block)
    results = _run(todo, client, progress)
    n_computed = n_failed = 0
    for (ks, idx, _), res in zip(todo, results, strict=True):
        for j, k in enumerate(ks):
            entries[k]["raw"][idx] = res[:, j]
            n_computed += len(idx)
            n_failed += int(np.isnan(res[:, j, 2, RAW_FIELDS.index("pred_voxels")]).sum())
    n_rows = int(sum(e["has"].sum() for e in entries))
    ds = _assemble(
        st, entries, gt_main, synthetic=_is_synthetic(st) if synthetic is None else synthetic
    )
    ds.attrs["n_computed"] = n_computed
    ds.attrs["n_reused"] = n_rows - n_computed
    ds.attrs["n_failed"] = n_failed  # rows left NaN (unreadable data); retried on re-run
    ds.attrs["tokens"] = json.dumps(
        {
            f"{e['method']}/{e['contrast']}": hashlib.sha256(e["tokens"][e["has"]].tobytes()).hexdigest()[:16]
            for e in entries
        }
    )
    import warnings

    with warnings.catch_warnings():  # fixed-length strings have no Zarr v3 spec yet
        warnings.filterwarnings("ignore", message=".*does not have a Zarr V3 specification.*")
        st.write_results(ds, name=name)
    if csv_path:
        _write_csv(results_to_frame(ds), csv_path, storage_options)
        ds.attrs["metrics_csv"] = csv_path
    return ds
