"""Figure functions on a hand-built results dataset and statistics tables."""

from __future__ import annotations

import matplotlib
import numpy as np
import pandas as pd
import pytest
import xarray as xr
from helpers.report import make_report_results, make_stats

from thaldask.report import figures as F
from thaldask.report.style import OKABE_ITO, method_colours
from thaldask.stats.longitudinal import fit_longitudinal, subject_annualised_change

matplotlib.use("Agg")


@pytest.fixture(scope="module")
def ds():
    return make_report_results()


def _texts(fig):
    return [t for ax in fig.axes for t in (ax.get_xlabel(), ax.get_ylabel()) if t]


@pytest.mark.parametrize(
    "make",
    [
        lambda ds, st: F.plot_metric_distributions(ds),
        lambda ds, st: F.plot_precision_sensitivity(ds),
        lambda ds, st: F.plot_volume_vs_gt(ds),
        lambda ds, st: F.plot_bland_altman(ds, st["agreement"]),
        lambda ds, st: F.plot_annualised_change(F.annualised_change_frame(subject_annualised_change(ds))),
    ],
    ids=["distributions", "precision_sensitivity", "volume_vs_gt", "bland_altman", "annualised"],
)
def test_results_figures_fixture_labelled_axes_with_units(ds, make):
    fig = make(ds, make_stats())
    assert fig is not None
    labels = _texts(fig)
    assert labels
    for text in labels:
        if text in ("Group", "Site"):  # categorical axes
            continue
        assert "(" in text, f"axis label without unit: {text!r}"


def test_results_figures_no_ground_truth_return_none(ds):
    nogt = ds.copy()
    for v in ("dice", "sensitivity", "precision", "gt_volume_mm3"):
        nogt[v] = nogt[v] * np.nan
    assert F.plot_metric_distributions(nogt) is None
    assert F.plot_precision_sensitivity(nogt) is None
    assert F.plot_volume_vs_gt(nogt) is None
    assert F.plot_bland_altman(nogt) is None
    # volumes without GT still give annualised change
    assert F.plot_annualised_change(F.annualised_change_frame(subject_annualised_change(nogt))) is not None


def test_metric_combos_missing_combination_excluded(ds):
    combos = F.metric_combos(ds, "dice")
    assert ("mindglide-sim", "FLAIR") in combos
    assert ("freesurfer-sim", "FLAIR") not in combos  # never run: all NaN
    assert ("first-sim", "R1") not in combos


def test_bland_altman_lines_equal_agreement_table(ds):
    from thaldask.stats import fit_agreement

    ag = fit_agreement(ds, as_frame=True)
    fig = F.plot_bland_altman(ds, ag)
    panels = [ax for ax in fig.axes if ax.get_visible() and ax.get_title()]
    assert len(panels) == len(ag)
    for ax in panels:
        method, contrast = ax.get_title().split(" (n")[0].split(" · ")
        row = ag[(ag.method == method) & (ag.contrast == contrast)].iloc[0]
        assert f"(n = {int(row['n'])})" in ax.get_title()
        horizontal = {round(float(line.get_ydata()[0]), 6) for line in ax.get_lines()
                      if len(set(np.round(line.get_ydata(), 9))) == 1}
        for key in ("bias_mm3", "loa_lower_mm3", "loa_upper_mm3"):
            assert round(float(row[key]), 6) in horizontal, key
        prop = [line for line in ax.get_lines() if "proportional" in str(line.get_label())]
        x, y = prop[0].get_xdata(), prop[0].get_ydata()
        slope = (y[-1] - y[0]) / (x[-1] - x[0])
        assert slope == pytest.approx(row["prop_bias_slope"], rel=1e-6)
        assert y[0] == pytest.approx(row["prop_bias_intercept_mm3"] + row["prop_bias_slope"] * x[0])


def test_bland_altman_without_table_computes_limits(ds):
    fig = F.plot_bland_altman(ds)
    ax = next(a for a in fig.axes if a.get_title().startswith("freesurfer-sim · T1w"))
    d = ds.sel(side="total", timepoint="baseline")
    diff = (d["volume_mm3"].sel({"method": "freesurfer-sim", "contrast": "T1w"})
            - d["gt_volume_mm3"]).values
    diff = diff[np.isfinite(diff)]
    ys = sorted(float(line.get_ydata()[0]) for line in ax.get_lines()
                if len(set(line.get_ydata())) == 1 and line.get_ydata()[0] != 0)
    sd = diff.std(ddof=1)
    assert ys == pytest.approx(sorted([diff.mean() - 1.96 * sd, diff.mean(), diff.mean() + 1.96 * sd]))


def test_method_colours_okabe_ito_distinct():
    cols = method_colours([f"m{i}" for i in range(7)])
    assert set(cols.values()) <= set(OKABE_ITO.values())
    assert len(set(cols.values())) == 7


