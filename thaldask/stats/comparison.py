"""Paired comparison of methods across subjects: Friedman omnibus, pairwise Wilcoxon
signed-rank tests with Holm correction, effect sizes."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import xarray as xr
from scipy import stats

from thaldask.stats import _data
from thaldask.stats._select import at_scans, gt_scans
from thaldask.stats._tables import as_result
from thaldask.stats.kernels import signed_rank_test
from thaldask.stats.multitest import holm

__all__ = ["fit_method_comparison", "rank_biserial"]

METRICS = ("dice", "sensitivity", "precision", "abs_volume_error_mm3")


def rank_biserial(d) -> float:
    """Matched-pairs rank-biserial correlation of paired differences ``d`` (Kerby 2014):
    ``(R+ - R-) / (R+ + R-)`` over the ranks of ``|d|``, zero differences dropped (as the
    Wilcoxon test drops them). In [-1, 1]; positive when the first of the pair is larger.

    >>> rank_biserial([1.0, 2.0, 3.0, -0.5])
    0.8
    """
    d = np.asarray(d, float)
    d = d[np.isfinite(d) & (d != 0)]
    if d.size == 0:
        return np.nan
    r = stats.rankdata(np.abs(d))
    rp, rn = r[d > 0].sum(), r[d < 0].sum()
    return float((rp - rn) / (rp + rn))


def _metric_matrix(ds, metric, side, pick, keys):
    sub = ds.sel(side=side)
    if metric == "abs_volume_error_mm3":
        vol = at_scans(sub["volume_mm3"].transpose("subject", "timepoint", "method", "contrast"), pick)
        gt = at_scans(sub["gt_volume_mm3"].transpose("subject", "timepoint"), pick)
        arr = np.abs(vol - gt[:, None, None])
    else:
        if metric not in sub:
            return None
        arr = at_scans(sub[metric].transpose("subject", "timepoint", "method", "contrast"), pick)
    meths = [str(m) for m in ds["method"].values]
    cons = [str(c) for c in ds["contrast"].values]
    return np.stack([arr[:, meths.index(m), cons.index(c)] for m, c in keys], axis=1)


def fit_method_comparison(
    ds: xr.Dataset,
    *,
    metrics=METRICS,
    side=None,
    methods=None,
    as_frame: bool = False,
) -> xr.Dataset | pd.DataFrame:
    """Compare methods × contrasts pairwise on the same subjects.

    Parameters
    ----------
    ds : xarray.Dataset
        Results dataset.
    metrics : sequence of str
        Per-scan metrics to compare; ``abs_volume_error_mm3`` is ``|volume - gt|``.
    side : str, list or "all", optional
        Default ``"total"``.
    methods : list of (method, contrast), optional
        Default: every pair with ground-truth comparisons.
    as_frame : bool
        Return the table as a pandas DataFrame instead of an xarray Dataset.

    Returns
    -------
    xarray.Dataset
        Default: an ``xarray.Dataset`` (:func:`thaldask.stats.table_to_xarray`) with dims
        ``metric``, ``side``, ``test``, ``method_a``, ``contrast_a``, ``method_b``,
        ``contrast_b`` (the Friedman rows have ``""`` for the four method/contrast keys);
        every other column below is a variable over them (NaN where a combination has no
        row), including ``n`` and the ``model`` description. ``attrs`` hold ``table``
        (``"method_comparison"``).
    pandas.DataFrame
        With ``as_frame=True``: per metric/side one ``test == "friedman"`` row (chi², p, Kendall's W as effect size)
        and one ``"wilcoxon"`` row per pair of methods (W statistic, p, Holm-adjusted
        ``p_holm`` within the metric/side family, matched-pairs rank-biserial correlation,
        median difference a − b). ``n`` is the number of subjects with the metric for every
        compared method (one scan per subject, the earliest with ground truth); all tests of a
        family use these rows. A family that cannot be tested has NaN p-values; NaNs never
        spread to the rest of a family.
    """
    _data.require(ds, "volume_mm3", "gt_volume_mm3")
    keys_all = methods or _data.method_contrasts(ds, "volume_mm3")
    rows = []
    for side_name in _data.sides(ds, side):
        pick = gt_scans(ds, side_name)
        for metric in metrics:
            mat = _metric_matrix(ds, metric, side_name, pick, keys_all)
            if mat is None:
                continue
            keep = np.isfinite(mat).any(axis=0)
            keys = [k for k, kp in zip(keys_all, keep, strict=True) if kp]
            mat = mat[:, keep]
            complete = np.isfinite(mat).all(axis=1)
            x = mat[complete]
            n = int(x.shape[0])
            base = {"metric": metric, "side": side_name, "n": n, "k_methods": len(keys)}
            if len(keys) >= 3 and n >= 2:
                try:
                    fr = stats.friedmanchisquare(*x.T)
                    chi2, p = float(fr.statistic), float(fr.pvalue)
                except ValueError:
                    chi2, p = np.nan, np.nan
                w = chi2 / (n * (len(keys) - 1)) if np.isfinite(chi2) else np.nan
            else:
                chi2, p, w = np.nan, np.nan, np.nan
            rows.append({
                **base, "test": "friedman", "method_a": "", "contrast_a": "", "method_b": "",
                "contrast_b": "", "statistic": chi2, "p": p, "p_holm": np.nan,
                "effect_size": w, "effect_size_name": "kendall_w", "median_a": np.nan,
                "median_b": np.nan, "median_diff": np.nan,
                "model": f"friedman: {metric} ~ method | subject ({len(keys)} methods)",
            })
            pair_rows = []
            for ia, ib in itertools.combinations(range(len(keys)), 2):
                d = x[:, ia] - x[:, ib]
                stat = pv = np.nan
                if n >= 2 and np.any(d != 0):
                    try:
                        stat, pv = signed_rank_test(d)
                    except ValueError:
                        pass
                pair_rows.append({
                    **base, "test": "wilcoxon", "method_a": keys[ia][0], "contrast_a": keys[ia][1],
                    "method_b": keys[ib][0], "contrast_b": keys[ib][1], "statistic": stat,
                    "p": pv, "p_holm": np.nan, "effect_size": rank_biserial(d),
                    "effect_size_name": "rank_biserial",
                    "median_a": float(np.median(x[:, ia])) if n else np.nan,
                    "median_b": float(np.median(x[:, ib])) if n else np.nan,
                    "median_diff": float(np.median(d)) if n else np.nan,
                    "model": f"wilcoxon signed-rank: {metric}[a] - {metric}[b], paired by subject",
                })
            if pair_rows:
                adj = holm([r["p"] for r in pair_rows])
                for r, a in zip(pair_rows, adj, strict=True):
                    r["p_holm"] = a
            rows.extend(pair_rows)
    return as_result("method_comparison", pd.DataFrame(rows), as_frame=as_frame)
