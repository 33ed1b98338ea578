"""Automated quality-control flags per scan and method, from the results dataset.

Each flag names the scan (subject, timepoint), the method and contrast, a ``severity``
(``warning`` or ``error``), the value that raised it, its robust z where one applies and a
one-line ``reason``. Robust z = (x − median) / (1.4826 · MAD) within the method × contrast
across the cohort, so a method's systematic bias never raises flags by itself; it needs
``min_n`` values (NaN otherwise: no flag).

Flags (thresholds: :data:`QC_DEFAULTS`, the stats config's ``qc`` section):

* ``missing_mask`` (error): the scan has masks of other methods on this contrast but not
  this one's, although the method ran on other scans;
* ``empty_mask`` / ``empty_side`` (error): the mask is empty, or one side of it is;
* ``method_disagreement``: the mask overlaps the other methods' masks of the same scan less
  than usual: its consensus Dice (median Dice with the others,
  :mod:`thaldask.metrics.consensus`) is below ``dice_min`` (error) or has a robust z below
  ``-z_warning`` and lies ``min_dice_drop`` below the method's median (a shifted or
  misplaced mask; no ground truth needed);
* ``volume_disagreement``: the volume differs from the median of the other methods on the
  same scan by more than usual for this method (robust z of the log ratio);
* ``volume_outlier``: residual of log volume on site, group, age and log ICV (those present);
* ``asymmetry_outlier``: left–right asymmetry index ``200 (L − R) / (L + R)``;
* ``model_uncertainty`` (when the segmenter reports one, ``volume_sd_mm3``): the larger
  side's volume uncertainty as % of its volume is above ``uncertainty_warning_pct``
  (``uncertainty_error_pct``: error), or unusual for the method (robust z, at least
  ``min_uncertainty_pct`` above its median);
* ``implausible_change``: annualised % change baseline → follow-up (the follow-up is flagged);
* ``side_swap`` (error): per-side Dice below ``swap_dice`` on both sides while the total Dice
  is at least ``swap_total_dice`` (left and right labels exchanged): against ground truth
  where the scan has it, else against the other methods (consensus Dice);
* ``low_dice`` (needs ground truth): Dice below ``dice_min`` (error) or robust z below
  ``-z_warning``.

A robust-z flag is a ``warning`` above ``z_warning`` and an ``error`` above ``z_error``, and
is raised only when the difference also exceeds its ``min_*`` size (a method whose volumes
barely vary between scans would otherwise flag differences of no consequence).
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import xarray as xr

from thaldask.errors import StatsError
from thaldask.stats import _data
from thaldask.stats._select import visits_only
from thaldask.stats.longitudinal import subject_annualised_change

__all__ = ["fit_qc_flags", "robust_z", "QC_DEFAULTS", "QC_COLUMNS", "QC_FLAGS"]

QC_DEFAULTS = {
    "z_warning": 3.5,
    "z_error": 5.0,
    "min_n": 8,
    "dice_min": 0.5,
    "swap_dice": 0.2,
    "swap_total_dice": 0.5,
    "covariates": ["site", "group", "age", "icv_mm3"],
    # a robust-z flag also needs a difference that matters (a precise method has a tiny MAD)
    "min_volume_pct": 5.0,  # disagreement and volume outliers: % from the expected volume
    "min_asymmetry_pct": 5.0,  # asymmetry index points from the method's median
    "min_change_pct_per_year": 2.0,  # annualised change, % per year from the median
    "min_dice_drop": 0.05,  # Dice below the method's median
    "uncertainty_warning_pct": 5.0,  # the segmenter's own volume SD, % of the side's volume
    "uncertainty_error_pct": 10.0,
    "min_uncertainty_pct": 2.0,  # robust-z flags: points above the method's median
}

QC_COLUMNS = ["subject", "timepoint", "method", "contrast", "flag", "severity", "value", "z", "reason"]
QC_FLAGS = ("missing_mask", "empty_mask", "empty_side", "method_disagreement", "volume_disagreement", "volume_outlier",
            "asymmetry_outlier", "model_uncertainty", "implausible_change", "side_swap", "low_dice")


def robust_z(x, *, axis: int = 0, min_n: int = 8) -> np.ndarray:
    """(x − median) / (1.4826 MAD) along ``axis`` ignoring NaN; NaN with fewer than
    ``min_n`` finite values or a zero MAD.

    >>> robust_z(np.array([1.0, 2, 3, 4, 100]), min_n=5).round(2).tolist()
    [-1.35, -0.67, 0.0, 0.67, 65.43]
    """
    x = np.asarray(x, float)
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slices
        med = np.nanmedian(x, axis=axis, keepdims=True)
        mad = 1.4826 * np.nanmedian(np.abs(x - med), axis=axis, keepdims=True)
        z = (x - med) / mad
    n = np.isfinite(x).sum(axis=axis, keepdims=True)
    return np.where((n >= min_n) & (mad > 0) & np.isfinite(x), z, np.nan)


def _severity(z, opt, big=True) -> np.ndarray:
    """``error`` / ``warning`` / ``""`` by |z|, where the difference is ``big`` enough."""
    a = np.abs(z)
    return np.where(big & (a > opt["z_error"]), "error", np.where(big & (a > opt["z_warning"]), "warning", ""))


def _off_median(x) -> np.ndarray:
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.abs(x - np.nanmedian(x))


def _residual_z(logv: np.ndarray, clin: pd.DataFrame, covariates, min_n: int) -> tuple[np.ndarray, np.ndarray]:
    """Robust z and value of the OLS residuals of log volume (scans,) on the covariates present."""
    cols = []
    for c in covariates:
        if c not in clin or clin[c].isna().all():
            continue
        s = clin[c]
        if c == "icv_mm3":
            s = np.log(pd.to_numeric(s, errors="coerce"))
        cols.append(pd.DataFrame({c: s}))
    frame = pd.concat(cols, axis=1) if cols else pd.DataFrame(index=clin.index)
    X, _ = _data.design_columns(frame, list(frame.columns))
    keep = np.nanstd(X, axis=0) > 0 if X.shape[1] else np.zeros(0, bool)
    X = np.c_[np.ones(len(logv)), X[:, keep]]
    ok = np.isfinite(logv) & np.isfinite(X).all(axis=1)
    res = np.full(logv.shape, np.nan)
    if ok.sum() < max(min_n, X.shape[1] + 3):
        return res, res
    beta, *_ = np.linalg.lstsq(X[ok], logv[ok], rcond=None)
    res[ok] = logv[ok] - X[ok] @ beta
    return robust_z(res, min_n=min_n), res


def fit_qc_flags(ds: xr.Dataset, *, options: dict | None = None) -> pd.DataFrame:
    """Every QC flag of every scan × method × contrast (see the module docstring).

    Parameters
    ----------
    ds : xarray.Dataset
        Results dataset (all scans, scan-rescan repeats included).
    options : dict, optional
        :data:`QC_DEFAULTS` keys.

    Returns
    -------
    pandas.DataFrame
        One row per raised flag, columns :data:`QC_COLUMNS`, sorted by severity (errors
        first), subject, timepoint, method, contrast; no rows when nothing is flagged.
    """
    opt = dict(QC_DEFAULTS) | dict(options or {})
    unknown = sorted(set(opt) - set(QC_DEFAULTS))
    if unknown:
        raise StatsError(f"unknown qc option(s) {unknown}; allowed: {sorted(QC_DEFAULTS)}")
    _data.require(ds, "volume_mm3")
    min_n = int(opt["min_n"])
    subs = np.asarray([str(s) for s in ds["subject"].values])
    tps = np.asarray([str(t) for t in ds["timepoint"].values])
    meths = [str(m) for m in ds["method"].values]
    cons = [str(c) for c in ds["contrast"].values]
    S, T = subs.size, tps.size
    keys = _data.method_contrasts(ds, "volume_mm3")
    vol = ds["volume_mm3"].transpose("subject", "timepoint", "method", "contrast", "side")
    sides = [str(s) for s in vol["side"].values]
    V = vol.values  # (S, T, M, C, 3)
    tot, left, right = (V[..., sides.index(s)] for s in ("total", "left", "right"))
    empty = (ds["pred_empty"].transpose(*vol.dims).values if "pred_empty" in ds
             else np.where(np.isfinite(V), (V == 0).astype(float), np.nan))
    clin = _data.clinical_frame(ds)
    rows: list[dict] = []

    def add(mask, m, c, flag, severity, value, z, reason):
        for si, ti in zip(*np.nonzero(mask), strict=True):
            sev = severity if isinstance(severity, str) else severity[si, ti]
            val = value[si, ti] if np.ndim(value) else value
            zz = z[si, ti] if np.ndim(z) else z
            rows.append({"subject": subs[si], "timepoint": tps[ti], "method": m, "contrast": c, "flag": flag,
                         "severity": sev, "value": float(val), "z": float(zz),
                         "reason": reason(float(val), float(zz))})

    logtot = np.log(np.where(tot > 0, tot, np.nan))
    for m, c in keys:
        mi, ci = meths.index(m), cons.index(c)
        v = tot[:, :, mi, ci]
        # missing: other methods scored this scan on this contrast, this one did not
        others_c = np.isfinite(np.delete(tot[:, :, :, ci], mi, axis=2)).any(axis=2)
        add(~np.isfinite(v) & others_c, m, c, "missing_mask", "error", np.nan, np.nan,
            lambda val, z: "no mask, although other methods segmented this scan")
        e = empty[:, :, mi, ci]
        add(e[..., sides.index("total")] == 1, m, c, "empty_mask", "error", 0.0, np.nan,
            lambda val, z: "the mask is empty")
        one_side = (e[..., sides.index("total")] != 1) & ((e[..., sides.index("left")] == 1) | (e[..., sides.index("right")] == 1))
        add(one_side, m, c, "empty_side", "error", np.nan, np.nan,
            lambda val, z: "one side of the mask is empty (a failed or partial segmentation)")
        ok = np.isfinite(v) & (v > 0) & ~one_side
        # disagreement with the other methods on the same scan (log ratio to their median)
        others = np.delete(logtot.reshape(S, T, -1), mi * len(cons) + ci, axis=2)
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            med = np.nanmedian(others, axis=2)
        ratio = np.where(ok, logtot[:, :, mi, ci] - med, np.nan)
        z = robust_z(ratio.ravel(), min_n=min_n).reshape(S, T)
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            excess = ratio - np.nanmedian(ratio)  # beyond this method's usual difference
        sev = _severity(z, opt, np.abs(excess) > np.log1p(opt["min_volume_pct"] / 100))
        add(sev != "", m, c, "volume_disagreement", sev, 100 * (np.exp(excess) - 1), z,
            lambda val, z: f"volume {val:+.1f} % off the other methods on this scan, beyond this "
                           f"method's usual difference (robust z {z:+.1f})")
        # overlap with the other methods' masks of the same scan (no ground truth needed)
        gt_d = (ds["dice"].transpose(*vol.dims).values[:, :, mi, ci] if "dice" in ds
                else np.full(V.shape[:2] + (3,), np.nan))
        if "consensus_dice" in ds:
            cd = ds["consensus_dice"].transpose(*vol.dims).values[:, :, mi, ci]
            cl, cr, ct = (cd[..., sides.index(s)] for s in ("left", "right", "total"))
            no_gt = ~np.isfinite(gt_d[..., sides.index("total")])
            swap_c = no_gt & (cl < opt["swap_dice"]) & (cr < opt["swap_dice"]) & (ct >= opt["swap_total_dice"])
            add(swap_c, m, c, "side_swap", "error", ct, np.nan,
                lambda val, z: f"left and right Dice with the other methods both below {opt['swap_dice']:g} "
                               f"but total Dice {val:.2f}: sides swapped")
            ct = np.where(swap_c | ~ok, np.nan, ct)
            zc = robust_z(ct.ravel(), min_n=min_n).reshape(S, T)
            low = np.isfinite(ct) & ((ct < opt["dice_min"]) | ((zc < -opt["z_warning"]) & (_off_median(ct) > opt["min_dice_drop"])))
            sev = np.where(ct < opt["dice_min"], "error", np.where(zc < -opt["z_error"], "error", "warning"))
            add(low, m, c, "method_disagreement", sev, ct, zc,
                lambda val, z: f"Dice {val:.2f} with the other methods' masks of this scan"
                               + (f" (robust z {z:+.1f})" if np.isfinite(z) else ""))
        # volume outlier for site / group / age / head size
        flat = clin.reset_index(drop=True)
        zr, res = _residual_z(np.where(ok, logtot[:, :, mi, ci], np.nan).ravel(), flat, opt["covariates"], min_n)
        zr, res = zr.reshape(S, T), res.reshape(S, T)
        sev = _severity(zr, opt, _off_median(res) > np.log1p(opt["min_volume_pct"] / 100))
        add(sev != "", m, c, "volume_outlier", sev, v, zr,
            lambda val, z: f"volume {val:.0f} mm³ unusual for site, group, age and head size (robust z {z:+.1f})")
        # left-right asymmetry
        L, R = left[:, :, mi, ci], right[:, :, mi, ci]
        with np.errstate(all="ignore"):
            ai = np.where(ok, 200 * (L - R) / (L + R), np.nan)
        za = robust_z(ai.ravel(), min_n=min_n).reshape(S, T)
        sev = _severity(za, opt, _off_median(ai) > opt["min_asymmetry_pct"])
        add(sev != "", m, c, "asymmetry_outlier", sev, ai, za,
            lambda val, z: f"left-right asymmetry {val:+.1f} % (robust z {z:+.1f})")
        # the segmenter's own uncertainty of the volume, per side
        if "volume_sd_mm3" in ds:
            sd = ds["volume_sd_mm3"].transpose(*vol.dims).values[:, :, mi, ci]
            with np.errstate(all="ignore"):
                rel = 100 * np.fmax(sd[..., sides.index("left")] / L, sd[..., sides.index("right")] / R)
            rel = np.where(ok, rel, np.nan)
            zu = robust_z(rel.ravel(), min_n=min_n).reshape(S, T)
            unusual = _off_median(rel) > opt["min_uncertainty_pct"]
            err = (rel > opt["uncertainty_error_pct"]) | ((zu > opt["z_error"]) & unusual)
            warn = (rel > opt["uncertainty_warning_pct"]) | ((zu > opt["z_warning"]) & unusual)
            add(warn | err, m, c, "model_uncertainty", np.where(err, "error", "warning"), rel, np.nan_to_num(zu, nan=np.nan),
                lambda val, z: f"the segmenter's own volume uncertainty is {val:.1f} % of a side's volume"
                               + (f" (robust z {z:+.1f})" if np.isfinite(z) else ""))
        # ground truth: swapped sides, low Dice
        if "dice" in ds:
            d = gt_d
            dl, dr, dt = (d[..., sides.index(s)] for s in ("left", "right", "total"))
            swap = (dl < opt["swap_dice"]) & (dr < opt["swap_dice"]) & (dt >= opt["swap_total_dice"])
            add(swap, m, c, "side_swap", "error", dt, np.nan,
                lambda val, z: f"left and right Dice both below {opt['swap_dice']:g} but total Dice {val:.2f}: sides swapped")
            zd = robust_z(np.where(swap, np.nan, dt).ravel(), min_n=min_n).reshape(S, T)
            drop = _off_median(np.where(swap, np.nan, dt)) > opt["min_dice_drop"]
            low = ~swap & np.isfinite(dt) & ((dt < opt["dice_min"]) | ((zd < -opt["z_warning"]) & drop))
            sev = np.where(dt < opt["dice_min"], "error", np.where(zd < -opt["z_error"], "error", "warning"))
            add(low, m, c, "low_dice", sev, dt, np.nan_to_num(zd, nan=np.nan),
                lambda val, z: f"Dice {val:.2f} against ground truth" + (f" (robust z {z:+.1f})" if np.isfinite(z) else ""))
    rows += _change_flags(ds, keys, opt, min_n)
    out = pd.DataFrame(rows, columns=QC_COLUMNS)
    if len(out):
        out["_o"] = (out["severity"] != "error").astype(int)
        out = out.sort_values(["_o", "subject", "timepoint", "method", "contrast", "flag"]).drop(columns="_o")
    return out.reset_index(drop=True)


def _change_flags(ds, keys, opt, min_n) -> list[dict]:
    visits = visits_only(ds)
    if visits.sizes.get("timepoint", 1) < 2 or "years_since_baseline" not in visits:
        return []
    ch = subject_annualised_change(visits, side="total")
    chg = ch["annualised_change_pct"]
    fol = ch["followup_timepoint"].values
    rows = []
    for m, c in keys:
        x = chg.sel({"method": m, "contrast": c, "side": "total"}).values
        z = robust_z(x, min_n=min_n)
        sev = _severity(z, opt, _off_median(x) > opt["min_change_pct_per_year"])
        for i in np.flatnonzero(sev != ""):
            rows.append({"subject": str(ch["subject"].values[i]), "timepoint": str(fol[i]), "method": m,
                         "contrast": c, "flag": "implausible_change", "severity": sev[i], "value": float(x[i]),
                         "z": float(z[i]), "reason": f"annualised change {x[i]:+.1f} %/year since "
                         f"{ch['baseline_timepoint'].values[i]} (robust z {z[i]:+.1f})"})
    return rows