def test_annualised_change_frame_hand_case_exact():
    ds = make_report_results(n_subjects=4)
    v = ds["volume_mm3"].copy()
    at = {"subject": "sub-000", "method": "freesurfer-sim", "contrast": "T1w", "side": "total"}
    v.loc[{**at, "timepoint": "baseline"}] = 10000.0
    v.loc[{**at, "timepoint": "m12"}] = 9800.0
    ds["volume_mm3"] = v
    yrs = ds["years_since_baseline"].copy()
    yrs.loc[{"subject": "sub-000", "timepoint": "m12"}] = 2.0
    ds["years_since_baseline"] = yrs
    df = F.annualised_change_frame(subject_annualised_change(ds))
    row = df[(df.subject == "sub-000") & (df.method == "freesurfer-sim") & (df.contrast == "T1w")]
    assert row["pct_per_year"].item() == pytest.approx(-1.0)  # -2 % over 2 years
    assert row["group"].item() == "MS"
    assert not ((df.method == "freesurfer-sim") & (df.contrast == "R1")).any()  # never run


def test_annualised_change_nothing_stored_none():
    assert F.annualised_change_frame(None).empty
    stats_only = xr.Dataset({"longitudinal__estimate": ("longitudinal_row", [0.5])})
    assert F.annualised_change_frame(stats_only).empty
    assert F.plot_annualised_change(F.annualised_change_frame(stats_only)) is None


def test_forest_plot_ci_lines_from_table():
    st = make_stats()
    fig = F.plot_forest(st["clinical_cross"])
    panels = [ax for ax in fig.axes if ax.get_visible() and ax.get_title() in ("edss", "sdmt")]
    assert {ax.get_title() for ax in panels} == {"edss", "sdmt"}
    cc = st["clinical_cross"]
    ax = next(a for a in panels if a.get_title() == "sdmt")
    spans = sorted(tuple(np.round(line.get_xdata(), 9)) for line in ax.get_lines()
                   if len(line.get_xdata()) == 2 and line.get_xdata()[0] != line.get_xdata()[1])
    want = sorted(tuple(np.round(r, 9)) for r in
                  cc[cc.outcome == "sdmt"][["beta_std_ci_lower", "beta_std_ci_upper"]].to_numpy())
    assert spans == want


def test_odds_ratios_long_table_logistic_rows_only():
    lg = pd.DataFrame({
        "analysis": ["annualised_change", "worsening_logistic", "worsening_logistic"],
        "method": ["a", "a", "b"], "contrast": ["T1w"] * 3, "side": ["total"] * 3,
        "estimate": [-0.5, 1.4, np.nan], "ci_lower": [-1, 1.1, np.nan], "ci_upper": [0, 1.8, np.nan],
    })
    fig = F.plot_odds_ratios(lg)
    ax = fig.axes[0]
    assert ax.get_xscale() == "log"
    points = [line.get_xdata()[0] for line in ax.get_lines() if line.get_marker() == "o"]
    assert points == [1.4]
    assert F.plot_odds_ratios(lg[lg.analysis == "annualised_change"]) is None


def test_find_ci_columns_common_spellings():
    df = pd.DataFrame(columns=["beta_std", "beta_std_ci_lower", "beta_std_ci_upper"])
    assert F.find_ci_columns(df, "beta_std") == ("beta_std_ci_lower", "beta_std_ci_upper")
    df = pd.DataFrame(columns=["estimate", "ci_lower", "ci_upper"])
    assert F.find_ci_columns(df, "estimate") == ("ci_lower", "ci_upper")
    assert F.find_ci_columns(pd.DataFrame(columns=["x"]), "x") is None


def test_site_distributions_before_after_boxes():
    rng = np.random.default_rng(0)
    before = pd.DataFrame({"site": np.repeat(["A", "B"], 10), "method": "m", "contrast": "T1w",
                           "volume_mm3": np.r_[rng.normal(15000, 500, 10), rng.normal(16000, 500, 10)]})
    after = before.assign(volume_mm3=before.volume_mm3 - np.repeat([0, 1000], 10))
    fig = F.plot_site_distributions(before, after)
    ax = fig.axes[0]
    assert ax.get_ylabel() == "Thalamic volume (mm³)"
    assert len(ax.patches) == 4  # two sites × before/after
    assert F.plot_site_distributions(before[before.site == "A"]) is None


def test_annualised_change_points_and_means_equal_longitudinal_table(ds):
    """The figure's points are the stored per-subject values; their group means are the
    table's annualised_change estimates, and so are the diamonds."""
    lg = fit_longitudinal(ds, mixed=False, as_frame=True)
    fig = F.plot_annualised_change(F.annualised_change_frame(subject_annualised_change(ds)),
                                   longitudinal=lg)
    rows = lg[(lg.analysis == "annualised_change") & (lg.side == "total")]
    ax = next(a for a in fig.axes if a.get_title() == "mindglide-sim · R1")
    groups = [t.get_text() for t in ax.get_xticklabels()]
    points = {c.get_gid().rsplit(":", 1)[1]: c.get_offsets()[:, 1] for c in ax.collections
              if (c.get_gid() or "").startswith("annualised_change:")}
    assert set(points) == set(groups)
    for g, y in points.items():
        r = rows[(rows.method == "mindglide-sim") & (rows.contrast == "R1") & (rows.term == g)]
        assert y.mean() == pytest.approx(r.estimate.item(), rel=0, abs=1e-9)
        assert r.n.item() == y.size
    diamonds = [line for line in ax.get_lines() if line.get_marker() == "D"]
    assert len(diamonds) == len(groups)
    for line in diamonds:
        g = groups[round(line.get_xdata()[0] - 0.38)]
        assert line.get_ydata()[0] == pytest.approx(points[g].mean(), rel=0, abs=1e-9)
