"""Agreement statistics: hand cases, pingouin/statsmodels oracles, planted truths."""

import numpy as np
import pytest
import statsmodels.api as sm
from scipy import stats

from thaldask.stats.agreement import bland_altman, fit_agreement, icc_a1, lin_ccc
from thaldask.testing import make_results

SEEDS = range(20)


def test_bland_altman_hand_case_matches_definitions():
    x = np.array([11.0, 12, 13, 15, np.nan])
    y = np.array([10.0, 10, 11, 12, 9])
    r = bland_altman(x, y)
    d = np.array([1.0, 2, 2, 3])
    assert r["n"] == 4
    assert r["bias"] == pytest.approx(2.0)
    assert r["sd"] == pytest.approx(d.std(ddof=1))
    assert r["loa_upper"] == pytest.approx(2 + stats.norm.ppf(0.975) * d.std(ddof=1))
    se = d.std(ddof=1) * np.sqrt(1 / 4 + stats.norm.ppf(0.975) ** 2 / 6)
    assert r["loa_upper_ci_upper"] - r["loa_upper"] == pytest.approx(stats.t.ppf(0.975, 3) * se)


def test_bland_altman_proportional_bias_slope_equals_statsmodels_ols():
    rng = np.random.default_rng(0)
    g = rng.normal(15000, 1500, 60)
    x = g * 1.1 + rng.normal(0, 200, 60)
    r = bland_altman(x, g)
    fit = sm.OLS(x - g, sm.add_constant((x + g) / 2)).fit()
    assert r["prop_slope"] == pytest.approx(fit.params[1], abs=1e-10)
    assert r["prop_p"] == pytest.approx(fit.pvalues[1], abs=1e-12)
    assert r["prop_slope_ci_lower"] == pytest.approx(fit.conf_int()[1, 0], abs=1e-10)
    assert r["prop_bias"] and np.isfinite(r["reg_loa_upper_at_mean"])
    assert r["reg_loa_lower_at_mean"] < r["reg_loa_upper_at_mean"]


def test_icc_and_ccc_perfect_agreement_are_one():
    x = np.arange(10.0)
    assert icc_a1(x, x + 1e-12 * np.arange(10))[0] == pytest.approx(1.0)
    assert lin_ccc(x, x)[0] == pytest.approx(1.0)


def test_lin_ccc_equals_its_definition_and_drops_with_bias():
    rng = np.random.default_rng(1)
    x = rng.normal(10, 2, 50)
    y = x + rng.normal(0, 0.5, 50)
    c, lo, hi = lin_ccc(x, y)
    ref = 2 * np.cov(x, y, ddof=0)[0, 1] / (x.var() + y.var() + (x.mean() - y.mean()) ** 2)
    assert c == pytest.approx(ref, abs=1e-12)
    assert lo < c < hi
    assert lin_ccc(x, y + 3)[0] < c


@pytest.mark.requires_pingouin
def test_icc_a1_equals_pingouin_icc_a1():
    pg = pytest.importorskip("pingouin")
    import pandas as pd

    rng = np.random.default_rng(2)
    t = rng.normal(15000, 1500, 40)
    x, y = t + 300 + rng.normal(0, 300, 40), t + rng.normal(0, 300, 40)
    icc, lo, hi = icc_a1(x, y)
    long = pd.DataFrame({"s": np.tile(np.arange(40), 2), "r": np.repeat(["m", "g"], 40), "v": np.r_[x, y]})
    ref = pg.intraclass_corr(long, targets="s", raters="r", ratings="v").set_index("Type").loc["ICC(A,1)"]
    assert icc == pytest.approx(ref["ICC"], abs=1e-8)
    # pingouin rounds its CI to two decimals
    assert lo == pytest.approx(ref["CI95"][0], abs=0.006)
    assert hi == pytest.approx(ref["CI95"][1], abs=0.006)


