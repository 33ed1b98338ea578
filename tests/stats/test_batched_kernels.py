"""Batched kernels against statsmodels (the oracle) to 1e-8."""

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm
import statsmodels.formula.api as smf
from scipy import stats

from thaldask.stats.kernels import auc_batched, logit_batched, ols_batched

TOL = 1e-8


def _data(rng, n=150, k=6):
    df = pd.DataFrame({
        "age": rng.normal(45, 10, n), "sex": rng.choice(["F", "M"], n),
        "icv": rng.normal(1.5, 0.1, n),
    })
    vols = rng.normal(0, 1, (k, n))
    y = rng.normal(0, 1, n) + 0.3 * vols[0] + 0.02 * df.age
    return df, vols, y


def test_ols_batched_many_designs_equal_statsmodels_formula_fits():
    rng = np.random.default_rng(1)
    df, vols, y = _data(rng)
    y = y.copy()
    y[[3, 17]] = np.nan  # missing outcomes: rows dropped as statsmodels' missing="drop"
    X = np.stack([np.c_[np.ones(len(df)), v, df.age, (df.sex == "M").astype(float)] for v in vols])
    res = ols_batched(X, y)
    lo, hi = res.conf_int()
    for k, v in enumerate(vols):
        d = df.assign(y=y, v=v)
        fit = smf.ols("y ~ v + age + sex", d, missing="drop").fit()
        names = ["Intercept", "v", "age", "sex[T.M]"]
        np.testing.assert_allclose(res.params[k], fit.params[names], rtol=0, atol=TOL)
        np.testing.assert_allclose(res.bse[k], fit.bse[names], rtol=0, atol=TOL)
        np.testing.assert_allclose(res.pvalues[k], fit.pvalues[names], rtol=0, atol=TOL)
        np.testing.assert_allclose(lo[k], fit.conf_int()[0][names], rtol=0, atol=TOL)
        np.testing.assert_allclose(hi[k], fit.conf_int()[1][names], rtol=0, atol=TOL)
        assert res.nobs[k] == fit.nobs
        assert abs(res.aic[k] - fit.aic) < TOL * abs(fit.aic)
        assert abs(res.rsquared[k] - fit.rsquared) < TOL


def test_ols_batched_weights_equal_fit_on_subset():
    rng = np.random.default_rng(2)
    n = 80
    X = np.c_[np.ones(n), rng.normal(size=(n, 2))]
    y = rng.normal(size=n)
    w = rng.random(n) > 0.3
    res = ols_batched(X, y, weights=w)
    fit = sm.OLS(y[w], X[w]).fit()
    np.testing.assert_allclose(res.params, fit.params, atol=TOL)
    np.testing.assert_allclose(res.bse, fit.bse, atol=TOL)
    np.testing.assert_allclose(res.partial_r2()[1], fit.tvalues[1] ** 2 / (fit.tvalues[1] ** 2 + fit.df_resid), atol=TOL)


def test_ols_batched_rank_deficient_model_is_nan_others_fine():
    rng = np.random.default_rng(3)
    n = 40
    x = rng.normal(size=n)
    good = np.c_[np.ones(n), x]
    bad = np.c_[np.ones(n), np.zeros(n)]
    res = ols_batched(np.stack([good, bad]), rng.normal(size=n))
    assert np.isfinite(res.params[0]).all()
    assert np.isnan(res.params[1]).all()


def test_logit_batched_equals_statsmodels_logit():
    rng = np.random.default_rng(4)
    df, vols, _ = _data(rng, n=200, k=4)
    p = 1 / (1 + np.exp(-(-0.5 + 0.8 * vols[0])))
    yb = (rng.random(len(df)) < p).astype(float)
    X = np.stack([np.c_[np.ones(len(df)), v, df.age, (df.sex == "M").astype(float)] for v in vols])
    res = logit_batched(X, yb)
    lo, hi = res.conf_int()
    for k, v in enumerate(vols):
        fit = smf.logit("w ~ v + age + sex", df.assign(w=yb, v=v)).fit(disp=0, method="newton", tol=1e-14)
        names = ["Intercept", "v", "age", "sex[T.M]"]
        np.testing.assert_allclose(res.params[k], fit.params[names], atol=TOL)
        np.testing.assert_allclose(res.bse[k], fit.bse[names], atol=TOL)
        np.testing.assert_allclose(res.pvalues[k], fit.pvalues[names], atol=TOL)
        np.testing.assert_allclose(lo[k], fit.conf_int()[0][names], atol=TOL)
        assert abs(res.llf[k] - fit.llf) < 1e-8
        assert res.converged[k]


def test_logit_batched_perfect_separation_flagged_not_converged():
    x = np.array([0.0, 1, 2, 3, 4, 5, 6, 7])
    y = (x > 3.5).astype(float)
    res = logit_batched(np.c_[np.ones(8), x], y)
    assert not res.converged
    assert np.isnan(res.params).all()


