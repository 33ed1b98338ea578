import numpy as np
import pytest
from scipy import stats

from thaldask.stats.comparison import fit_method_comparison, rank_biserial
from thaldask.stats.multitest import holm
from thaldask.testing import make_results


def test_fit_method_comparison_equals_scipy_friedman_wilcoxon_and_holm():
    ds, _ = make_results(0, n_subjects=60, followup=False)
    t = fit_method_comparison(ds, metrics=("dice",), as_frame=True)
    fr = t[t.test == "friedman"].iloc[0]
    d = ds["dice"].sel(side="total", timepoint="baseline").transpose("subject", "method", "contrast").values
    keys = [(m, c) for m, c in zip(t[t.test == "wilcoxon"].method_a, t[t.test == "wilcoxon"].contrast_a, strict=True)]
    assert fr.k_methods == 5 and fr.n == 60
    cols = {}
    meths, cons = list(ds.method.values), list(ds.contrast.values)
    for _, r in t[t.test == "wilcoxon"].iterrows():
        a = d[:, meths.index(r.method_a), cons.index(r.contrast_a)]
        b = d[:, meths.index(r.method_b), cons.index(r.contrast_b)]
        ref = stats.wilcoxon(a, b)
        assert r.p == pytest.approx(ref.pvalue, rel=1e-12)
        assert r.statistic == pytest.approx(ref.statistic)
        cols[(r.method_a, r.contrast_a)] = a
        cols[(r.method_b, r.contrast_b)] = b
    assert len(keys) == 10
    ref_fr = stats.friedmanchisquare(*cols.values())
    assert fr.p == pytest.approx(ref_fr.pvalue, rel=1e-10)
    w = t[t.test == "wilcoxon"]
    np.testing.assert_allclose(w.p_holm, holm(w.p.to_numpy()))


def test_fit_method_comparison_missing_values_never_nan_the_family():
    ds, _ = make_results(1, n_subjects=40, followup=False)
    dice = ds["dice"].values.copy()
    dice[:5, :, 0] = np.nan  # first method missing for five subjects
    dice[:, :, 1, 0] = np.nan  # second method never has Dice (dropped from the family)
    ds = ds.assign(dice=(ds["dice"].dims, dice))
    t = fit_method_comparison(ds, metrics=("dice",), as_frame=True)
    assert t[t.test == "friedman"].n.iloc[0] == 35
    w = t[t.test == "wilcoxon"]
    assert np.isfinite(w.p_holm).all() and len(w) == 6


def test_fit_method_comparison_abs_volume_error_ranks_planted_bias():
    ds, _ = make_results(2, n_subjects=80, followup=False)
    t = fit_method_comparison(ds, metrics=("abs_volume_error_mm3",), as_frame=True)
    r = t[(t.method_a == "first-sim") & (t.method_b == "mindglide-sim") & (t.contrast_b == "T1w")].iloc[0]
    assert r.p_holm < 1e-6 and r.effect_size > 0.9 and r.median_diff > 1000


@pytest.mark.requires_pingouin
def test_rank_biserial_equals_pingouin_wilcoxon_rbc():
    pg = pytest.importorskip("pingouin")
    rng = np.random.default_rng(3)
    a, b = rng.normal(0.3, 1, 30), rng.normal(0, 1, 30)
    ref = pg.wilcoxon(a, b)["RBC"].iloc[0]
    assert rank_biserial(a - b) == pytest.approx(ref, abs=1e-8)
