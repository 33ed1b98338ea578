import numpy as np
import pytest
from statsmodels.stats.multitest import multipletests

from thaldask.stats.multitest import fdr_bh, holm, p_adjust


@pytest.mark.parametrize("ours, name", [(fdr_bh, "fdr_bh"), (holm, "holm")])
def test_adjust_nan_in_family_others_equal_statsmodels_on_subset(ours, name):
    rng = np.random.default_rng(0)
    p = rng.random(30) ** 3
    p[[2, 11]] = np.nan
    got = ours(p)
    ok = np.isfinite(p)
    ref = multipletests(p[ok], method=name)[1]
    np.testing.assert_allclose(got[ok], ref, atol=1e-12)
    assert np.isnan(got[~ok]).all()
    # the library itself mishandles NaN (the reason for these helpers): BH turns the whole
    # family NaN; Holm counts the NaNs as tests
    full = multipletests(p, method=name)[1]
    if name == "fdr_bh":
        assert np.isnan(full).all()
    else:
        assert (full[ok] >= got[ok]).all() and (full[ok] > got[ok]).any()


def test_p_adjust_unknown_method_raises_value_error():
    with pytest.raises(ValueError, match="unknown p-value adjustment"):
        p_adjust([0.1], "bonferroni-ish")


def test_adjust_all_nan_returns_all_nan():
    assert np.isnan(fdr_bh([np.nan, np.nan])).all()
