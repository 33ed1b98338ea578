"""Test-retest reliability of each method from scan-rescan repeats.

A repeat is a second scan of the same subject on the same day (new noise, bias field and
head position, possibly another scanner): the anatomy is unchanged, so every difference
between the two volumes is measurement error. Repeats are declared by the clinical column
``repeat_of`` or named ``<visit>-rescan`` (:func:`thaldask.stats._select.repeat_of`); each
subject contributes one (visit, repeat) pair (:func:`thaldask.stats._select.repeat_pairs`).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import xarray as xr

from thaldask.stats import _data
from thaldask.stats._select import at_scans, repeat_pairs
from thaldask.stats._tables import as_result
from thaldask.stats.kernels import retest_batched

__all__ = ["fit_reliability", "retest_pairs", "RELIABILITY_COLUMNS"]

RELIABILITY_COLUMNS = [
    "method", "contrast", "side", "n", "n_other_site", "mean_mm3", "wcv_pct", "icc",
    "icc_ci_lower", "icc_ci_upper", "sem_mm3", "sdc_mm3", "sdc_pct", "rc_mm3", "mean_diff_mm3",
    "mean_diff_ci_lower", "mean_diff_ci_upper", "loa_lower_mm3", "loa_upper_mm3", "formula",
]

FORMULA = (
    "pairs (visit, same-day repeat), one per subject; wCV = RMS of per-subject SD/mean; "
    "ICC(A,1); SEM = sqrt(var_scan + var_error); SDC = z*sqrt(2)*SEM; RC = z*SD(repeat - visit)"
)


def retest_pairs(ds: xr.Dataset, *, side=None) -> xr.Dataset:
    """Per subject, the volumes of its (visit, repeat) pair: the numbers
    :func:`fit_reliability` summarises and the report's test-retest Bland–Altman draws.

    Returns
    -------
    xarray.Dataset
        ``retest_visit_mm3`` and ``retest_repeat_mm3`` (subject, method, contrast, side),
        NaN for subjects without a repeat; ``retest_visit_timepoint``,
        ``retest_repeat_timepoint`` (subject; ``""``: none) and ``retest_other_site``
        (subject; 1 where the repeat's site differs from the visit's).
    """
    _data.require(ds, "volume_mm3")
    visit, again = repeat_pairs(ds)
    sides = _data.sides(ds, side)
    v = ds["volume_mm3"].sel(side=sides)
    tps = np.asarray([str(t) for t in ds["timepoint"].values], dtype=object)
    other = np.zeros(visit.size)
    if "site" in ds:
        site = ds["site"].transpose("subject", "timepoint").values.astype(str)
        has = (visit >= 0) & (again >= 0)
        rows = np.flatnonzero(has)
        other[rows] = (site[rows, visit[has]] != site[rows, again[has]]).astype(float)
    dims = ("subject", "method", "contrast", "side")
    coords = {"subject": ds["subject"].values, "method": ds["method"].values,
              "contrast": ds["contrast"].values, "side": sides}
    out = xr.Dataset(
        {
            "retest_visit_mm3": (dims, at_scans(v.transpose("subject", "timepoint", "method", "contrast", "side"), visit)),
            "retest_repeat_mm3": (dims, at_scans(v.transpose("subject", "timepoint", "method", "contrast", "side"), again)),
            "retest_visit_timepoint": ("subject", np.where(visit >= 0, tps[np.maximum(visit, 0)], "").astype(object)),
            "retest_repeat_timepoint": ("subject", np.where(again >= 0, tps[np.maximum(again, 0)], "").astype(object)),
            "retest_other_site": ("subject", other),
        },
        coords=coords,
    )
    out["retest_visit_mm3"].attrs["units"] = "mm³"
    out["retest_repeat_mm3"].attrs["units"] = "mm³"
    return out


def fit_reliability(ds: xr.Dataset, *, side=None, alpha: float = 0.05, same_site: bool = False,
                    as_frame: bool = False):
    """Test-retest reliability of every method × contrast × side from scan-rescan repeats.

    Parameters
    ----------
    ds : xarray.Dataset
        Results dataset holding repeats (see the module docstring).
    side : str, list or "all", optional
        Default ``"total"``.
    alpha : float
        ``1 - alpha`` CIs; SDC and RC use the ``1 - alpha/2`` normal quantile (1.96).
    same_site : bool
        Use only pairs whose repeat was on the visit's site (the error a single-scanner
        trial sees); default every pair.
    as_frame : bool
        Return a pandas DataFrame instead of an xarray Dataset.

    Returns
    -------
    xarray.Dataset or pandas.DataFrame
        One row per method/contrast/side with ≥ 3 pairs (columns
        :data:`RELIABILITY_COLUMNS`): ``n`` pairs, ``n_other_site`` of them with the repeat
        at another site; ``mean_mm3``; within-subject CV ``wcv_pct``; ``icc`` ICC(A,1) with
        CI; ``sem_mm3``; smallest detectable change ``sdc_mm3`` and ``sdc_pct``;
        repeatability coefficient ``rc_mm3``; the systematic repeat − visit difference
        ``mean_diff_mm3`` (CI) and the limits of agreement ``mean_diff ± rc``
        (:func:`thaldask.stats.kernels.retest_batched`). Empty when the dataset has
        no repeats.
    """
    pairs = retest_pairs(ds, side=side)
    keys = _data.method_contrasts(ds, "volume_mm3")
    meths = [str(m) for m in ds["method"].values]
    cons = [str(c) for c in ds["contrast"].values]
    rows = []
    other = pairs["retest_other_site"].values
    for side_name in [str(s) for s in pairs["side"].values]:
        a = pairs["retest_visit_mm3"].sel(side=side_name).transpose("method", "contrast", "subject").values
        b = pairs["retest_repeat_mm3"].sel(side=side_name).transpose("method", "contrast", "subject").values
        x0 = np.stack([a[meths.index(m), cons.index(c)] for m, c in keys]) if keys else np.empty((0, a.shape[-1]))
        x1 = np.stack([b[meths.index(m), cons.index(c)] for m, c in keys]) if keys else np.empty((0, a.shape[-1]))
        if same_site:
            x1 = np.where(other[None, :] > 0, np.nan, x1)
        r = retest_batched(x0, x1, alpha=alpha)
        ok = np.isfinite(x0) & np.isfinite(x1)
        for k, (m, c) in enumerate(keys):
            if r["n"][k] < 3:
                continue
            rows.append({
                "method": m, "contrast": c, "side": side_name, "n": int(r["n"][k]),
                "n_other_site": int((other[ok[k]] > 0).sum()), "mean_mm3": r["mean"][k],
                "wcv_pct": r["wcv_pct"][k], "icc": r["icc"][k], "icc_ci_lower": r["icc_ci_lower"][k],
                "icc_ci_upper": r["icc_ci_upper"][k], "sem_mm3": r["sem"][k], "sdc_mm3": r["sdc"][k],
                "sdc_pct": r["sdc_pct"][k], "rc_mm3": r["rc"][k], "mean_diff_mm3": r["mean_diff"][k],
                "mean_diff_ci_lower": r["mean_diff_ci_lower"][k],
                "mean_diff_ci_upper": r["mean_diff_ci_upper"][k],
                "loa_lower_mm3": r["mean_diff"][k] - r["rc"][k],
                "loa_upper_mm3": r["mean_diff"][k] + r["rc"][k], "formula": FORMULA,
            })
    out = pd.DataFrame(rows, columns=RELIABILITY_COLUMNS)
    return as_result("reliability", out, as_frame=as_frame, attrs={"alpha": alpha})