def test_auc_batched_equals_mann_whitney_u():
    rng = np.random.default_rng(5)
    s = rng.normal(size=(3, 60))
    lab = rng.random((3, 60)) > 0.6
    s[0, :5] = np.nan
    got = auc_batched(s, lab)
    for k in range(3):
        ok = np.isfinite(s[k])
        u = stats.mannwhitneyu(s[k][ok & lab[k]], s[k][ok & ~lab[k]]).statistic
        assert got[k] == pytest.approx(u / ((ok & lab[k]).sum() * (ok & ~lab[k]).sum()), abs=1e-12)


def test_ols_shared_design_equals_statsmodels_full_and_reduced_models():
    from thaldask.stats.kernels import ols_shared_design

    rng = np.random.default_rng(6)
    df, vols, y = _data(rng, n=120, k=5)
    y = y.copy()
    y[[1, 50]] = np.nan
    Xc = np.c_[np.ones(len(df)), df.age, (df.sex == "M").astype(float)]
    res = ols_shared_design(Xc, y, vols)
    lo, hi = res.conf_int()
    red = smf.ols("y ~ age + sex", df.assign(y=y), missing="drop").fit()
    for k, v in enumerate(vols):
        fit = smf.ols("y ~ v + age + sex", df.assign(y=y, v=v), missing="drop").fit()
        assert res.beta[k] == pytest.approx(fit.params["v"], abs=TOL)
        assert res.bse[k] == pytest.approx(fit.bse["v"], abs=TOL)
        assert res.pvalues[k] == pytest.approx(fit.pvalues["v"], abs=TOL)
        assert lo[k] == pytest.approx(fit.conf_int().loc["v", 0], abs=TOL)
        assert res.aic[k] == pytest.approx(fit.aic, rel=TOL)
        assert res.rsquared[k] == pytest.approx(fit.rsquared, abs=TOL)
    assert res.nobs == red.nobs
    assert res.aic_reduced == pytest.approx(red.aic, rel=TOL)
    assert res.rsquared_reduced == pytest.approx(red.rsquared, abs=TOL)


def test_ols_shared_design_batched_replicates_equal_one_by_one():
    from thaldask.stats.kernels import ols_shared_design

    rng = np.random.default_rng(7)
    B, K, n = 4, 3, 50
    Xc = np.concatenate([np.ones((B, n, 1)), rng.normal(size=(B, n, 2))], axis=-1)
    y, V = rng.normal(size=(B, n)), rng.normal(size=(B, K, n))
    res = ols_shared_design(Xc, y, V)
    for b in range(B):
        for k in range(K):
            one = ols_batched(np.c_[Xc[b][:, :1], V[b, k], Xc[b][:, 1:]], y[b])
            assert res.beta[b, k] == pytest.approx(one.params[1], abs=1e-12)
            assert res.bse[b, k] == pytest.approx(one.bse[1], abs=1e-12)


def test_stats_docstring_examples_run():
    import doctest

    import thaldask.stats.agreement as ag
    import thaldask.stats.clinical as cl
    import thaldask.stats.comparison as co
    import thaldask.stats.kernels as ke
    import thaldask.stats.longitudinal as lo
    import thaldask.stats.multitest as mt
    import thaldask.stats.run as ru

    for mod in (ag, cl, co, ke, lo, mt, ru):
        assert doctest.testmod(mod).failed == 0, mod.__name__


def test_kernels_fewer_rows_than_coefficients_give_nan():
    from thaldask.stats.kernels import ols_shared_design

    assert np.isnan(ols_batched(np.ones((1, 2)), [1.0]).params).all()
    assert np.isnan(ols_shared_design(np.ones((2, 2)), [1.0, 2.0], [[1.0, 3.0]]).beta).all()


def test_signed_rank_test_matches_scipy_with_ties_and_zeros():
    """Where scipy enumerates every sign flip (n <= 13 with ties or zeros) and where it
    does not: the same statistic and p-value as scipy.stats.wilcoxon."""
    from scipy import stats as sps

    from thaldask.stats.kernels import signed_rank_test

    rng = np.random.default_rng(7)
    checked = {"enumerated": 0, "scipy": 0}
    while min(checked.values()) < 15:
        n = int(rng.integers(2, 18))
        d = np.round(rng.normal(rng.normal(0, 1), 2, n)) / rng.choice([1, 2])  # ties, zeros
        if rng.random() < 0.3:
            d = rng.normal(0, 1, n)  # no ties: scipy's own exact distribution
        if not np.any(d != 0):
            continue
        ref = sps.wilcoxon(d, zero_method="wilcox")
        stat, p = signed_rank_test(d)
        assert stat == pytest.approx(float(ref.statistic), abs=1e-12)
        assert p == pytest.approx(float(ref.pvalue), rel=1e-10, abs=1e-15), d
        nz = d[d != 0]
        enumerated = n <= 13 and (nz.size < n or np.unique(np.abs(nz)).size < nz.size)
        checked["enumerated" if enumerated else "scipy"] += 1
    with pytest.raises(ValueError):
        signed_rank_test([0.0, 0.0])