def test_fit_agreement_columns_ci_follow_estimates_and_formula_n_present():
    ds, _ = make_results(0, n_subjects=40)
    t = fit_agreement(ds, side="all", as_frame=True)
    cols = list(t.columns)
    for est in ("dice_mean", "bias_mm3", "loa_lower_mm3", "loa_upper_mm3", "icc_a1", "ccc", "pearson_r",
                "prop_bias_slope"):
        i = cols.index(est)
        assert cols[i + 1 : i + 3] == [f"{est}_ci_lower", f"{est}_ci_upper"]
    for c in ("n", "prop_bias_p", "model", "dice_sd", "dice_median", "dice_q1", "dice_q3"):
        assert c in cols
    assert set(t.side) == {"left", "right", "total"}
    assert (t.n == 40).all()


def test_fit_agreement_uses_earliest_gt_scan_and_skips_subjects_without_gt():
    ds, _ = make_results(1, n_subjects=50, n_gt=30)
    t = fit_agreement(ds, as_frame=True)
    assert (t.n == 30).all()
    # ground truth only at follow-up for one subject: that scan is used
    gt = ds["gt_volume_mm3"].values.copy()
    gt[35, 1, :] = gt[0, 0, :]
    ds2 = ds.assign(gt_volume_mm3=(ds["gt_volume_mm3"].dims, gt))
    assert (fit_agreement(ds2, as_frame=True).n == 31).all()


def test_fit_agreement_planted_bias_loa_ccc_inside_ci_in_90pct_of_20_seeds():
    sd_m, sd_g, bias = 300.0, 300.0, 700.0
    specs = {("m", "T1w"): (bias, 0.0, sd_m, 0.9)}
    hits = {"bias": 0, "loa_lower": 0, "loa_upper": 0, "ccc": 0}
    z = stats.norm.ppf(0.975)
    sd_d = np.hypot(sd_m, sd_g)
    for seed in SEEDS:
        ds, _ = make_results(seed, n_subjects=120, specs=specs, gt_noise=sd_g, followup=False)
        r = fit_agreement(ds, as_frame=True).iloc[0]
        hits["bias"] += r.bias_mm3_ci_lower <= bias <= r.bias_mm3_ci_upper
        hits["loa_lower"] += r.loa_lower_mm3_ci_lower <= bias - z * sd_d <= r.loa_lower_mm3_ci_upper
        hits["loa_upper"] += r.loa_upper_mm3_ci_lower <= bias + z * sd_d <= r.loa_upper_mm3_ci_upper
        # population CCC of gt = vt + e_g and m = vt + bias + e_m; var(vt) from the model
        s2 = 1200.0**2 + 0.006**2 * 1.2e5**2 + 800.0**2 * 0.7 * 0.3
        ccc = 2 * s2 / (2 * s2 + sd_m**2 + sd_g**2 + bias**2)
        hits["ccc"] += r.ccc_ci_lower <= ccc <= r.ccc_ci_upper
    for k, h in hits.items():
        assert h >= 18, (k, h)


def test_fit_agreement_proportional_bias_found_where_planted_absent_where_not():
    specs = {("planted", "T1w"): (0.0, 0.15, 300.0, 0.9), ("none", "T1w"): (500.0, 0.0, 300.0, 0.9)}
    found = {"planted": 0, "none": 0}
    cover = 0
    for seed in SEEDS:
        ds, truth = make_results(seed, n_subjects=100, specs=specs, followup=False)
        t = fit_agreement(ds, as_frame=True).set_index("method")
        for m in found:
            found[m] += bool(t.loc[m, "prop_bias"])
        s = truth["prop_slope"][("planted", "T1w")]
        cover += t.loc["planted", "prop_bias_slope_ci_lower"] <= s <= t.loc["planted", "prop_bias_slope_ci_upper"]
    assert found["planted"] == 20
    assert found["none"] <= 3
    assert cover >= 18


def test_bland_altman_null_proportional_bias_false_positive_rate_about_5pct():
    rng = np.random.default_rng(7)
    n_rep = 1200
    t = rng.normal(15000, 1500, (n_rep, 50))
    x = t + 200 + rng.normal(0, 300, t.shape)
    y = t + rng.normal(0, 300, t.shape)
    rate = np.mean([bland_altman(x[i], y[i])["prop_p"] < 0.05 for i in range(n_rep)])
    assert 0.032 <= rate <= 0.068  # about 2.9 binomial SEs around 0.05
