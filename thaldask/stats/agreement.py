"""Agreement of each method with the manual ground truth.

Overlap (Dice, sensitivity, precision) summaries and volumetric agreement: Bland–Altman
bias and limits of agreement with confidence intervals, proportional bias, ICC(A,1), Lin's
concordance correlation coefficient and Pearson's r.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import xarray as xr
from scipy import stats

from thaldask.stats import _data
from thaldask.stats._select import at_scans, gt_scans
from thaldask.stats._tables import as_result
from thaldask.stats.kernels import ols_batched, retest_batched

__all__ = ["fit_agreement", "bland_altman", "icc_a1", "lin_ccc", "pearson"]

OVERLAP = ("dice", "sensitivity", "precision")
BA_MODEL = "volume_mm3 - gt_volume_mm3 ~ 1 + (volume_mm3 + gt_volume_mm3) / 2"


def bland_altman(x, y, *, alpha: float = 0.05, prop_alpha: float = 0.05) -> dict:
    """Bland–Altman statistics of ``x - y`` (method minus reference).

    Parameters
    ----------
    x, y : array_like (n,)
        Paired measurements (mm³); pairs with a NaN are dropped.

    Returns
    -------
    dict
        ``n``, ``bias`` (mean difference), its t-based CI, ``sd`` (ddof = 1), limits of
        agreement ``loa_lower``/``loa_upper`` = bias ∓ z·sd (z = 1.96 for alpha 0.05) with
        approximate CIs, proportional bias (OLS of the difference on the pair mean:
        ``prop_intercept``, ``prop_slope`` with CI and ``prop_p``) and, when ``prop_p <
        prop_alpha``, regression-based limits (``reg_*``).

    Notes
    -----
    CI of a limit (Bland & Altman 1999, Stat Methods Med Res 8:135): the limit's variance is
    approximately ``(1/n + z²/(2(n-1))) sd²``; its CI is limit ± t(n-1)·SE.
    Regression-based limits (same paper, section 3.2): the difference is regressed on the
    mean A (``D = b0 + b1 A``), the absolute residuals on A (``|R| = c0 + c1 A``); the limits
    are ``b0 + b1 A ∓ z·sqrt(pi/2)·(c0 + c1 A)``. They are reported as these coefficients and
    evaluated at the mean of A.

    Examples
    --------
    >>> r = bland_altman([11.0, 12, 13, 15], [10.0, 10, 11, 12])
    >>> float(r["bias"]), round(float(r["sd"]), 4)
    (2.0, 0.8165)
    """
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    n = int(x.size)
    z = stats.norm.ppf(1 - alpha / 2)
    keys = (
        "bias bias_ci_lower bias_ci_upper sd loa_lower loa_lower_ci_lower loa_lower_ci_upper "
        "loa_upper loa_upper_ci_lower loa_upper_ci_upper prop_intercept prop_slope "
        "prop_slope_ci_lower prop_slope_ci_upper prop_p reg_bias_intercept reg_bias_slope "
        "reg_sd_intercept reg_sd_slope reg_loa_lower_at_mean reg_loa_upper_at_mean"
    ).split()
    out = {"n": n, **{k: np.nan for k in keys}, "prop_bias": False}
    if n < 3:
        return out
    d = x - y
    a = (x + y) / 2
    bias = d.mean()
    sd = d.std(ddof=1)
    t = stats.t.ppf(1 - alpha / 2, n - 1)
    se_bias = sd / np.sqrt(n)
    se_loa = sd * np.sqrt(1 / n + z**2 / (2 * (n - 1)))
    lo, hi = bias - z * sd, bias + z * sd
    out.update(
        bias=bias,
        bias_ci_lower=bias - t * se_bias,
        bias_ci_upper=bias + t * se_bias,
        sd=sd,
        loa_lower=lo,
        loa_lower_ci_lower=lo - t * se_loa,
        loa_lower_ci_upper=lo + t * se_loa,
        loa_upper=hi,
        loa_upper_ci_lower=hi - t * se_loa,
        loa_upper_ci_upper=hi + t * se_loa,
    )
    X = np.c_[np.ones(n), a]
    r = ols_batched(X, d)
    lower, upper = r.conf_int(alpha)
    out.update(
        prop_intercept=r.params[0],
        prop_slope=r.params[1],
        prop_slope_ci_lower=lower[1],
        prop_slope_ci_upper=upper[1],
        prop_p=r.pvalues[1],
    )
    if np.isfinite(r.pvalues[1]) and r.pvalues[1] < prop_alpha:
        resid = np.abs(d - X @ r.params)
        rr = ols_batched(X, resid)
        k = z * np.sqrt(np.pi / 2)
        am = a.mean()
        centre = r.params[0] + r.params[1] * am
        spread = rr.params[0] + rr.params[1] * am
        out.update(
            prop_bias=True,
            reg_bias_intercept=r.params[0],
            reg_bias_slope=r.params[1],
            reg_sd_intercept=np.sqrt(np.pi / 2) * rr.params[0],
            reg_sd_slope=np.sqrt(np.pi / 2) * rr.params[1],
            reg_loa_lower_at_mean=centre - k * spread,
            reg_loa_upper_at_mean=centre + k * spread,
        )
    return out


def icc_a1(x, y, *, alpha: float = 0.05) -> tuple[float, float, float]:
    """ICC(A,1): two-way model, absolute agreement, single measurement (McGraw & Wong 1996;
    Shrout & Fleiss ICC(2,1)), with its exact-F-approximation CI: the two-scan case of
    :func:`~thaldask.stats.kernels.retest_batched`.

    Returns ``(icc, ci_lower, ci_upper)``; NaN with fewer than 3 complete pairs.

    >>> round(icc_a1([1.0, 2, 3, 4, 5], [1.1, 2.0, 2.9, 4.2, 5.1])[0], 4)
    0.9973
    """
    r = retest_batched(np.asarray(x, float), np.asarray(y, float), alpha=alpha)
    return (float(r["icc"]), float(r["icc_ci_lower"]), float(r["icc_ci_upper"]))


def lin_ccc(x, y, *, alpha: float = 0.05) -> tuple[float, float, float]:
    """Lin's concordance correlation coefficient with a Fisher-z CI (Lin 1989, Biometrics 45:255).

    Moments use the 1/n denominator, as in Lin's definition. The variance of
    ``z = atanh(ccc)`` is Lin's asymptotic formula with ``n - 2`` degrees of freedom.

    >>> round(lin_ccc([1.0, 2, 3, 4], [1.0, 2, 3, 4])[0], 6)
    1.0
    """
    x = np.asarray(x, float)
    y = np.asarray(y, float)
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    n = x.size
    if n < 4:
        return (np.nan, np.nan, np.nan)
    mx, my = x.mean(), y.mean()
    sx2, sy2 = x.var(), y.var()
    sxy = ((x - mx) * (y - my)).mean()
    ccc = 2 * sxy / (sx2 + sy2 + (mx - my) ** 2)
    if not np.isfinite(ccc) or abs(ccc) >= 1:
        return (float(ccc), np.nan, np.nan)
    r = sxy / np.sqrt(sx2 * sy2)
    u2 = (mx - my) ** 2 / np.sqrt(sx2 * sy2)
    var_z = (
        (1 - r**2) * ccc**2 / ((1 - ccc**2) * r**2)
        + 2 * ccc**3 * (1 - ccc) * u2 / (r * (1 - ccc**2) ** 2)
        - ccc**4 * u2**2 / (2 * r**2 * (1 - ccc**2) ** 2)
    ) / (n - 2)
    zq = stats.norm.ppf(1 - alpha / 2)
    zc = np.arctanh(ccc)
    se = np.sqrt(var_z)
    return (float(ccc), float(np.tanh(zc - zq * se)), float(np.tanh(zc + zq * se)))


def pearson(x, y, *, alpha: float = 0.05) -> tuple[float, float, float, float]:
    """Pearson's r, Fisher-z CI (SE 1/sqrt(n-3)) and two-sided p: ``(r, lo, hi, p)``."""
    x = np.asarray(x, float)
    y = np.asarray(y, float)
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    n = x.size
    if n < 4 or x.std() == 0 or y.std() == 0:
        return (np.nan, np.nan, np.nan, np.nan)
    res = stats.pearsonr(x, y)
    r = float(res.statistic)
    zq = stats.norm.ppf(1 - alpha / 2)
    with np.errstate(divide="ignore"):
        z = np.arctanh(r)
    se = 1 / np.sqrt(n - 3)
    return (r, float(np.tanh(z - zq * se)), float(np.tanh(z + zq * se)), float(res.pvalue))


