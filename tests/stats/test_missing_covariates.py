"""Statistics without the optional head-size column run, and the tables say what was skipped."""

import warnings

from thaldask.errors import StatsStageWarning
from thaldask.stats.run import run_stats
from thaldask.testing import make_results


def test_stats_without_icv_skip_head_size_adjustment_and_say_so():
    ds, _ = make_results(n_subjects=30)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        t = run_stats(ds.drop_vars("icv_mm3"), {})
    cc = t["clinical_cross"]
    assert len(cc) > 1 and cc["beta_std"].notna().any()
    assert cc["note"].str.contains("head-size adjustment (residual) skipped: the clinical table has no icv_mm3",
                                   regex=False).all()
    assert any(issubclass(w.category, StatsStageWarning) and "icv_mm3" in str(w.message) for w in caught)
    assert len(t["agreement"]) and t["agreement"]["dice_mean"].notna().any()


def test_stats_without_any_clinical_covariate_still_give_agreement_and_comparison():
    ds, _ = make_results(n_subjects=30)
    ds = ds.drop_vars([v for v in ds.data_vars if "side" not in ds[v].dims])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t = run_stats(ds, {})
    assert t["agreement"]["dice_mean"].notna().any()
    assert len(t["method_comparison"]) > 1
    assert "not computed" in str(t["clinical_cross"]["note"].iloc[0])

