"""QC flags: each planted failure raises its flag on its scan, a clean cohort raises few."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from thaldask.errors import StatsError
from thaldask.stats.qc_flags import QC_COLUMNS, fit_qc_flags, robust_z

SIDES = ["left", "right", "total"]


def _clean(rng, n=60, methods=("a", "b", "c")):
    rng = np.random.default_rng(rng)
    tv = rng.normal(15000, 1000, n)
    share = 0.5 + rng.normal(0, 0.01, n)
    r = rng.normal(-0.7, 0.3, n)
    T, M = 2, len(methods)
    vol = np.empty((n, T, M, 1, 3))
    dice = np.empty((n, T, M, 1, 3))
    cons = np.empty((n, T, M, 1, 3))
    for k in range(M):
        for t in range(T):
            tot = tv * (1 + r * t / 100) * (1 + 0.1 * k) * (1 + rng.normal(0, 0.01, n))
            sh = share + rng.normal(0, 0.005, n)
            vol[:, t, k, 0] = np.c_[tot * sh, tot * (1 - sh), tot]
            dice[:, t, k, 0] = 0.88 + rng.normal(0, 0.01, (n, 3))
            cons[:, t, k, 0] = 0.85 + rng.normal(0, 0.015, (n, 3))
    ds = xr.Dataset(
        {"volume_mm3": (("subject", "timepoint", "method", "contrast", "side"), vol),
         "dice": (("subject", "timepoint", "method", "contrast", "side"), dice),
         "consensus_dice": (("subject", "timepoint", "method", "contrast", "side"), cons),
         "pred_empty": (("subject", "timepoint", "method", "contrast", "side"), np.zeros_like(vol)),
         "years_since_baseline": (("subject", "timepoint"), np.tile([0.0, 1.0], (n, 1))),
         "age": (("subject", "timepoint"), np.repeat(rng.normal(45, 10, n)[:, None], 2, 1))},
        coords={"subject": [f"s{i:02d}" for i in range(n)], "timepoint": ["baseline", "m12"],
                "method": list(methods), "contrast": ["T1w"], "side": SIDES})
    return ds


def _set(ds, var, sel, value):
    da = ds[var].copy()
    da.loc[sel] = value
    ds[var] = da


def test_robust_z_hand_case_and_too_few_values():
    x = np.array([1.0, 2, 3, 4, 100])
    med, mad = 3.0, 1.4826 * 1.0
    np.testing.assert_allclose(robust_z(x, min_n=5), (x - med) / mad)
    assert np.isnan(robust_z(x, min_n=6)).all()


def test_each_planted_failure_raises_its_flag():
    ds = _clean(0)
    b0 = {"timepoint": "baseline", "contrast": "T1w"}
    v = ds["volume_mm3"]
    # s00 / a: 40 % too large on both sides (volume disagreement with b, c; volume outlier)
    _set(ds, "volume_mm3", {"subject": "s00", "method": "a", **b0}, v.sel({"subject": "s00", "method": "a", **b0}).values * 1.4)
    # s01 / b: left side missed
    _set(ds, "volume_mm3", {"subject": "s01", "method": "b", "side": "left", **b0}, 0.0)
    _set(ds, "pred_empty", {"subject": "s01", "method": "b", "side": "left", **b0}, 1.0)
    # s02 / c: no mask
    _set(ds, "volume_mm3", {"subject": "s02", "method": "c", **b0}, np.nan)
    # s03 / a: sides swapped (per-side Dice ~0, total fine)
    _set(ds, "dice", {"subject": "s03", "method": "a", "side": "left", **b0}, 0.03)
    _set(ds, "dice", {"subject": "s03", "method": "a", "side": "right", **b0}, 0.04)
    # s04 / b: strongly asymmetric, same total
    tot = float(v.sel({"subject": "s04", "method": "b", "side": "total", **b0}))
    _set(ds, "volume_mm3", {"subject": "s04", "method": "b", "side": "left", **b0}, 0.62 * tot)
    _set(ds, "volume_mm3", {"subject": "s04", "method": "b", "side": "right", **b0}, 0.38 * tot)
    # s05 / c: follow-up 12 % smaller
    sel = {"subject": "s05", "method": "c", "timepoint": "m12", "contrast": "T1w"}
    _set(ds, "volume_mm3", sel, v.sel({**sel, "timepoint": "baseline"}).values * 0.88)
    # s06 / b: Dice 0.3
    _set(ds, "dice", {"subject": "s06", "method": "b", "side": "total", **b0}, 0.3)
    # s07 / a: a misplaced mask, no ground truth: overlaps the other methods' masks poorly
    _set(ds, "dice", {"subject": "s07", "method": "a", **b0}, np.nan)
    _set(ds, "consensus_dice", {"subject": "s07", "method": "a", **b0}, 0.35)
    # s08 / c: sides swapped, no ground truth: per-side Dice with the other methods ~0
    _set(ds, "dice", {"subject": "s08", "method": "c", **b0}, np.nan)
    _set(ds, "consensus_dice", {"subject": "s08", "method": "c", "side": "left", **b0}, 0.02)
    _set(ds, "consensus_dice", {"subject": "s08", "method": "c", "side": "right", **b0}, 0.03)
    f = fit_qc_flags(ds)
    assert list(f.columns) == QC_COLUMNS
    got = set(zip(f.subject, f.timepoint, f.method, f.flag, strict=True))
    for want in [("s00", "baseline", "a", "volume_disagreement"), ("s07", "baseline", "a", "method_disagreement"),
                 ("s08", "baseline", "c", "side_swap"), ("s00", "baseline", "a", "volume_outlier"),
                 ("s01", "baseline", "b", "empty_side"), ("s02", "baseline", "c", "missing_mask"),
                 ("s03", "baseline", "a", "side_swap"), ("s04", "baseline", "b", "asymmetry_outlier"),
                 ("s05", "m12", "c", "implausible_change"), ("s06", "baseline", "b", "low_dice")]:
        assert want in got, want
    assert (f[f.flag.isin(["empty_side", "missing_mask", "side_swap"])].severity == "error").all()
    assert f.severity.iloc[0] == "error"  # errors first
    # the planted scans account for almost every flag
    planted = {("s00", "a"), ("s01", "b"), ("s02", "c"), ("s03", "a"), ("s04", "b"), ("s05", "c"), ("s06", "b"),
               ("s07", "a"), ("s08", "c")}
    # a swap is not also reported as a disagreement, and with ground truth the GT rule decides
    assert not ((f.subject == "s08") & (f.flag == "method_disagreement")).any()
    assert ((f.subject == "s07") & (f.flag == "method_disagreement") & (f.severity == "error")).any()
    stray = [r for r in f.itertuples() if (r.subject, r.method) not in planted]
    assert len(stray) <= 0.02 * ds.sizes["subject"] * 2 * 3


def test_clean_cohort_false_flag_rate_is_low_and_thresholds_configurable():
    ds = _clean(1, n=200)
    f = fit_qc_flags(ds)
    assert len(f) / (200 * 2 * 3) < 0.01  # robust z > 3.5 on Gaussian data: ~0.05 % per flag
    loose = fit_qc_flags(ds, options={"z_warning": 2.0, "z_error": 3.0})
    assert len(loose) > len(f)
    with pytest.raises(StatsError, match="unknown qc option"):
        fit_qc_flags(ds, options={"z_warn": 2})


def test_qc_flags_table_in_run_stats():
    from thaldask.stats import run_stats

    ds = _clean(2)
    _set(ds, "volume_mm3", {"subject": "s02", "method": "c", "timepoint": "baseline", "contrast": "T1w"}, np.nan)
    t = run_stats(ds, {"mixed": False, "trial": {"bootstrap": 0}})
    q = t["qc_flags"]
    assert ((q.subject == "s02") & (q.flag == "missing_mask")).any()
    assert isinstance(q, pd.DataFrame)
