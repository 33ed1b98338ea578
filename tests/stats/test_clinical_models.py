import numpy as np
import pandas as pd
import pytest
import statsmodels.formula.api as smf

from thaldask.errors import StatsError
from thaldask.stats.clinical import adjust_head_size, fit_clinical
from thaldask.testing import make_results

TOL = 1e-8


def _baseline_frame(ds, method, contrast):
    b = ds.sel(timepoint="baseline", side="total")
    v = b["volume_mm3"].sel({"method": method, "contrast": contrast}).values
    return pd.DataFrame({
        "v": v, "icv": b.icv_mm3.values, "age": b.age.values, "sex": b.sex.values.astype(str),
        "edss": b.edss.values, "sdmt": b.sdmt.values, "group": b.group.values.astype(str),
    })


def test_fit_clinical_equals_statsmodels_formula_on_same_rows():
    ds, _ = make_results(0, n_subjects=120, followup=False)
    edss = ds["edss"].values.copy()
    edss[:7] = np.nan
    ds = ds.assign(edss=(ds["edss"].dims, edss))
    t = fit_clinical(ds, extra_covariates=["group"], as_frame=True)
    assert set(t.outcome) == {"edss", "sdmt"}
    for _, r in t.iterrows():
        df = _baseline_frame(ds, r.method, r.contrast).dropna(subset=[r.outcome])
        res = smf.ols("v ~ icv", df).fit()
        df["vadj"] = df.v - res.params["icv"] * (df.icv - df.icv.mean())
        z = lambda x: (x - x.mean()) / x.std(ddof=1)  # noqa: E731
        df["zy"], df["zv"] = z(df[r.outcome]), z(df.vadj)
        full = smf.ols("zy ~ zv + age + sex + group", df).fit()
        red = smf.ols("zy ~ age + sex + group", df).fit()
        assert r.n == full.nobs == (113 if r.outcome == "edss" else 120)
        assert r.beta_std == pytest.approx(full.params["zv"], abs=TOL)
        assert r.se == pytest.approx(full.bse["zv"], abs=TOL)
        assert r.p == pytest.approx(full.pvalues["zv"], abs=TOL)
        assert r.beta_std_ci_lower == pytest.approx(full.conf_int().loc["zv", 0], abs=TOL)
        assert r.aic == pytest.approx(full.aic, rel=TOL)
        assert r.aic_covariates == pytest.approx(red.aic, rel=TOL)
        assert r.delta_r2 == pytest.approx(full.rsquared - red.rsquared, abs=TOL)
        tv = full.tvalues["zv"]
        assert r.partial_r2 == pytest.approx(tv**2 / (tv**2 + full.df_resid), abs=TOL)
        assert "z(edss)" in r.formula or "z(sdmt)" in r.formula
        assert "group[T.MS]" in r.formula


def test_fit_clinical_methods_share_rows_when_one_method_misses_scans():
    ds, _ = make_results(1, n_subjects=60, followup=False)
    vol = ds["volume_mm3"].values.copy()
    vol[:10, :, 0] = np.nan
    ds = ds.assign(volume_mm3=(ds["volume_mm3"].dims, vol))
    t = fit_clinical(ds, as_frame=True)
    assert (t.n == 50).all()


def test_fit_clinical_planted_standardised_beta_inside_ci_in_90pct_of_20_seeds():
    specs = {("exact", "T1w"): (0.0, 0.0, 0.0, 0.9)}
    hits = 0
    for seed in range(20):
        ds, _ = make_results(seed, n_subjects=300, specs=specs, beta_sdmt=0.3, group_effect=0.0,
                              followup=False)
        r = fit_clinical(ds, outcomes=["sdmt"], as_frame=True).iloc[0]
        hits += r.beta_std_ci_lower <= 0.3 <= r.beta_std_ci_upper
    assert hits >= 18


def test_fit_clinical_null_false_positive_rate_about_5pct():
    rejections, total = 0, 0
    rng = np.random.default_rng(11)
    for seed in range(3):
        ds, _ = make_results(seed, n_subjects=150, beta_sdmt=0.0, beta_edss=0.0, followup=False,
                              specs={("m", "T1w"): (0.0, 0.0, 1.0, 0.9)})
        K = 400  # independent null "methods": volumes unrelated to the outcomes
        vol = rng.normal(15000, 1500, (150, 1, K, 1, 3))
        null = ds.drop_vars("volume_mm3").drop_dims("method").assign_coords(
            method=[f"m{k}" for k in range(K)])
        null["volume_mm3"] = (("subject", "timepoint", "method", "contrast", "side"), vol)
        t = fit_clinical(null, as_frame=True)
        rejections += int((t.p < 0.05).sum())
        total += len(t)
    assert total == 2400
    assert 0.035 <= rejections / total <= 0.065


