"""The report draws what the statistics stage computed: stats stage on a small results
dataset in a store, then the report from that store; the plotted annualised change and
harmonised volumes are compared with longitudinal.csv and the stored values."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from helpers.report import make_report_results

from thaldask.report import figures as F
from thaldask.report import write_report
from thaldask.stats import write_stats
from thaldask.store import open_store

pytestmark = pytest.mark.slow  # a store, the stats stage and two reports


def _three_timepoints(n_subjects: int = 24) -> xr.Dataset:
    """``make_report_results`` plus an ``m24`` follow-up at 1.8-2.2 years; subject 5's m24
    mindglide-sim volumes are missing, so the last follow-up (the stats stage's rule) has no
    volume for it, while m12 has one."""
    rng = np.random.default_rng(7)
    ds = make_report_results(n_subjects=n_subjects, rng=3)
    m24 = ds.isel(timepoint=[1]).assign_coords(timepoint=["m24"])
    m24["volume_mm3"] = m24["volume_mm3"] * rng.normal(0.985, 0.01, m24["volume_mm3"].shape)
    years = rng.uniform(1.8, 2.2, (n_subjects, 1))
    m24["years_since_baseline"] = m24["years_since_baseline"] * 0 + years
    m24["age"] = m24["age"] + 1
    m24["edss"] = m24["edss"] + rng.choice([0.0, 0.5, 1.0, 1.5], (n_subjects, 1))
    out = xr.concat([ds, m24], dim="timepoint", data_vars="all", coords="minimal", compat="override")
    v = out["volume_mm3"].copy()
    v.loc[{"subject": "sub-005", "timepoint": "m24", "method": "mindglide-sim"}] = np.nan
    out["volume_mm3"] = v
    for name in ("gt_volume_mm3", "dice", "sensitivity", "precision", "jaccard", "hd95_mm",
                 "assd_mm", "volume_diff_mm3", "volume_diff_pct"):
        d = out[name].copy()
        d.loc[{"timepoint": "m24"}] = np.nan
        out[name] = d
    out.attrs = ds.attrs
    return out


@pytest.fixture(scope="module")
def stats_store(tmp_path_factory):
    """A store holding the results dataset, after ``write_stats`` (CSVs beside it)."""
    from thaldask.store.create import create_store

    root = tmp_path_factory.mktemp("stored")
    ds = _three_timepoints()
    scans = pd.DataFrame({"subject": ["sub-000"], "timepoint": ["baseline"], "site": ["siteA"]})
    st = create_store(str(root / "cohort.zarr"), scans=scans, grid_shape=(4, 4, 4), scan_meta={},
                      reference=["T1w"], orig_axcodes=["RAS"])
    st.write_results(ds)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        paths = write_stats(root / "cohort.zarr", config={"mixed": False})
    return root / "cohort.zarr", paths


@pytest.fixture(scope="module")
def drawn(stats_store, tmp_path_factory):
    """The report of ``stats_store``, with the figures (and their inputs) it drew."""
    store, _ = stats_store
    seen = {}
    plot_change, plot_sites = F.plot_annualised_change, F.plot_site_distributions

    def change(df, **kw):
        seen["change_input"] = df
        seen["change"] = plot_change(df, **kw)
        return seen["change"]

    def sites(before, after=None, **kw):
        seen["before"], seen["after"] = before, after
        seen["sites"] = plot_sites(before, after, **kw)
        return seen["sites"]

    mp = pytest.MonkeyPatch()
    mp.setattr(F, "plot_annualised_change", change)
    mp.setattr(F, "plot_site_distributions", sites)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            index = write_report(store, tmp_path_factory.mktemp("rep"), progress=False, qc_random=0)
    finally:
        mp.undo()
    return index, seen


def _points(ax) -> dict[str, np.ndarray]:
    """group -> the y values of the points drawn for it in one annualised-change panel."""
    return {c.get_gid().rsplit(":", 1)[1]: np.asarray(c.get_offsets())[:, 1] for c in ax.collections
            if (c.get_gid() or "").startswith("annualised_change:")}


def test_write_stats_stores_per_subject_change_and_harmonised_volumes(stats_store):
    store, _ = stats_store
    sds = open_store(store).open_results("stats")
    assert {"annualised_change_pct", "annualised_change_years", "annualised_change_group",
            "baseline_timepoint", "followup_timepoint", "harmonised_volume_mm3"} <= set(sds.data_vars)
    assert set(sds["followup_timepoint"].values) == {"m24"}
    assert sds["annualised_change_pct"].attrs["harmonised"] == 1
    # sub-005's last follow-up has no mindglide-sim volume: no change, not the m12 one
    c = sds["annualised_change_pct"].sel(subject="sub-005", side="total")
    assert np.isnan(c.sel({"method": "mindglide-sim"})).all()
    assert np.isfinite(c.sel({"method": "freesurfer-sim", "contrast": "T1w"}))


def test_report_annualised_change_equals_longitudinal_csv(stats_store, drawn):
    store, paths = stats_store
    index, seen = drawn
    assert "figures/annualised_change.png" in index.read_text(encoding="utf-8")
    lg = pd.read_csv(paths["longitudinal"])
    rows = lg[(lg.analysis == "annualised_change") & (lg.side == "total")]
    fig = seen["change"]
    panels = [ax for ax in fig.axes if ax.get_visible() and ax.get_title()]
    assert {ax.get_title() for ax in panels} == {
        F.combo_label(m, c) for m, c in rows[["method", "contrast"]].drop_duplicates().to_numpy()}
    checked = 0
    for ax in panels:
        m, c = ax.get_title().split(" · ")
        pts = _points(ax)
        here = rows[(rows.method == m) & (rows.contrast == c)]
        assert set(pts) == set(here.term) - {"all"}
        for g, y in pts.items():
            r = here[here.term == g].iloc[0]
            assert y.size == r.n
            assert abs(y.mean() - r.estimate) <= 1e-9, (m, c, g)
            checked += 1
        every = np.concatenate(list(pts.values()))
        r = here[here.term == "all"].iloc[0]
        assert every.size == r.n and abs(every.mean() - r.estimate) <= 1e-9
    assert checked >= 5 * 4  # five method × contrast panels, four groups each
    # the points are the stored values, nothing else
    sds = open_store(store).open_results("stats")
    at = {"side": "total", "method": "mindglide-sim", "contrast": "R1"}
    stored = sds["annualised_change_pct"].sel(at).values
    ax = next(a for a in panels if a.get_title() == "mindglide-sim · R1")
    drawn_values = np.sort(np.concatenate(list(_points(ax).values())))
    np.testing.assert_array_equal(drawn_values, np.sort(stored[np.isfinite(stored)]))


def test_report_harmonised_volumes_equal_stored(stats_store, drawn):
    store, _ = stats_store
    _, seen = drawn
    sds = open_store(store).open_results("stats")
    after = seen["after"]
    assert after is not None and len(after)
    want = sds["harmonised_volume_mm3"].sel(side="total")
    got = want.sel({k: xr.DataArray(after[k].to_numpy())
                    for k in ("subject", "timepoint", "method", "contrast")}).values
    np.testing.assert_array_equal(after.volume_mm3.to_numpy(), got)
    assert int(np.isfinite(want).sum()) == len(after)
    assert not np.allclose(after.volume_mm3.to_numpy(), seen["before"].volume_mm3.to_numpy())
    # each "after" box's median is the median of the stored harmonised volumes of its site
    sites = after.merge(seen["before"][["subject", "timepoint", "method", "contrast", "site"]])
    n = 0
    for ax in seen["sites"].axes:
        for line in ax.get_lines():
            gid = line.get_gid() or ""
            if not gid.endswith(":after"):
                continue
            _, m, c, s, _ = gid.split(":")
            v = sites[(sites.method == m) & (sites.contrast == c) & (sites.site == s)].volume_mm3
            assert line.get_ydata()[0] == pytest.approx(np.median(v), rel=1e-12)
            n += 1
    assert n == 5 * 3  # five method × contrast panels, three sites


def test_report_from_a_csv_folder_equal_to_the_stored_stats_draws_them(stats_store, tmp_path):
    store, paths = stats_store
    folder = paths["longitudinal"].parent
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        index = write_report(store, tmp_path, stats_dir=folder, progress=False, qc_random=0)
    text = index.read_text(encoding="utf-8")
    assert "figures/annualised_change.png" in text


def test_report_from_other_csv_tables_leaves_per_subject_figures_absent(stats_store, tmp_path):
    import shutil

    store, paths = stats_store
    other = tmp_path / "other"
    other.mkdir()
    for p in paths.values():
        shutil.copy(p, other / p.name)
    lon = pd.read_csv(other / "longitudinal.csv")
    col = next(c for c in lon.columns if lon[c].dtype.kind == "f" and lon[c].notna().any())
    lon[col] = lon[col] + 1.0  # tables that do not match the stored numbers
    lon.to_csv(other / "longitudinal.csv", index=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        index = write_report(store, tmp_path / "report", stats_dir=other, progress=False, qc_random=0)
    text = index.read_text(encoding="utf-8")
    assert "figures/annualised_change.png" not in text
    assert "No per-subject annualised change stored with the statistics" in text
    assert "No harmonised volumes stored with the statistics" in text
    assert "figures/odds_ratios.png" in text  # the tables themselves are still drawn
