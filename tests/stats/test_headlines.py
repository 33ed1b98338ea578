"""Honest headlines and messages: a difference claimed only when the paired test finds it,
no blank or nan intervals, plain names in warnings, one "stats:" prefix."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from rich.console import Console

from thaldask.errors import StatsError
from thaldask.stats import headline_findings, run_stats
from thaldask.stats.combat import fit_combat
from thaldask.testing import make_results


def _tables(p_holm, dice_r1=0.905, ci=(0.90, 0.91)):
    ag = pd.DataFrame({
        "method": ["m", "m"], "contrast": ["T1w", "R1"], "side": ["total"] * 2, "n": [30, 30],
        "dice_mean": [0.90, dice_r1], "dice_mean_ci_lower": [0.89, ci[0]], "dice_mean_ci_upper": [0.91, ci[1]],
        "bias_mm3": [50.0, 80.0], "bias_mm3_ci_lower": [0.0, 10.0], "bias_mm3_ci_upper": [100.0, 150.0],
        "loa_lower_mm3": [-500.0, -400.0], "loa_upper_mm3": [600.0, 560.0], "prop_bias": [False, False]})
    mc = pd.DataFrame({
        "metric": ["dice", "abs_volume_error_mm3"], "side": ["total"] * 2, "test": ["wilcoxon"] * 2,
        "method_a": ["m", "m"], "contrast_a": ["R1", "R1"], "method_b": ["m", "m"],
        "contrast_b": ["T1w", "T1w"], "p_holm": [p_holm, 0.5]})
    return {"agreement": ag, "method_comparison": mc}


def test_r1_claimed_to_change_best_dice_only_when_holm_paired_test_finds_it():
    sig = headline_findings(_tables(0.001))[0]
    assert "R1/ensembles change it" in sig and "Holm p 0.001" in sig
    ns = headline_findings(_tables(0.30))[0]
    assert "change it" not in ns
    assert "no detectable difference from the best without R1/ensembles (m (T1w)" in ns
    assert "Holm p 0.300" in ns
    # best without R1: no claim either way needed
    t1 = headline_findings(_tables(0.001, dice_r1=0.85))[0]
    assert t1.startswith("Best Dice: m (T1w)") and "do not change it" in t1


def test_no_paired_test_available_makes_no_claim():
    t = _tables(0.001)
    t["method_comparison"] = pd.DataFrame([{"note": "no ground-truth volumes"}])
    line = headline_findings(t)[0]
    assert "change it" not in line and "no paired test" in line


def test_headline_with_two_subjects_has_no_blank_or_nan_interval():
    ds, _ = make_results(0, n_subjects=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lines = headline_findings(run_stats(ds, {"mixed": False}))
    for line in lines:
        assert "nan" not in line.lower().replace("n/a", "")
        assert " ;" not in line
    # missing CI columns are said so, and survive printing through rich markup
    line = headline_findings(_tables(0.3, ci=(np.nan, np.nan)))[0]
    assert "(no CI)" in line
    con = Console(record=True, width=400)
    from rich.markup import escape

    con.print(escape(headline_findings(_tables(0.3))[0]))
    assert "[0.900, 0.910]" in con.export_text()


def test_combat_messages_name_sites_plainly():
    X = np.random.default_rng(0).normal(size=(6, 2))
    sites = np.array(["A", "A", "A", "B", "B", "B"])
    cov = pd.DataFrame({"group": np.where(sites == "A", "MS", "HC")})
    with pytest.raises(StatsError) as exc:
        fit_combat(X, sites, covariates=cov)
    msg = str(exc.value)
    assert "np.str_" not in msg and "sites A, B" in msg


def test_pipeline_stats_warnings_have_one_prefix(tmp_path):
    from thaldask.pipeline.context import Context
    from thaldask.pipeline.stages import stage_stats
    from thaldask.store.create import create_store

    ds, _ = make_results(1, n_subjects=12)
    ds = ds.drop_vars("icv_mm3")  # the head-size adjustment is skipped with a warning
    scans = pd.DataFrame({"subject": ["sub-000"], "timepoint": ["baseline"], "site": ["a"]})
    st = create_store(str(tmp_path / "c.zarr"), scans=scans, grid_shape=(4, 4, 4), scan_meta={},
                      reference=["T1w"], orig_axcodes=["RAS"])
    st.write_results(ds)
    ctx = Context(out=str(tmp_path), store=str(tmp_path / "c.zarr"), config={"stats": {"mixed": False}},
                  progress=False)
    stage_stats(ctx)
    warns = ctx.outputs["warnings"]
    assert any("head-size" in w for w in warns)
    assert all(w.startswith("stats: ") and not w.startswith("stats: stats:") for w in warns)
