"""Test-retest reliability, atrophy recovery and trial sample sizes: hand cases, pingouin and
statsmodels oracles, planted truths; scan-rescan repeats never enter visit-based analyses."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from thaldask.errors import ClinicalTableError
from thaldask.stats import run_stats
from thaldask.stats._select import repeat_of, visits_only
from thaldask.stats.kernels import n_per_arm_batched, retest_batched
from thaldask.stats.longitudinal import fit_longitudinal
from thaldask.stats.reliability import fit_reliability
from thaldask.stats.trial import fit_atrophy_recovery, fit_trial_design

SIDES = ["left", "right", "total"]


def _cohort(rng, *, n=160, methods=None, rate_p=-0.71, rate_c=-0.28, sd_rate=0.4, rescan=True,
            rescan_tp="baseline", column=True, years=2.0):
    """A results dataset with planted truths: true total volume v (left/right halves), true
    annualised change r (% / year; patients rate_p, controls rate_c), a follow-up after
    ``years``; each method measures ``gain * true change`` and adds a scan error of SD
    ``err`` % of volume; ground truth is exact. A same-day rescan of ``rescan_tp``."""
    rng = np.random.default_rng(rng)
    methods = methods or {"a": (0.5, 1.0), "b": (1.5, 0.5)}  # err %, gain
    group = np.where(np.arange(n) < n // 4, "HC", "MS")
    r = np.where(group == "HC", rate_c, rate_p) + rng.normal(0, sd_rate, n)
    v0 = rng.normal(15000, 1200, n)
    v1 = v0 * (1 + r * years / 100)
    tps = ["baseline", "m24", rescan_tp + "-rescan"] if rescan else ["baseline", "m24"]
    T = len(tps)
    vol = np.full((n, T, len(methods), 1, 3), np.nan)
    gt = np.full((n, T, 3), np.nan)
    for k, (_m, (err, gain)) in enumerate(methods.items()):
        m1 = v0 * (1 + gain * r * years / 100)
        true = [v0, m1] + ([v0 if rescan_tp == "baseline" else m1] if rescan else [])
        for t, tv in enumerate(true):
            tot = tv * (1 + rng.normal(0, err / 100, n))
            vol[:, t, k, 0] = np.c_[tot / 2, tot / 2, tot]
    for t, tv in enumerate([v0, v1] + ([v0 if rescan_tp == "baseline" else v1] if rescan else [])):
        gt[:, t] = np.c_[tv / 2, tv / 2, tv]
    yrs = np.tile([0.0, years] + ([0.0 if rescan_tp == "baseline" else years] if rescan else []), (n, 1))
    ds = xr.Dataset(
        {"volume_mm3": (("subject", "timepoint", "method", "contrast", "side"), vol),
         "gt_volume_mm3": (("subject", "timepoint", "side"), gt),
         "years_since_baseline": (("subject", "timepoint"), yrs),
         "group": (("subject", "timepoint"), np.repeat(group[:, None], T, 1)),
         "age": (("subject", "timepoint"), np.repeat(rng.normal(45, 10, n)[:, None], T, 1) + yrs),
         "sex": (("subject", "timepoint"), np.repeat(np.where(rng.random(n) < 0.6, "F", "M")[:, None], T, 1))},
        coords={"subject": [f"s{i:03d}" for i in range(n)], "timepoint": tps,
                "method": list(methods), "contrast": ["T1w"], "side": SIDES},
    )
    if rescan and column:
        ds["repeat_of"] = (("subject", "timepoint"),
                           np.tile(np.array(["", "", rescan_tp], dtype=object), (n, 1)).astype(str))
    return ds, {"r": r, "group": group, "v0": v0}


# ---------------------------------------------------------------- kernels
def test_test_retest_hand_case_wsd_sdc_rc():
    r = retest_batched([10.0, 20, 30, 40], [11.0, 19, 31, 41])
    d = np.array([1.0, -1, 1, 1])
    assert r["wsd"] == pytest.approx(np.sqrt((d**2).sum() / 8))
    assert r["rc"] == pytest.approx(1.959964 * d.std(ddof=1), rel=1e-6)
    assert r["sdc"] == pytest.approx(1.959964 * np.sqrt(2) * r["sem"], rel=1e-6)
    m = (np.array([10.0, 20, 30, 40]) + [11.0, 19, 31, 41]) / 2
    assert r["wcv_pct"] == pytest.approx(100 * np.sqrt(np.mean((np.abs(d) / np.sqrt(2) / m) ** 2)))
    assert np.isnan(retest_batched([1.0, 2], [1.0, 2])["icc"])  # < 3 pairs


@pytest.mark.requires_pingouin
def test_retest_icc_equals_pingouin_and_batches_equal_slices():
    pg = pytest.importorskip("pingouin")
    rng = np.random.default_rng(3)
    t = rng.normal(15000, 1200, (3, 40))
    x0 = t + rng.normal(0, 300, t.shape)
    x1 = t + 150 + rng.normal(0, 300, t.shape)
    x1[1, :5] = np.nan
    r = retest_batched(x0, x1)
    for b in range(3):
        ok = np.isfinite(x1[b])
        one = retest_batched(x0[b, ok], x1[b, ok])
        for k in ("icc", "icc_ci_lower", "sem", "wcv_pct", "rc"):
            assert r[k][b] == pytest.approx(float(one[k]), rel=1e-10)
        long = pd.DataFrame({"s": np.tile(np.arange(ok.sum()), 2), "r": np.repeat(["scan1", "scan2"], ok.sum()),
                             "v": np.r_[x0[b, ok], x1[b, ok]]})
        ref = pg.intraclass_corr(long, targets="s", raters="r", ratings="v").set_index("Type").loc["ICC(A,1)"]
        assert r["icc"][b] == pytest.approx(ref["ICC"], abs=1e-8)
        assert r["icc_ci_lower"][b] == pytest.approx(ref["CI95"][0], abs=0.006)
        assert r["icc_ci_upper"][b] == pytest.approx(ref["CI95"][1], abs=0.006)


@pytest.mark.parametrize("es", [0.2, 0.43, 0.8, 1.5])
@pytest.mark.parametrize("power", [0.8, 0.9])
def test_n_per_arm_matches_statsmodels_ttest_and_normal_power(es, power):
    from statsmodels.stats.power import NormalIndPower, TTestIndPower

    n = float(n_per_arm_batched(es, 1.0, power=power))
    assert n == pytest.approx(TTestIndPower().solve_power(effect_size=es, alpha=0.05, power=power), abs=0.1)
    # the t-test needs a little more than the normal approximation, never less
    assert n >= NormalIndPower().solve_power(effect_size=es, alpha=0.05, power=power)
    assert np.isnan(n_per_arm_batched(0.0, 1.0)) and np.isnan(n_per_arm_batched(1.0, 0.0))


def test_n_per_arm_azevedo_reference_about_100_per_arm():
    """MS -0.71 %/y vs controls -0.28 %/y (Azevedo 2018): with an SD of individual
    annualised change of ~1.1 %/y over 24 months, ~100 patients per arm give 80 % power
    to slow MS to the control rate."""
    n = float(n_per_arm_batched(0.71 - 0.28, 1.08, power=0.8))
    assert 90 < n < 110


# ---------------------------------------------------------------- repeats
def test_repeat_rule_by_column_and_by_name_and_visits_only_drops_them():
    ds, _ = _cohort(0, n=10)
    by_col = repeat_of(ds)
    assert (by_col[:, 2] == "baseline").all() and (by_col[:, :2] == "").all()
    named = ds.drop_vars("repeat_of")
    assert (repeat_of(named) == by_col).all()
    assert list(visits_only(ds)["timepoint"].values) == ["baseline", "m24"]
    # a repeat that is not one for every subject: its values are masked, not its timepoint
    part = ds.copy()
    rep = part["repeat_of"].values.copy()
    rep[:5, 2] = ""
    part["repeat_of"] = (("subject", "timepoint"), rep)
    v = visits_only(part)
    assert v.sizes["timepoint"] == 3
    assert np.isnan(v["volume_mm3"].values[5:, 2]).all() and np.isfinite(v["volume_mm3"].values[:5, 2]).all()
    assert np.isnan(v["years_since_baseline"].values[5:, 2]).all()


def test_followup_repeat_is_never_a_followup_longitudinal_unchanged():
    """A rescan of the follow-up has years_since_baseline > 0: without the repeat rule it
    would become the follow-up. Longitudinal results equal those without the repeat."""
    with_rep, _ = _cohort(1, n=60, rescan_tp="m24")
    without = with_rep.isel(timepoint=[0, 1]).drop_vars("repeat_of")
    a = fit_longitudinal(visits_only(with_rep), mixed=False, as_frame=True)
    b = fit_longitudinal(without, mixed=False, as_frame=True)
    pd.testing.assert_frame_equal(a, b)
    ta = run_stats(with_rep, {"mixed": False, "trial": {"bootstrap": 0}})
    tb = run_stats(without, {"mixed": False, "trial": {"bootstrap": 0}})
    for name in ("longitudinal", "agreement", "atrophy_recovery", "clinical_cross"):
        pd.testing.assert_frame_equal(ta[name], tb[name], check_dtype=False, obj=name)
    assert "icc" in ta["reliability"] and "note" in tb["reliability"]
    # the repeats' only other use: the measurement error of the trial-duration projection
    assert np.isfinite(ta["trial_design"]["measurement_sd_pct"]).all()
    assert np.isnan(tb["trial_design"]["measurement_sd_pct"]).all()
    cols = ["effect", "years", "power", "patient_change_mean", "patient_change_sd", "n_patients"]
    pd.testing.assert_frame_equal(ta["trial_design"][cols], tb["trial_design"][cols], check_dtype=False)


def test_clinical_repeat_of_must_name_a_visit_of_the_subject(tmp_path):
    from thaldask.cohort.clinical import validate_clinical

    p = tmp_path / "clinical.csv"
    p.write_text("subject,timepoint,repeat_of\ns1,baseline,\ns1,baseline-rescan,baseline\n"
                 "s2,baseline,baseline\ns2,again,m12\n")
    with pytest.raises(ClinicalTableError) as exc:
        validate_clinical(p)
    probs = exc.value.problems
    assert len(probs) == 2
    assert "row 4" in probs[0] and "own timepoint" in probs[0]
    assert "row 5" in probs[1] and "'m12'" in probs[1]


# ---------------------------------------------------------------- planted effects
def test_reliability_recovers_planted_scan_error():
    ds, _ = _cohort(2, n=300)
    rel = fit_reliability(ds, side="all", as_frame=True).set_index(["method", "side"])
    for m, err in (("a", 0.5), ("b", 1.5)):
        row = rel.loc[(m, "total")]
        assert row["n"] == 300
        # scan error err % of volume: wCV ~ err, SEM ~ err % of the mean volume
        assert row["wcv_pct"] == pytest.approx(err, rel=0.12)
        assert row["sem_mm3"] / row["mean_mm3"] * 100 == pytest.approx(err, rel=0.12)
        icc_true = 1200**2 / (1200**2 + (err / 100 * 15000) ** 2)
        assert row["icc_ci_lower"] <= icc_true <= row["icc_ci_upper"]
        assert row["mean_diff_ci_lower"] <= 0 <= row["mean_diff_ci_upper"]
    assert rel.loc[("a", "total"), "sdc_pct"] < rel.loc[("b", "total"), "sdc_pct"]


def test_atrophy_recovery_recovers_planted_gain():
    ds, truth = _cohort(4, n=400, methods={"half": (0.2, 0.5), "full": (0.2, 1.0)})
    rec = fit_atrophy_recovery(ds, as_frame=True).set_index("method")
    for m, gain in (("half", 0.5), ("full", 1.0)):
        row = rec.loc[m]
        assert row["n"] == 400 and row["reference"] == "gt"
        assert row["slope_ci_lower"] <= gain <= row["slope_ci_upper"]
        assert row["fraction_recovered_ci_lower"] <= gain <= row["fraction_recovered_ci_upper"]
        true_mean = np.mean(truth["r"] * gain)
        assert row["measured_change_mean"] == pytest.approx(true_mean, abs=0.05)
    assert rec.loc["full", "bias_ci_lower"] <= 0 <= rec.loc["full", "bias_ci_upper"]
    # half the (negative) change measured: measured - true = -0.5 r > 0
    assert rec.loc["half", "bias_ci_lower"] > 0
    assert rec.loc["half", "bias_pct_per_year"] == pytest.approx(-0.5 * truth["r"].mean(), abs=0.05)


def test_trial_design_from_planted_change_matches_formula_and_statsmodels():
    from statsmodels.stats.power import TTestIndPower

    ds, truth = _cohort(5, n=400, methods={"a": (0.5, 1.0)}, rescan=False)
    td = fit_trial_design(ds, options={"bootstrap": 100}, as_frame=True)
    assert set(td["effect"]) == {"slow_25pct", "slow_50pct", "to_control_rate"}
    assert len(td) == 3 * 2 * 2
    row = td[(td.effect == "to_control_rate") & (td.years == 2) & (td.power == 0.8)].iloc[0]
    es = row["delta_pct_per_year"] / row["sd_change_at_duration"]
    ref = TTestIndPower().solve_power(effect_size=es, alpha=0.05, power=0.8)
    assert row["n_per_arm"] == np.ceil(ref) or abs(row["n_per_arm"] - np.ceil(ref)) <= 1
    # planted: patients -0.71, controls -0.28 %/y; delta recovered
    assert row["delta_pct_per_year"] == pytest.approx(0.43, abs=0.12)
    assert row["n_per_arm_ci_lower"] <= row["n_per_arm"] <= row["n_per_arm_ci_upper"]
    # without repeats the SD is the observed one at every duration; more power needs more n
    s = td[(td.effect == "slow_50pct")].set_index(["years", "power"])["n_per_arm"]
    assert s[(1.0, 0.8)] == s[(2.0, 0.8)] and s[(1.0, 0.9)] > s[(1.0, 0.8)]
    assert td[td.effect == "slow_25pct"]["n_per_arm"].min() > td[td.effect == "slow_50pct"]["n_per_arm"].max()


def test_trial_design_longer_trial_needs_fewer_patients_with_measured_error():
    """Scan error (from repeats) shrinks on the annualised scale over a longer trial."""
    ds, _ = _cohort(6, n=300, methods={"noisy": (1.0, 1.0)}, years=1.0)
    rel = fit_reliability(ds, as_frame=True)
    td = fit_trial_design(ds, reliability=rel, options={"bootstrap": 0}, as_frame=True)
    s = td[(td.effect == "slow_50pct") & (td.power == 0.8)].set_index("years")
    assert s.loc[2.0, "n_per_arm"] < s.loc[1.0, "n_per_arm"]
    assert s.loc[1.0, "measurement_sd_pct"] == pytest.approx(1.0, rel=0.15)
    # over the observed interval (1 year) the SD is the observed SD
    assert s.loc[1.0, "sd_change_at_duration"] == pytest.approx(s.loc[1.0, "patient_change_sd"], rel=1e-9)


def test_trial_uses_same_site_repeats_and_caps_error_at_observed_sd():
    ds, _ = _cohort(7, n=200, methods={"a": (0.5, 1.0)})
    n = ds.sizes["subject"]
    site = np.tile(np.array(["s1", "s1", "s1"], dtype=object), (n, 1))
    site[: n // 2, 2] = "s2"  # half the repeats on another scanner, which reads 4 % larger
    ds["site"] = (("subject", "timepoint"), site.astype(str))
    v = ds["volume_mm3"].values.copy()
    v[: n // 2, 2] *= 1.04
    ds["volume_mm3"] = (ds["volume_mm3"].dims, v)
    every = fit_reliability(ds, as_frame=True).iloc[0]
    same = fit_reliability(ds, same_site=True, as_frame=True).iloc[0]
    assert every["n"] == n and every["n_other_site"] == n // 2
    assert same["n"] == n - n // 2 and same["n_other_site"] == 0
    assert same["wcv_pct"] == pytest.approx(0.5, rel=0.15) and every["wcv_pct"] > 2 * same["wcv_pct"]
    t = run_stats(ds, {"mixed": False, "harmonise": False, "trial": {"bootstrap": 0}})["trial_design"]
    assert (t["measurement_sd_source"] == "same-site repeats").all()
    assert t["measurement_sd_pct"].iloc[0] == pytest.approx(100 * same["sem_mm3"] / same["mean_mm3"])
    # an error larger than the observed spread allows is capped: at the observed interval
    # (2 years) the projected SD is the observed SD
    huge = pd.DataFrame([{"method": "a", "contrast": "T1w", "side": "total", "sem_mm3": 3000.0, "mean_mm3": 15000.0}])
    td = fit_trial_design(ds, reliability=huge, options={"bootstrap": 0}, as_frame=True)
    r2 = td[td.years == 2].iloc[0]
    assert r2["sd_change_at_duration"] == pytest.approx(r2["patient_change_sd"], rel=1e-9)
    assert td[td.years == 1].iloc[0]["sd_change_at_duration"] > r2["sd_change_at_duration"]


def test_write_stats_stores_retest_pairs_and_reference_change(tmp_path):
    from thaldask.stats import write_stats
    from thaldask.store import open_store
    from thaldask.store.create import create_store

    ds, _ = _cohort(8, n=40)
    ds["site"] = (("subject", "timepoint"), np.full((40, 3), "s1"))
    scans = pd.DataFrame({"subject": ["s000"], "timepoint": ["baseline"], "site": ["s1"]})
    st = create_store(str(tmp_path / "c.zarr"), scans=scans, grid_shape=(4, 4, 4), scan_meta={},
                      reference=["T1w"], orig_axcodes=["RAS"])
    st.write_results(ds)
    paths = write_stats(st.path, out=tmp_path / "t", config={"mixed": False, "trial": {"bootstrap": 20}})
    rel = pd.read_csv(paths["reliability"])
    sds = open_store(st.path).open_results("stats")
    a = sds["retest_visit_mm3"].sel({"method": "a", "contrast": "T1w", "side": "total"}).values
    b = sds["retest_repeat_mm3"].sel({"method": "a", "contrast": "T1w", "side": "total"}).values
    r = retest_batched(a, b)
    assert float(r["icc"]) == pytest.approx(rel.set_index("method").loc["a", "icc"])
    assert (sds["retest_repeat_timepoint"].values == "baseline-rescan").all()
    ref = sds["reference_change_pct"].sel(side="total").values
    rec = pd.read_csv(paths["atrophy_recovery"]).set_index("method")
    assert np.nanmean(ref) == pytest.approx(rec.loc["a", "reference_change_mean"])
    assert len(pd.read_csv(paths["trial_design"])) == 2 * 3 * 2 * 2
