import warnings

import numpy as np
import pandas as pd
import pytest
import statsmodels.formula.api as smf
import xarray as xr

from thaldask.errors import StatsError
from thaldask.stats.longitudinal import (
    annualised_change,
    edss_worsening,
    fit_longitudinal,
    hedges_g,
)
from thaldask.synth import make_subject_table
from thaldask.synth.params import merge_params
from thaldask.testing import make_results

EXACT = {("exact", "T1w"): (0.0, 0.0, 0.0, 0.95)}


@pytest.mark.parametrize(
    "e0, e1, cut, worse",
    [(0, 1.0, 5.5, 0), (0, 1.5, 5.5, 1), (1.0, 2.0, 5.5, 1), (5.5, 6.0, 5.5, 0), (5.5, 6.5, 5.5, 1),
     (5.5, 6.0, 5.0, 1), (6.0, 6.5, 5.5, 1), (3.0, 2.0, 5.5, 0)],
)
def test_edss_worsening_rule_baseline_dependent_steps(e0, e1, cut, worse):
    assert edss_worsening([e0], [e1], cut=cut)[0] == worse


def test_edss_worsening_missing_score_is_nan():
    assert np.isnan(edss_worsening([np.nan, 2.0], [1.0, np.nan])).all()


def test_annualised_change_and_hedges_g_hand_values():
    assert annualised_change(15000.0, 14850.0, 0.5) == pytest.approx(-2.0)
    g, lo, hi = hedges_g([1.0, 2, 3, 4], [0.0, 1, 2, 3])
    sp = np.std([1.0, 2, 3, 4], ddof=1)
    assert g == pytest.approx((1 - 3 / (4 * 8 - 9)) * 1 / sp)
    assert lo < g < hi


def test_fit_longitudinal_logistic_equals_statsmodels_logit():
    ds, _ = make_results(0, n_subjects=200)
    t = fit_longitudinal(ds, mixed=False, as_frame=True)
    lg = t[t.analysis == "worsening_logistic"]
    b = ds.sel(timepoint="baseline")
    f = ds.sel(timepoint="m12")
    for _, r in lg.iterrows():
        v0 = b.volume_mm3.sel({"method": r.method, "contrast": r.contrast, "side": "total"}).values
        v1 = f.volume_mm3.sel({"method": r.method, "contrast": r.contrast, "side": "total"}).values
        df = pd.DataFrame({
            "chg": 100 * (v1 - v0) / v0 / f.years_since_baseline.values,
            "w": edss_worsening(b.edss.values, f.edss.values), "age": b.age.values,
            "sex": b.sex.values.astype(str),
        })
        fit = smf.logit("w ~ chg + age + sex", df).fit(disp=0, method="newton", tol=1e-14)
        assert r.n == 200 and r.n_events == df.w.sum()
        assert r.estimate == pytest.approx(np.exp(fit.params["chg"]), rel=1e-8)
        assert r.se == pytest.approx(fit.bse["chg"], abs=1e-8)
        assert r.p == pytest.approx(fit.pvalues["chg"], abs=1e-8)
        assert r.ci_lower == pytest.approx(np.exp(fit.conf_int().loc["chg", 0]), rel=1e-8)
        from scipy import stats

        p = fit.predict(df)
        u = stats.mannwhitneyu(p[df.w == 1], p[df.w == 0]).statistic
        assert r.auc == pytest.approx(u / ((df.w == 1).sum() * (df.w == 0).sum()), abs=1e-12)


def test_fit_longitudinal_planted_or_and_rate_inside_ci_in_90pct_of_20_seeds():
    hit_or = hit_rate = 0
    for seed in range(20):
        ds, truth = make_results(seed, n_subjects=300, specs=EXACT, or_worsening=0.4, atrophy_rate=-0.8)
        t = fit_longitudinal(ds, mixed=False, as_frame=True)
        r = t[t.analysis == "worsening_logistic"].iloc[0]
        hit_or += r.ci_lower <= 0.4 <= r.ci_upper
        c = t[(t.analysis == "annualised_change") & (t.term == "all")].iloc[0]
        # the mean rate of change of a volume is the planted mean rate (vt1 = vt0 (1 + r y / 100))
        hit_rate += c.ci_lower <= -0.8 <= c.ci_upper
    assert hit_or >= 18
    assert hit_rate >= 18


def test_fit_longitudinal_effect_size_negative_when_worsening_follows_atrophy():
    ds, _ = make_results(3, n_subjects=300, specs=EXACT, or_worsening=0.3)
    t = fit_longitudinal(ds, mixed=False, as_frame=True)
    g = t[t.analysis == "worsening_effect_size"].iloc[0]
    assert g.estimate < 0 and g.ci_upper < 0 and g.p < 0.05


