import warnings

import numpy as np
import pandas as pd
import pytest

from thaldask.errors import SmallSiteWarning, StatsError
from thaldask.stats.combat import apply_combat, fit_combat, harmonise
from thaldask.testing import make_results

SITES = {"site-a": (0.0, 1.0, 0.8), "site-b": (900.0, 1.8, 0.3), "site-c": (-500.0, 0.7, 0.6)}
SPECS = {("m1", "T1w"): (0.0, 0.0, 400.0, 0.9), ("m2", "T1w"): (300.0, 0.0, 500.0, 0.9),
         ("m2", "R1"): (100.0, 0.0, 350.0, 0.9)}


def _toy(rng, n=90, v=12):
    site = rng.choice(["a", "b", "c"], n)
    age = rng.normal(45, 10, n).round(0)  # float32-exact: neuroCombat casts covariates to float32
    sex = rng.choice(["F", "M"], n)
    X = (rng.normal(0, 1, (n, v)) * np.where(site == "a", 1, 1.5)[:, None]
         + np.where(site == "b", 2, 0)[:, None] + 0.05 * age[:, None] + 10)
    return X, site, pd.DataFrame({"age": age, "sex": sex})


@pytest.mark.requires_neurocombat
@pytest.mark.parametrize("eb, mean_only", [(True, False), (False, False), (True, True)])
def test_combat_equals_neurocombat(eb, mean_only):
    nc = pytest.importorskip("neuroCombat")
    X, site, cov = _toy(np.random.default_rng(1))
    ref = nc.neuroCombat(X.T, cov.assign(site=site), "site", categorical_cols=["sex"],
                         continuous_cols=["age"], eb=eb, mean_only=mean_only)["data"].T
    model = fit_combat(X, site, cov, eb=eb, mean_only=mean_only)
    np.testing.assert_allclose(apply_combat(model, X, site, cov), ref, atol=1e-8, rtol=0)


def test_harmonise_removes_site_effect_and_keeps_protected_group_effect():
    ds, truth = make_results(0, n_subjects=240, specs=SPECS, sites=SITES, group_effect=800.0)
    out, table = harmonise(ds)
    t = table[table.side == "total"]
    assert (t.site_p_before < 1e-3).all()
    assert (t.site_p_after > 0.5).all()
    # group effect (confounded with site: site-a 80 % MS, site-b 30 %) survives harmonisation
    b = out.sel(timepoint="baseline", side="total")
    v = b.volume_mm3.sel({"method": "m1", "contrast": "T1w"}).values
    g = b.group.values
    X = np.c_[np.ones(len(v)), g == "MS", b.icv_mm3.values, b.age.values, b.sex.values == "M"]
    beta = np.linalg.lstsq(X.astype(float), v, rcond=None)[0]
    assert abs(beta[1] - (-800.0)) < 250
    # follow-up harmonised with the baseline fit; raw volumes kept
    fu, raw = out.volume_mm3.sel(timepoint="m12"), ds.volume_mm3.sel(timepoint="m12")
    assert (np.isfinite(fu) == np.isfinite(raw)).all()
    assert not np.allclose(fu.fillna(0), raw.fillna(0))
    assert "volume_mm3_raw" in out


def test_harmonise_without_protecting_group_attenuates_group_effect():
    ds, _ = make_results(0, n_subjects=240, specs=SPECS, sites=SITES, group_effect=800.0)
    eff = {}
    for name, protect in (("kept", ("age", "sex", "icv_mm3", "group")), ("dropped", ("age", "sex", "icv_mm3"))):
        out, _ = harmonise(ds, protect=protect)
        b = out.sel(timepoint="baseline", side="total")
        v = b.volume_mm3.sel({"method": "m1", "contrast": "T1w"}).values
        eff[name] = v[b.group.values == "MS"].mean() - v[b.group.values == "HC"].mean()
    assert eff["dropped"] > eff["kept"]  # less negative: part of the group effect removed


def test_harmonise_refuses_to_protect_outcomes():
    ds, _ = make_results(0, n_subjects=40, sites=SITES)
    with pytest.raises(StatsError, match="must not protect outcomes"):
        harmonise(ds, protect=("age", "edss"))


def test_fit_combat_one_subject_site_raises_and_small_site_warns():
    X, site, cov = _toy(np.random.default_rng(2), n=40)
    site = site.astype(object)
    site[0] = "lonely"
    with pytest.raises(StatsError, match="one subject"):
        fit_combat(X, site, cov)
    site[1] = "lonely"
    with pytest.warns(SmallSiteWarning, match="lonely"):
        fit_combat(X, site, cov)


def test_apply_combat_unknown_site_raises():
    X, site, cov = _toy(np.random.default_rng(3))
    model = fit_combat(X, site, cov)
    with pytest.raises(StatsError, match="not in the data ComBat was fitted on"):
        apply_combat(model, X[:2], ["a", "zzz"], cov.iloc[:2])


def test_harmonise_single_site_returns_dataset_unchanged():
    ds, _ = make_results(0, n_subjects=30)
    out, table = harmonise(ds)
    assert out is ds
    assert table.note.str.contains("single site").all()


def test_fit_combat_location_scale_only_with_one_feature_warns_and_works():
    X, site, cov = _toy(np.random.default_rng(4), v=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = fit_combat(X, site, cov, eb=True)
    assert any(issubclass(w.category, SmallSiteWarning) for w in caught)
    h = apply_combat(model, X, site, cov)
    means = [h[site == s].mean() for s in "abc"]
    raw = [X[site == s].mean() for s in "abc"]
    assert np.ptp(means) < np.ptp(raw)


def test_harmonise_site_only_at_follow_up_warns_and_keeps_raw_values():
    ds, _ = make_results(1, n_subjects=90, specs=SPECS, sites=SITES)
    site = ds["site"].values.copy()
    site[0, 1] = "site-new"
    ds = ds.assign(site=(ds["site"].dims, site))
    with pytest.warns(SmallSiteWarning, match="site-new"):
        out, _ = harmonise(ds)
    np.testing.assert_array_equal(out.volume_mm3.isel(subject=0, timepoint=1).values,
                                  ds.volume_mm3.isel(subject=0, timepoint=1).values)


def test_harmonise_scan_missing_protected_covariate_keeps_raw_volume():
    ds, _ = make_results(2, n_subjects=90, specs=SPECS, sites=SITES)
    age = ds["age"].values.copy()
    age[3, 1] = np.nan
    ds = ds.assign(age=(ds["age"].dims, age))
    with pytest.warns(SmallSiteWarning, match="lack a protected covariate"):
        out, _ = harmonise(ds)
    np.testing.assert_array_equal(out.volume_mm3.isel(subject=3, timepoint=1).values,
                                  ds.volume_mm3.isel(subject=3, timepoint=1).values)
    assert np.isfinite(out.volume_mm3.isel(subject=4, timepoint=1).sel(side="total")).any()
