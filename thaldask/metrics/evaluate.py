"""``evaluate``: every stored mask against ground truth, into the results dataset.

For each (method, contrast) mask array in the store (method ``gt`` excluded) and each scan
that has that mask, the prediction is compared with the scan's ground truth of the same
contrast if the scan has one, else with the ground truth of the scan's reference contrast
(T1w when present), else with its first ground truth in store order (all contrasts of a
scan share one voxel grid). ``gt_contrast`` in the results records the choice. A scan without any ground
truth still gets its volumes; its overlap and surface metrics are NaN.

Resumable and incremental: each scan's raw numbers are kept in a cache (derived store
arrays named by :func:`thaldask.store.format.metrics_array`, a few objects per cohort:
:mod:`thaldask.metrics.rowcache`), together with a token of what they were computed from
(the stored content hashes of both masks, the GT contrast, the voxel size and the kernel
version). Tasks return their rows and the client writes them every few seconds as they
arrive; a re-run recomputes only scans whose token is missing (interrupted run) or
different (a mask changed); the rest is read back.

Tasks: rows are grouped by (GT contrast, scan set); each group is split into blocks of
``thaldask.metrics.scans-per-task`` scans, and one task per block (nothing else: no
loading tasks, no data tasks) reads each scan's GT once, every prediction compared with
it, computes, and returns its rows. Tasks receive the store path and open it themselves;
no mask travels through the scheduler, and a worker's memory is bounded by the scans it
is scoring, not by the cohort.
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
from thaldask._shared.compute import run_batches
from thaldask._shared.paths import check_may_write, check_writable_dir, is_remote, write_text
from thaldask.cohort.clinical import NUMERIC_COLUMNS, STRING_COLUMNS
from thaldask.metrics.consensus import consensus_block, consensus_jobs
from thaldask.metrics.kernels import METRIC_FIELDS, RAW_FIELDS, SIDES, derive_metrics, pair_raw
from thaldask.metrics.rowcache import CACHE_CHUNK, RowWriter
from thaldask.store.cohort_store import open_array, open_store
from thaldask.store.format import (
    consensus_array,
    hash_array,
    mask_array,
    metrics_array,
    metrics_cache,
    scan_meta_array,
    table_file,
)
from thaldask.store.shards import ShardReader
from thaldask.store.verify import read_scan

__all__ = ["evaluate", "results_to_frame", "CLINICAL_FLOATS", "CLINICAL_STRINGS"]

log = logging.getLogger(__name__)

#: bump when the kernels change numerically: invalidates every cached row
KERNEL_VERSION = "1"
TOKEN_LEN = 32

CLINICAL_STRINGS = STRING_COLUMNS
CLINICAL_FLOATS = NUMERIC_COLUMNS


# --------------------------------------------------------------------------- tasks
def _eval_block(batch, *, store_path, surface, storage_options=None):
    """Read and score one block of scans for every prediction sharing this GT, and return
    each (scan, prediction) row for the cache. ``batch`` is one job of
    :func:`_jobs`: ``idx`` (scans), ``todo`` (scan, prediction: which rows to score),
    ``spacing``, ``token`` (scan, prediction, 32),
    ``gt_name`` (the GT mask array; None: volumes only), ``pred_names`` and ``caches``
    ((label, raw array, token array) per prediction).

    One Dask task per block reads its own masks, one scan at a time (a sharded array's
    shard fetched once, compressed): a worker holds the masks of the scan it is scoring, never blocks waiting for another task, so memory is
    bounded by the tasks in flight whatever the cohort's size. Returns (scan, prediction,
    side, field) rows and which of them succeeded: the client caches those
    (:class:`~thaldask.metrics.rowcache.RowWriter`). A row that fails (a lost chunk, bad
    labels) stays NaN without a token, so the next run retries it, and one bad scan never
    stops the others.
    """
    (job,) = batch
    if job.get("kind") == "consensus":
        return consensus_block(job, store_path=store_path, storage_options=storage_options)
    idx, spacing, todo = job["idx"], job["spacing"], job["todo"]
    gt_name, pred_names, caches = job["gt_name"], job["pred_names"], job["caches"]
    n, k = len(idx), len(pred_names)
    out = np.full((n, k, 3, len(RAW_FIELDS)), np.nan)
    ok = np.zeros((n, k), bool)
    if not n:
        return out, ok
    pv = RAW_FIELDS.index("pred_voxels")
    arrays = [open_array(store_path, a, storage_options=storage_options)
              for a in ([gt_name] if gt_name else []) + list(pred_names)]
    lo = int(idx.min())
    shapes = open_array(store_path, scan_meta_array("shape"),
                        storage_options=storage_options)[lo:int(idx.max()) + 1]
    reader = ShardReader(idx)  # consecutive scans of a sharded array: one fetch per shard
    for i, s in enumerate(idx):  # the scans of one block
        shape = shapes[int(s) - lo]
        try:  # a lost chunk is an error, never an empty mask
            gt = read_scan(arrays[0], int(s), shape, reader) if gt_name else None
        except Exception as exc:
            log.warning("evaluate: %s of scan %d unreadable: %s", gt_name, int(s), exc)
            continue
        for j, z in enumerate(arrays[1:] if gt_name else arrays):  # the predictions
            if not todo[i, j]:
                continue
            try:
                if pred_names[j] == gt_name:  # the GT's own volumes (read above)
                    out[i, j, :, pv] = pair_raw(gt, gt, spacing[i], surface=False)[:, pv]
                    ok[i, j] = True
                    continue
                pred = read_scan(z, int(s), shape, reader)
                if gt is not None:
                    out[i, j] = pair_raw(gt, pred, spacing[i], surface=surface)
                else:  # no ground truth: volumes only
                    out[i, j, :, pv] = pair_raw(pred, pred, spacing[i], surface=False)[:, pv]
                ok[i, j] = True
            except Exception as exc:
                log.warning("evaluate: scan %d of %s failed: %s", int(s), caches[j][0], exc)
    return out, ok


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
                            fill_value=np.nan, chunk_scans=CACHE_CHUNK)
    tok = st.ensure_derived(token_name, row_shape=(TOKEN_LEN,), dtype="uint8", fill_value=0,
                            chunk_scans=CACHE_CHUNK)
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
                "volume_sd": st.volume_sd(m, c) if m != "gt" else None,
                "gt": choice,
                "tokens": _tokens(parts),
                "cache": (metrics_cache(m, c), metrics_array(m, c, "raw"), metrics_array(m, c, "token")),
            }
        )
    return entries, _choose_gt("", has_gt, n, reference), hashes


# --------------------------------------------------------------------------- evaluate
def _jobs(st, entries, *, block: int) -> list[dict]:
    """One job per block of scans whose cached rows are stale, per ground-truth contrast:
    a job reads each scan's GT once and scores every prediction of that scan that needs
    it (``todo``: scan x prediction). Each job carries what it needs (scan indices, voxel
    sizes, tokens: a few bytes per scan); the masks it reads itself.
    """
    by_gt: dict[str, list[tuple[int, np.ndarray]]] = {}
    for k, e in enumerate(entries):
        raw, tok = _ensure_cache(st, e["cache"])
        e["raw"] = raw
        stale = e["has"] & ~np.all(tok == e["tokens"], axis=1)
        e["n_stale"] = int(stale.sum())
        if e["method"] == "gt":  # its own volumes, in the task that reads it anyway
            by_gt.setdefault(e["contrast"], []).append((k, stale))
            continue
        for g in sorted(set(e["gt"][stale])):
            by_gt.setdefault(g, []).append((k, stale & (e["gt"] == g)))
    spacing = st.spacing
    jobs = []
    for g, parts in by_gt.items():
        ks = [k for k, _ in parts]
        need = np.stack([m for _, m in parts], axis=1)  # (scan, prediction)
        idx_all = np.flatnonzero(need.any(axis=1))
        for lo in range(0, len(idx_all), block):
            idx = idx_all[lo:lo + block].astype(np.int64)
            jobs.append({
                "ks": ks,
                "idx": idx,
                "todo": need[idx],
                "spacing": spacing[idx],
                "token": np.stack([entries[k]["tokens"][idx] for k in ks], axis=1),
                "gt_name": mask_array("gt", g) if g else None,
                "pred_names": [mask_array(entries[k]["method"], entries[k]["contrast"]) for k in ks],
                "caches": [entries[k]["cache"] for k in ks],
            })
    return jobs


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
    s_pos = {s: k for k, s in enumerate(subjects)}  # O(N): list.index per scan was O(N^2)
    t_pos = {t: k for k, t in enumerate(timepoints)}
    si = np.array([s_pos[s] for s in scans["subject"]], dtype=np.intp)
    ti = np.array([t_pos[str(t)] for t in scans["timepoint"]], dtype=np.intp)
    preds = [e for e in entries if e["method"] != "gt"]
    methods = sorted({e["method"] for e in preds})
    contrasts = sorted({e["contrast"] for e in preds}, key=lambda c: (c.count("+"), c))
    vv = np.prod(st.spacing, axis=1)
    shape5 = (len(subjects), len(timepoints), len(methods), len(contrasts), 3)
    met = np.full(shape5 + (len(METRIC_FIELDS),), np.nan)
    gt_used = np.full(shape5[:4], "", dtype=object)
    cons = np.full(shape5, np.nan)
    sds = np.full(shape5, np.nan)
    for e in preds:
        raw = np.where(e["has"][:, None, None], e["raw"], np.nan)
        d = derive_metrics(raw, vv)
        mi, ci = methods.index(e["method"]), contrasts.index(e["contrast"])
        have = e["has"]
        met[si[have], ti[have], mi, ci] = d[have]
        gt_used[si[have], ti[have], mi, ci] = e["gt"][have]
        if "consensus" in e:
            cons[si[have], ti[have], mi, ci] = e["consensus"][have]
        sd = e.get("volume_sd")
        if sd is not None and np.isfinite(sd).any():  # (left, right) -> (left, right, total)
            sds[si[have], ti[have], mi, ci] = np.c_[sd, sd.sum(axis=1)][have]
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
    # agreement with the other methods on the scan (metrics.consensus; no ground truth needed)
    data_vars["consensus_dice"] = (dims5, cons)
    if np.isfinite(sds).any():  # the segmenter's own uncertainty; total = left + right (an upper bound)
        data_vars["volume_sd_mm3"] = (dims5, sds)
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
    scans and returns their rows, which this process writes to the cache as they arrive, so
    killed workers only cost their own tasks, and an interrupted call resumes where it
    stopped (losing at most the last few seconds of rows).
    """
    st = open_store(store_path, storage_options=storage_options)
    if csv_path is None:
        csv_path = table_file(st.path, "metrics")
    if csv_path and not is_remote(csv_path):  # a bad output path fails before any work
        check_writable_dir(os.path.dirname(os.path.abspath(csv_path)), create=False)
        check_may_write(csv_path)
    block = int(config.get("metrics.scans-per-task") or 4)
    entries, gt_main, hashes = _plan(st, surface=surface)
    jobs = _jobs(st, entries, block=block)
    preds = [e for e in entries if e["method"] != "gt"]
    pred_names = [mask_array(e["method"], e["contrast"]) for e in preds]
    has = np.stack([e["has"] for e in preds], axis=1) if preds else np.zeros((st.n_scans, 0), bool)
    # reading a few uint8 masks per scan is cheap: larger blocks keep tasks at >= ~100 ms
    cjobs, consensus = consensus_jobs(st, pred_names, has, [hashes[a] for a in pred_names], block=4 * block)
    n_main = len(jobs)
    jobs += cjobs
    writer = RowWriter(st, every=float(config.get("metrics.cache-write-seconds", 5)))

    def cache(i, res):  # in this process, as each task finishes: its rows into the caches
        job, (out, ok) = jobs[i], res
        if i >= n_main:
            writer.add(consensus_array("raw"), consensus_array("token"),
                       {int(s): (out[r], job["token"][r]) for r, s in enumerate(job["idx"]) if ok[r]})
            return
        for j, (_, raw_name, token_name) in enumerate(job["caches"]):
            writer.add(raw_name, token_name, {int(s): (out[r, j], job["token"][r, j])
                                              for r, s in enumerate(job["idx"]) if ok[r, j]})

    try:
        results = run_batches(
            _eval_block, [[j] for j in jobs], client=client, label="evaluate", unit="rows",
            size=lambda b: int(b[0]["todo"].sum() if "todo" in b[0] else b[0]["has"].sum()), progress=progress,
            kwargs={"store_path": st.path, "surface": surface,
                    "storage_options": st.storage_options or None},
            on_result=cache,
        )
    finally:
        writer.flush()  # what finished is kept, also when a task error stops the run
    n_computed = n_failed = 0
    pv = RAW_FIELDS.index("pred_voxels")
    for job, (out, _) in zip(jobs[n_main:], results[n_main:], strict=True):
        consensus[job["idx"]] = out
    for k, e in enumerate(preds):
        e["consensus"] = consensus[:, k]
    for job, (out, _) in zip(jobs[:n_main], results[:n_main], strict=True):
        for j, k in enumerate(job["ks"]):
            rows = job["todo"][:, j]
            entries[k]["raw"][job["idx"][rows]] = out[rows, j]
            n_computed += int(rows.sum())
            n_failed += int(np.isnan(out[rows, j, 2, pv]).sum())
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