def test_fit_longitudinal_one_timepoint_raises_stats_error():
    ds, _ = make_results(0, n_subjects=20, followup=False)
    with pytest.raises(StatsError, match="2 timepoints"):
        fit_longitudinal(ds, as_frame=True)


@pytest.mark.slow
def test_fit_longitudinal_mixed_random_slope_converges_and_is_reported():
    specs = {("m", "T1w"): (0.0, 0.0, 150.0, 0.9)}
    ds, _ = make_results(4, n_subjects=80, specs=specs, n_followups=2, group_effect=800.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no ConvergenceWarning expected here
        t = fit_longitudinal(ds, mixed=True, as_frame=True)
    m = t[t.analysis == "mixed_volume"]
    assert set(m.term) == {"Intercept", "group[T.MS]", "years", "years:group[T.MS]"}
    assert (m.random_effects == "intercept+slope").all() and m.converged.all()
    assert (m.optimizer == "powell").all()
    yrs = m[m.term == "years"].iloc[0]
    # planted: -0.8 %/year of the baseline volume in both groups (reference group HC)
    b = ds.sel(timepoint="baseline", side="total")
    v0 = b.volume_mm3.sel({"method": "m", "contrast": "T1w"}).values
    truth = -0.008 * v0[b.group.values == "HC"].mean()
    assert yrs.ci_lower <= truth <= yrs.ci_upper
    inter = m[m.term == "years:group[T.MS]"].iloc[0]
    assert inter.ci_lower < 0 < inter.ci_upper or inter.p > 0.001
    assert "(1 + years | subject)" in yrs.formula


def test_fit_longitudinal_two_timepoints_use_random_intercept_only():
    ds, _ = make_results(5, n_subjects=40, specs=EXACT)
    t = fit_longitudinal(ds, mixed=True, as_frame=True)
    m = t[t.analysis == "mixed_volume"]
    assert len(m) and (m.random_effects == "intercept").all()


def _synth_results(seed, n=300):
    tab = make_subject_table(n, n_timepoints=2, n_sites=1, seed=seed, n_templates=1)
    subs = sorted(tab.subject.unique())
    tps = ["baseline", "m12"]
    tab = tab.set_index(["subject", "timepoint"]).reindex(pd.MultiIndex.from_product([subs, tps]))
    S = len(subs)
    vol = tab[["thalamus_left_mm3", "thalamus_right_mm3", "thalamus_total_mm3"]].to_numpy().reshape(S, 2, 1, 1, 3)
    d2 = ("subject", "timepoint")
    return xr.Dataset(
        {"volume_mm3": (("subject", "timepoint", "method", "contrast", "side"), vol)}
        | {c: (d2, tab[c].to_numpy().reshape(S, 2)) for c in
           ("site", "group", "sex", "age", "edss", "sdmt", "years_since_baseline", "icv_mm3")},
        coords={"subject": subs, "timepoint": tps, "method": ["planted"], "contrast": ["T1w"],
                "side": ["left", "right", "total"]},
    )


def test_fit_longitudinal_synth_planted_worsening_or_and_control_rate_in_ci_over_20_seeds():

    at, cl = merge_params(None)["atrophy"], merge_params(None)["clinical"]
    ssd = at["severity_log_sd"]
    rate_sd = abs(at["patient_rate"]) * np.sqrt(np.exp(ssd**2) - 1) + at["rate_noise_sd"]
    # logit P(worse) = a + b (rate - mean) / rate_sd, rate in fraction/year -> per 1 %/year
    or_truth = np.exp(cl["worsening_logit_per_rate_sd"] / (100 * rate_sd))
    hc_truth = 100 * at["control_rate"]
    hit_or = hit_hc = 0
    for seed in range(20):
        ds = _synth_results(seed)
        t = fit_longitudinal(ds, mixed=False, groups=["MS", "NMOSD", "MOGAD"], as_frame=True)
        r = t[t.analysis == "worsening_logistic"].iloc[0]
        hit_or += r.ci_lower <= or_truth <= r.ci_upper
        c = t[(t.analysis == "annualised_change") & (t.term == "HC")].iloc[0]
        hit_hc += c.ci_lower <= hc_truth <= c.ci_upper
    print(f"synth coverage: OR {hit_or}/20, control rate {hit_hc}/20")
    assert hit_or >= 18, (hit_or, or_truth)
    assert hit_hc >= 18, hit_hc
