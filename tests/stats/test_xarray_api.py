"""The public fit_* functions return xarray Datasets by default (issue 6); ``as_frame=True``
gives the DataFrame, and both carry the same values."""

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from thaldask.schema import TABLE_KEYS
from thaldask.stats import (
    fit_agreement,
    fit_clinical,
    fit_longitudinal,
    fit_method_comparison,
)
from thaldask.testing import make_results


def _isnan(v) -> bool:
    return v is None or (isinstance(v, float | np.floating) and bool(np.isnan(v)))


def _same(a, b) -> bool:
    """Equal values, NaN == NaN."""
    if _isnan(a) or _isnan(b):
        return _isnan(a) and _isnan(b)
    return a == b


def _check(name, x, t, columns):
    """``x`` is the Dataset of table ``t``: dims are the table's key columns, every row's
    ``columns`` read back at its keys, NaN kept, and cells without a row are NaN."""
    keys = [k for k in TABLE_KEYS[name] if k in t]
    assert isinstance(x, xr.Dataset)
    assert set(x.dims) == set(keys)
    for k in keys:
        assert set(x[k].values.tolist()) == set(t[k].tolist())
    assert {"n", *columns} <= set(x.data_vars)
    assert set(x.data_vars) == set(t.columns) - set(keys)
    n_nan = 0
    for _, row in t.iterrows():
        at = {k: row[k] for k in keys}
        for c in ("n", *columns):
            v = x[c].sel(at).item()
            assert _same(v, row[c]), (name, at, c, v, row[c])
            n_nan += _isnan(row[c])
    # cells of the cube that the table has no row for hold NaN
    filled = int(np.isfinite(x["n"].values.astype(float)).sum())
    assert filled == len(t)
    return n_nan


def test_fit_agreement_default_is_dataset_over_method_contrast_side():
    ds, _ = make_results(0, n_subjects=40)
    t = fit_agreement(ds, side="all", as_frame=True)
    x = fit_agreement(ds, side="all")
    assert isinstance(t, pd.DataFrame)
    _check("agreement", x, t, ["dice_mean", "dice_mean_ci_lower", "bias_mm3", "loa_lower_mm3",
                               "icc_a1", "ccc", "prop_bias_p", "model"])
    assert set(x.dims) == {"method", "contrast", "side"}
    assert x["side"].values.tolist() and set(x["side"].values) == {"left", "right", "total"}
    assert x.attrs["table"] == "agreement" and x.attrs["alpha"] == 0.05
    has = np.isfinite(x["n"].values.astype(float))
    assert (x["model"].values[has] == t["model"].iloc[0]).all()
    assert all(_isnan(v) for v in x["model"].values[~has])  # no row: NaN, not a formula


def test_fit_agreement_nan_kept_for_method_without_dice():
    ds, _ = make_results(1, n_subjects=30, followup=False)
    dice = ds["dice"].copy()
    dice.loc[{"method": ds["method"].values[0]}] = np.nan
    ds = ds.assign(dice=dice)
    t = fit_agreement(ds, as_frame=True)
    x = fit_agreement(ds)
    assert t["dice_mean"].isna().any() and t["dice_mean"].notna().any()
    assert _check("agreement", x, t, ["dice_mean", "bias_mm3"]) > 0
    m0 = str(ds["method"].values[0])
    assert np.isnan(x["dice_mean"].sel({"method": m0, "side": "total"})).all()


def test_fit_method_comparison_default_is_dataset_over_test_keys():
    ds, _ = make_results(0, n_subjects=40, followup=False)
    t = fit_method_comparison(ds, metrics=("dice", "abs_volume_error_mm3"), as_frame=True)
    x = fit_method_comparison(ds, metrics=("dice", "abs_volume_error_mm3"))
    assert isinstance(t, pd.DataFrame)
    n_nan = _check("method_comparison", x, t, ["statistic", "p", "p_holm", "effect_size",
                                               "median_diff", "model"])
    assert set(x.dims) == {"metric", "side", "test", "method_a", "contrast_a", "method_b", "contrast_b"}
    assert n_nan > 0  # the Friedman rows' p_holm / medians stay NaN
    fr = x["p"].sel(metric="dice", side="total", test="friedman", method_a="", contrast_a="",
                    method_b="", contrast_b="").item()
    assert fr == t[(t.metric == "dice") & (t.test == "friedman")]["p"].iloc[0]
    assert x.attrs["table"] == "method_comparison"


def test_fit_clinical_default_is_dataset_over_outcome_method_contrast_side():
    ds, _ = make_results(0, n_subjects=80, followup=False)
    t = fit_clinical(ds, as_frame=True)
    x = fit_clinical(ds)
    assert isinstance(t, pd.DataFrame)
    _check("clinical_cross", x, t, ["beta_std", "beta_std_ci_lower", "beta_std_ci_upper", "se", "p",
                                    "p_fdr", "partial_r2", "formula"])
    assert set(x.dims) == {"outcome", "method", "contrast", "side"}
    assert set(x["outcome"].values) == {"edss", "sdmt"}
    assert x.attrs["table"] == "clinical_cross"
    assert x.attrs["head_size"] == "residual" and x.attrs["fdr_method"] == "fdr_bh"


def test_fit_clinical_mixed_nan_r2_kept():
    ds, _ = make_results(2, n_subjects=60)
    t = fit_clinical(ds, outcomes=["sdmt"], timepoint="all", as_frame=True)
    x = fit_clinical(ds, outcomes=["sdmt"], timepoint="all")
    assert t["partial_r2"].isna().all()
    assert _check("clinical_cross", x, t, ["beta_std", "partial_r2", "r2"]) >= 2 * len(t)
    assert x.attrs["timepoint"] == "all"


def test_fit_longitudinal_default_is_dataset_over_analysis_keys():
    ds, _ = make_results(0, n_subjects=120)
    t = fit_longitudinal(ds, mixed=False, as_frame=True)
    x = fit_longitudinal(ds, mixed=False)
    assert isinstance(t, pd.DataFrame)
    n_nan = _check("longitudinal", x, t, ["estimate", "ci_lower", "ci_upper", "p", "p_fdr", "n_events",
                                          "auc", "formula"])
    assert set(x.dims) == {"analysis", "method", "contrast", "side", "term"}
    assert n_nan > 0  # e.g. auc of the annualised-change rows
    assert x.attrs["table"] == "longitudinal" and x.attrs["edss_cut"] == 5.5


def test_as_frame_is_keyword_only():
    ds, _ = make_results(0, n_subjects=20, followup=False)
    with pytest.raises(TypeError):
        fit_agreement(ds, None, 0.05, 0.05, True)
