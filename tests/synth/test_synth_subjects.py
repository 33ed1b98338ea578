"""Subject-level truth: planted effects recovered from the images-free table."""

from __future__ import annotations

import numpy as np
import pandas as pd
import statsmodels.formula.api as smf

from thaldask.synth import CLINICAL_COLUMNS, default_params, make_subject_table


def test_make_subject_table_same_seed_identical_other_seed_differs():
    a = make_subject_table(50, seed=4)
    b = make_subject_table(50, seed=4)
    c = make_subject_table(50, seed=5)
    pd.testing.assert_frame_equal(a, b)
    assert not np.allclose(a["thalamus_total_mm3"], c["thalamus_total_mm3"])


def test_make_subject_table_clinical_columns_follow_contract():
    t = make_subject_table(400, n_timepoints=3, n_sites=3, seed=1)
    assert set(CLINICAL_COLUMNS) <= set(t.columns)
    assert list(CLINICAL_COLUMNS[:2]) == ["subject", "timepoint"]
    assert sorted(t.timepoint.unique()) == ["baseline", "m12", "m24"]
    assert set(t.group) == {"MS", "NMOSD", "MOGAD", "HC"}
    assert set(t.sex) == {"F", "M"}
    assert set(t.site) == {"site-1", "site-2", "site-3"}
    edss = t.edss.dropna()
    assert edss.between(0, 10).all() and (edss * 2 == np.round(edss * 2)).all()
    assert not ((edss > 0) & (edss < 1)).any()  # the EDSS scale has no 0.5
    # missing completely at random, about 5 %
    assert 0.02 < t.edss.isna().mean() < 0.09 and 0.02 < t.sdmt.isna().mean() < 0.09
    assert t.loc[t.group == "HC", "disease_duration"].isna().all()
    assert t.loc[t.group != "HC", "disease_duration"].notna().all()
    assert t.icv_mm3.between(1.0e6, 2.0e6).all()
    # years since baseline increase per subject and age follows
    w = t.pivot(index="subject", columns="timepoint", values="years_since_baseline")
    assert (w["baseline"] == 0).all() and (w["m12"] > 0.6).all() and (w["m24"] > w["m12"]).all()
    # ground truth: half of the patients, baseline only, never controls
    base = t[t.timepoint == "baseline"]
    share = base.loc[base.group != "HC", "has_gt"].mean()
    assert abs(share - 0.5) < 0.01
    assert not base.loc[base.group == "HC", "has_gt"].any()
    assert not t.loc[t.timepoint != "baseline", "has_gt"].any()


def test_make_subject_table_group_effect_recovered_within_ci():
    t = make_subject_table(3000, n_timepoints=1, seed=2)
    t["lv"] = np.log(t.thalamus_total_mm3 / t.icv_true_mm3)
    fit = smf.ols("lv ~ C(group, Treatment('HC')) + age", data=t).fit()
    planted = default_params()["groups"]["thalamus_effect_log"]
    for g in ("MS", "NMOSD", "MOGAD"):
        name = f"C(group, Treatment('HC'))[T.{g}]"
        lo, hi = fit.conf_int(alpha=0.01).loc[name]
        assert lo < planted[g] < hi, (g, lo, planted[g], hi)
    lo, hi = fit.conf_int(alpha=0.01).loc["age"]
    assert lo < default_params()["anatomy"]["thalamus_age_effect_log_per_year"] < hi


def test_make_subject_table_atrophy_rate_by_group_and_severity():
    t = make_subject_table(2000, n_timepoints=2, seed=3)
    w = t.pivot(
        index="subject", columns="timepoint", values=["thalamus_total_mm3", "years_since_baseline"]
    )
    rate = (w["thalamus_total_mm3"]["m12"] / w["thalamus_total_mm3"]["baseline"]) ** (
        1 / w["years_since_baseline"]["m12"]
    ) - 1
    base = t[t.timepoint == "baseline"].set_index("subject")
    p = default_params()["atrophy"]
    hc = rate[base.group == "HC"]
    pat = rate[base.group != "HC"]
    for r, planted in ((hc, p["control_rate"]), (pat, p["patient_rate"])):
        se = r.std() / np.sqrt(r.size)
        assert abs(r.mean() - planted) < 3.3 * se, (r.mean(), planted, se)
    # faster loss with higher severity
    sev = base.loc[base.group != "HC", "severity"]
    assert pat.corr(sev) < -0.5


def test_make_subject_table_clinical_associations_planted():
    t = make_subject_table(3000, n_timepoints=2, seed=6)
    c = default_params()["clinical"]
    pat = t[(t.group != "HC") & (t.timepoint == "baseline")]
    fit = smf.ols("edss_true ~ thalamus_z + severity", data=pat).fit()
    assert fit.conf_int().loc["thalamus_z", 1] < 0  # smaller thalamus, higher EDSS
    base = t[t.timepoint == "baseline"].assign(patient=lambda d: (d.group != "HC").astype(float))
    fit = smf.ols("sdmt_true ~ thalamus_z + age + patient", data=base).fit()
    lo, hi = fit.conf_int(alpha=0.01).loc["thalamus_z"]
    assert lo < c["sdmt_per_thalamus_sd"] < hi
    # EDSS worsening at follow-up is more likely with faster thalamic loss
    f = t[(t.group != "HC") & (t.timepoint == "m12")]
    assert f.worsened.mean() > 0.05
    assert (
        f.loc[f.worsened, "atrophy_rate"].mean() < f.loc[~f.worsened, "atrophy_rate"].mean() - 0.001
    )
    b = t[(t.group != "HC") & (t.timepoint == "baseline")].set_index("subject").edss_true
    e1 = f.set_index("subject").edss_true
    step = np.where(b == 0, 1.5, np.where(b <= 5.5, 1.0, 0.5))
    confirmed = (e1 - b) >= step
    assert (confirmed == f.set_index("subject").worsened).mean() > 0.99


def test_make_subject_table_bad_sizes_raise_config_error():
    import pytest

    from thaldask.errors import ConfigError

    with pytest.raises(ConfigError, match="n_subjects=0"):
        make_subject_table(0)