def test_fit_clinical_fdr_over_whole_family_is_nan_safe():
    ds, _ = make_results(2, n_subjects=80, followup=False)
    vol = ds["volume_mm3"].values.copy()
    vol[:, :, 0, 0, :] = vol[0, 0, 0, 0, :]  # constant volume: that model cannot be fitted
    ds = ds.assign(volume_mm3=(ds["volume_mm3"].dims, vol))
    t = fit_clinical(ds, as_frame=True)
    bad = t.method == str(ds.method.values[0])
    assert t.loc[bad, "p_fdr"].isna().all()
    assert t.loc[~bad, "p_fdr"].notna().all()


def test_adjust_head_size_ratio_and_residual_remove_icv_dependence():
    rng = np.random.default_rng(4)
    icv = rng.normal(1.5e6, 1e5, 200)
    v = 0.01 * icv + rng.normal(0, 300, 200)
    res = adjust_head_size(v[None], icv)[0]
    assert abs(np.corrcoef(res, icv)[0, 1]) < 1e-10
    assert adjust_head_size(v, icv, method="ratio") == pytest.approx(v / icv)
    with pytest.raises(StatsError, match="allowed"):
        adjust_head_size(v, icv, method="zscore")


def test_fit_clinical_ratio_option_in_formula():
    ds, _ = make_results(3, n_subjects=50, followup=False)
    t = fit_clinical(ds, head_size="ratio", as_frame=True)
    assert t.formula.str.contains("volume_mm3 / icv_mm3").all()


@pytest.mark.slow
def test_fit_clinical_all_timepoints_equals_statsmodels_mixedlm():
    import statsmodels.api as sm

    specs = {("m", "T1w"): (0.0, 0.0, 300.0, 0.9)}
    ds, _ = make_results(5, n_subjects=60, specs=specs)
    r = fit_clinical(ds, outcomes=["sdmt"], timepoint="all", as_frame=True).iloc[0]
    s = ds.sel(side="total").sel({"method": "m", "contrast": "T1w"})
    df = pd.DataFrame({
        "v": s.volume_mm3.values.ravel(), "icv": s.icv_mm3.values.ravel(), "age": s.age.values.ravel(),
        "sex": s.sex.values.ravel().astype(str), "y": s.sdmt.values.ravel(),
        "subject": np.repeat(ds.subject.values, 2),
    })
    b = np.polyfit(df.icv, df.v, 1)[0]
    vadj = df.v - b * (df.icv - df.icv.mean())
    z = lambda x: (x - x.mean()) / x.std(ddof=1)  # noqa: E731
    X = np.c_[np.ones(len(df)), z(vadj), df.age, (df.sex == "M").astype(float)]
    fit = sm.MixedLM(z(df.y).values, X, groups=df.subject).fit(reml=False, method=["lbfgs", "powell"])
    assert r.n == 120 and r.n_subjects == 60 and r.converged
    assert r.beta_std == pytest.approx(fit.fe_params[1], abs=1e-6)
    assert r.se == pytest.approx(fit.bse_fe[1], abs=1e-6)
    assert "(1 | subject)" in r.formula


def test_fit_clinical_bootstrap_ci_close_to_analytic_ci():
    ds, _ = make_results(6, n_subjects=200, followup=False)
    t = fit_clinical(ds, outcomes=["sdmt"], bootstrap=400, rng=1, as_frame=True)
    w_a = t.beta_std_ci_upper - t.beta_std_ci_lower
    w_b = t.beta_std_boot_ci_upper - t.beta_std_boot_ci_lower
    assert ((w_b / w_a) > 0.7).all() and ((w_b / w_a) < 1.3).all()
    assert (t.beta_std_boot_ci_lower < t.beta_std).all() and (t.beta_std < t.beta_std_boot_ci_upper).all()


def test_fit_clinical_unknown_timepoint_raises_stats_error():
    ds, _ = make_results(7, n_subjects=20, followup=False)
    with pytest.raises(StatsError, match="timepoint 'm36' not in the results dataset"):
        fit_clinical(ds, timepoint="m36", as_frame=True)
