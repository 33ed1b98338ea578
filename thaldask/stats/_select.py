"""Which scans each analysis uses: the one home of the timepoint-order, ground-truth-scan
and baseline/follow-up rules.

The statistics and the report both import these, so a figure draws exactly the scans its
table summarises. Every function takes a results dataset (dims subject, timepoint, ...)
and returns per-subject timepoint *positions* (``-1``: none) or values picked at them.
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from thaldask.errors import StatsError
from thaldask.schema import REPEAT_COLUMN, RESCAN_SUFFIX

__all__ = [
    "repeat_of",
    "visits_only",
    "repeat_pairs",
    "first_timepoint",
    "scan_order",
    "gt_scans",
    "at_scans",
    "baseline_followup",
]


def repeat_of(ds: xr.Dataset) -> np.ndarray:
    """Per scan, the visit it repeats (scan-rescan), ``""`` for visits; array of shape
    (subject, timepoint) of str.

    The clinical column ``repeat_of`` (:data:`thaldask.schema.REPEAT_COLUMN`) declares it;
    without that column a timepoint named ``<visit>-rescan`` whose ``<visit>`` is also a
    timepoint is a repeat of it. A scan cannot repeat itself.
    """
    tps = np.asarray([str(t) for t in ds["timepoint"].values], dtype=object)
    S, T = ds.sizes["subject"], tps.size
    if REPEAT_COLUMN in ds:
        raw = ds[REPEAT_COLUMN].transpose("subject", "timepoint").values
        out = np.array([["" if (v is None or (isinstance(v, float) and not np.isfinite(v))
                         or str(v) in ("", "nan", "None")) else str(v) for v in row] for row in raw],
                       dtype=object).reshape(S, T)
    else:
        base = [t[: -len(RESCAN_SUFFIX)] if t.endswith(RESCAN_SUFFIX) else "" for t in tps]
        base = [b if b in set(tps) else "" for b in base]
        out = np.tile(np.asarray(base, dtype=object), (S, 1))
    return np.where(out == tps[None, :], "", out)


def visits_only(ds: xr.Dataset) -> xr.Dataset:
    """The dataset without its scan-rescan repeats, for every analysis that takes
    timepoints as visits (cross-sectional, longitudinal, agreement, ComBat).

    Timepoints that are repeats for every subject are dropped; elsewhere a repeat's
    numeric values become NaN and its strings ``""`` (so years_since_baseline of a repeat
    never makes it a follow-up). A dataset without repeats is returned as it is.
    """
    rep = repeat_of(ds) != ""
    if not rep.any():
        return ds
    other = [d for d in ds["volume_mm3"].dims if d not in ("subject", "timepoint")] if "volume_mm3" in ds else []
    scanned = (np.isfinite(ds["volume_mm3"]).any(other).transpose("subject", "timepoint").values
               if "volume_mm3" in ds else np.ones(rep.shape, bool))
    keep = ~(rep | ~scanned).all(axis=0)  # a timepoint whose scans are all repeats goes
    out = ds.isel(timepoint=np.flatnonzero(keep))
    rep = rep[:, keep]
    if not rep.any():
        return out
    mask = xr.DataArray(rep, dims=("subject", "timepoint"),
                        coords={"subject": out["subject"], "timepoint": out["timepoint"]})
    for name, var in out.data_vars.items():
        if "subject" in var.dims and "timepoint" in var.dims:
            if np.issubdtype(var.dtype, np.floating):
                out[name] = var.where(~mask)
            elif var.dtype.kind in "OUS":
                out[name] = xr.where(mask, "", var).astype(var.dtype)
    return out


def repeat_pairs(ds: xr.Dataset) -> tuple[np.ndarray, np.ndarray]:
    """Per subject, the positions of one (visit, repeat) pair: the earliest repeat in
    :func:`scan_order`, with the timepoint it repeats (``-1``: the subject has none).
    One pair per subject keeps the pairs independent."""
    rep = repeat_of(ds)
    tps = [str(t) for t in ds["timepoint"].values]
    S = rep.shape[0]
    visit = np.full(S, -1)
    again = np.full(S, -1)
    for t in scan_order(ds)[::-1]:
        has = (rep[:, t] != "") & np.isin(rep[:, t], tps)
        pos = np.array([tps.index(v) if v in tps else -1 for v in rep[:, t]])
        visit = np.where(has, pos, visit)
        again = np.where(has, t, again)
    return visit, again


def first_timepoint(ds: xr.Dataset) -> str:
    """The reference timepoint of cross-sectional models and ComBat: ``baseline`` if the
    dataset has it, else its first timepoint."""
    tps = [str(t) for t in ds["timepoint"].values]
    return "baseline" if "baseline" in tps else tps[0]


def scan_order(ds: xr.Dataset) -> np.ndarray:
    """Timepoint positions sorted by time: years_since_baseline medians if present, else
    the dataset order with ``baseline`` first."""
    tps = [str(t) for t in ds["timepoint"].values]
    if "years_since_baseline" in ds:
        yrs = ds["years_since_baseline"].transpose("subject", "timepoint").values.astype(float)
        with np.errstate(all="ignore"):
            med = np.array([np.nanmedian(c) if np.isfinite(c).any() else np.inf for c in yrs.T])
        return np.argsort(med, kind="mergesort")
    order = list(range(len(tps)))
    if "baseline" in tps:
        order.remove(tps.index("baseline"))
        order.insert(0, tps.index("baseline"))
    return np.asarray(order)


def gt_scans(ds: xr.Dataset, side: str = "total") -> np.ndarray:
    """Per subject, the position of the earliest timepoint (:func:`scan_order`) with a
    ground-truth volume on ``side`` (-1 if none): agreement and method comparison use one
    scan per subject so pairs are independent."""
    gt = ds["gt_volume_mm3"].sel(side=side).transpose("subject", "timepoint").values
    order = scan_order(ds)
    pick = np.full(gt.shape[0], -1)
    for t in order[::-1]:
        pick = np.where(np.isfinite(gt[:, t]), t, pick)
    return pick


def at_scans(da: xr.DataArray, pick: np.ndarray) -> np.ndarray:
    """Values of ``da`` (subject, timepoint, ...) at each subject's chosen timepoint
    position ``pick`` (shape (subject,), -1: NaN); array of shape (subject, ...)."""
    arr = da.transpose("subject", "timepoint", ...).values
    out = np.full((arr.shape[0], *arr.shape[2:]), np.nan)
    has = pick >= 0
    out[has] = arr[np.flatnonzero(has), pick[has]]
    return out


def baseline_followup(ds: xr.Dataset) -> tuple[int, np.ndarray, np.ndarray]:
    """The baseline/follow-up pair of every subject for longitudinal change.

    Returns
    -------
    (int, numpy.ndarray, numpy.ndarray)
        The baseline position (the first of :func:`scan_order`, the same for every
        subject); per subject the follow-up position, the last later timepoint with
        ``years_since_baseline > 0`` (-1: none); and the years between them (NaN: none).
    """
    order = scan_order(ds)
    t0 = order[0]
    if "years_since_baseline" not in ds:
        raise StatsError("results dataset lacks 'years_since_baseline'; needed for longitudinal models")
    yrs = ds["years_since_baseline"].transpose("subject", "timepoint").values.astype(float)
    follow = np.full(yrs.shape[0], -1)
    for t in order[1:]:
        follow = np.where(np.isfinite(yrs[:, t]) & (yrs[:, t] > 0), t, follow)
    years = np.where(follow >= 0, yrs[np.arange(yrs.shape[0]), np.maximum(follow, 0)], np.nan)
    return t0, follow, years