def _summary(v: np.ndarray, alpha: float) -> dict:
    v = v[np.isfinite(v)]
    n = v.size
    if n == 0:
        return dict(n=0, mean=np.nan, lo=np.nan, hi=np.nan, sd=np.nan, median=np.nan, q1=np.nan, q3=np.nan)
    m = v.mean()
    sd = v.std(ddof=1) if n > 1 else np.nan
    t = stats.t.ppf(1 - alpha / 2, n - 1) if n > 1 else np.nan
    q1, med, q3 = np.percentile(v, [25, 50, 75])
    return dict(
        n=n, mean=m, lo=m - t * sd / np.sqrt(n), hi=m + t * sd / np.sqrt(n), sd=sd,
        median=med, q1=q1, q3=q3,
    )


def fit_agreement(
    ds: xr.Dataset,
    *,
    side=None,
    alpha: float = 0.05,
    prop_alpha: float = 0.05,
    as_frame: bool = False,
) -> xr.Dataset | pd.DataFrame:
    """Agreement of every method × contrast with the ground truth.

    Parameters
    ----------
    ds : xarray.Dataset
        Results dataset (``volume_mm3``, ``gt_volume_mm3``, ``dice``, ``sensitivity``,
        ``precision``; dims subject, timepoint, method, contrast, side).
    side : str, list or "all", optional
        Sides to report; default ``"total"``.
    alpha : float
        1 - confidence level of every CI.
    prop_alpha : float
        Level at which proportional bias counts as present (regression-based limits are
        then reported).
    as_frame : bool
        Return the table as a pandas DataFrame instead of an xarray Dataset.

    Returns
    -------
    xarray.Dataset
        Default: an ``xarray.Dataset`` (:func:`thaldask.stats.table_to_xarray`) with dims
        ``method``, ``contrast``, ``side``; every column below is a variable over them (NaN
        where a method/contrast has no volumes), including ``n`` and the ``model`` formula.
        ``attrs`` hold ``table`` (``"agreement"``), ``alpha`` and ``prop_alpha``.
        Select with a dict (``x.sel({"method": "thalnet"})``): ``method`` is also an
        argument of ``Dataset.sel``.
    pandas.DataFrame
        With ``as_frame=True``: one row per method/contrast/side: ``n`` (subjects with both volumes; one scan per
        subject, the earliest with ground truth), overlap summaries ``dice_mean`` (CI),
        ``dice_sd``, ``dice_median``, ``dice_q1``, ``dice_q3`` (and for sensitivity,
        precision), volumes in mm³, Bland–Altman ``bias_mm3``, ``sd_diff_mm3``,
        ``loa_lower_mm3``, ``loa_upper_mm3``, proportional bias ``prop_bias_slope``,
        ``prop_bias_p``, ``icc_a1``, ``ccc``, ``pearson_r`` — each estimate followed by its
        ``*_ci_lower``/``*_ci_upper`` — and the ``model`` formula. Eager (computes).
    """
    _data.require(ds, "volume_mm3", "gt_volume_mm3")
    rows = []
    for sd_name in _data.sides(ds, side):
        pick = gt_scans(ds, sd_name)
        sub = ds.sel(side=sd_name)
        vol = at_scans(sub["volume_mm3"].transpose("subject", "timepoint", "method", "contrast"), pick)
        gt = at_scans(sub["gt_volume_mm3"].transpose("subject", "timepoint"), pick)
        over = {
            m: at_scans(sub[m].transpose("subject", "timepoint", "method", "contrast"), pick)
            for m in OVERLAP
            if m in sub
        }
        for i, meth in enumerate(ds["method"].values):
            for j, con in enumerate(ds["contrast"].values):
                v = vol[:, i, j]
                if not np.isfinite(v).any():
                    continue
                row = {"method": str(meth), "contrast": str(con), "side": sd_name}
                ba = bland_altman(v, gt, alpha=alpha, prop_alpha=prop_alpha)
                row["n"] = ba["n"]
                for m in OVERLAP:
                    s = _summary(over[m][:, i, j], alpha) if m in over else _summary(np.array([]), alpha)
                    row[f"n_{m}"] = s["n"]
                    row[f"{m}_mean"] = s["mean"]
                    row[f"{m}_mean_ci_lower"] = s["lo"]
                    row[f"{m}_mean_ci_upper"] = s["hi"]
                    for k in ("sd", "median", "q1", "q3"):
                        row[f"{m}_{k}"] = s[k]
                ok = np.isfinite(v) & np.isfinite(gt)
                row["volume_mean_mm3"] = v[ok].mean() if ok.any() else np.nan
                row["gt_volume_mean_mm3"] = gt[ok].mean() if ok.any() else np.nan
                with np.errstate(all="ignore"):
                    row["bias_pct"] = np.mean((v[ok] - gt[ok]) / gt[ok] * 100) if ok.any() else np.nan
                row["bias_mm3"] = ba["bias"]
                row["bias_mm3_ci_lower"] = ba["bias_ci_lower"]
                row["bias_mm3_ci_upper"] = ba["bias_ci_upper"]
                row["sd_diff_mm3"] = ba["sd"]
                for lim in ("lower", "upper"):
                    row[f"loa_{lim}_mm3"] = ba[f"loa_{lim}"]
                    row[f"loa_{lim}_mm3_ci_lower"] = ba[f"loa_{lim}_ci_lower"]
                    row[f"loa_{lim}_mm3_ci_upper"] = ba[f"loa_{lim}_ci_upper"]
                row["prop_bias_intercept_mm3"] = ba["prop_intercept"]
                row["prop_bias_slope"] = ba["prop_slope"]
                row["prop_bias_slope_ci_lower"] = ba["prop_slope_ci_lower"]
                row["prop_bias_slope_ci_upper"] = ba["prop_slope_ci_upper"]
                row["prop_bias_p"] = ba["prop_p"]
                row["prop_bias"] = ba["prop_bias"]
                for k in ("reg_bias_intercept", "reg_bias_slope", "reg_sd_intercept", "reg_sd_slope"):
                    row[k] = ba[k]
                row["reg_loa_lower_at_mean_mm3"] = ba["reg_loa_lower_at_mean"]
                row["reg_loa_upper_at_mean_mm3"] = ba["reg_loa_upper_at_mean"]
                icc = icc_a1(v, gt, alpha=alpha)
                row["icc_a1"], row["icc_a1_ci_lower"], row["icc_a1_ci_upper"] = icc
                c = lin_ccc(v, gt, alpha=alpha)
                row["ccc"], row["ccc_ci_lower"], row["ccc_ci_upper"] = c
                r = pearson(v, gt, alpha=alpha)
                row["pearson_r"], row["pearson_r_ci_lower"], row["pearson_r_ci_upper"] = r[:3]
                row["pearson_p"] = r[3]
                row["model"] = BA_MODEL
                rows.append(row)
    return as_result("agreement", pd.DataFrame(rows), as_frame=as_frame,
                     attrs={"alpha": alpha, "prop_alpha": prop_alpha})
