"""Report sections "Which method for a trial?" and "QC flags": drawn from the stats tables
and the stored retest pairs, sentences quote the tables, absent inputs are stated."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import xarray as xr
from helpers.report import PageParser, make_report_results

from thaldask.report import build_report
from thaldask.stats import run_stats
from thaldask.stats.reliability import retest_pairs


def _with_rescans(n=24, rng=0):
    rng = np.random.default_rng(rng)
    ds = make_report_results(n_subjects=n)
    rescan = ds.isel(timepoint=[0]).assign_coords(timepoint=["baseline-rescan"])
    rescan["volume_mm3"] = rescan["volume_mm3"] * (1 + rng.normal(0, 0.01, rescan["volume_mm3"].shape))
    for v in ("dice", "sensitivity", "precision", "gt_volume_mm3"):
        rescan[v] = rescan[v] * np.nan
    out = xr.concat([ds, rescan], dim="timepoint", data_vars="all")
    out.attrs = ds.attrs
    rep = np.tile(np.array(["", "", "baseline"], dtype=object), (n, 1)).astype(str)
    out["repeat_of"] = (("subject", "timepoint"), rep)
    return out


def test_trial_and_qc_sections_draw_tables_and_quote_them(tmp_path):
    ds = _with_rescans()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tables = run_stats(ds, {"mixed": False, "trial": {"bootstrap": 50}})
    index = build_report(tmp_path, results=ds, stats=tables, stored=retest_pairs(ds), progress=False)
    text = index.read_text(encoding="utf-8")
    names = {Path(s).stem for s in PageParser(text).images}
    assert {"trial_sample_size", "retest_bland_altman"} <= names
    td = tables["trial_design"]
    d = td[(td.effect == "to_control_rate") & (td.power == 0.8) & (td.years == td.years.max())]
    best = d.sort_values("n_per_arm").iloc[0]
    assert f"needs the fewest patients: {int(best['n_per_arm'])} per arm" in text
    rel = tables["reliability"].sort_values("sdc_pct").iloc[0]
    assert f"is the most repeatable (smallest detectable change {rel['sdc_pct']:.1f} %" in text
    assert 'id="trial"' in text and 'id="qc-flags"' in text
    assert (tmp_path / "tables" / "qc_flags.csv").is_file()


def test_trial_and_qc_sections_absent_inputs_stated(tmp_path):
    text = build_report(tmp_path, results=None, stats={}, progress=False).read_text("utf-8")
    assert "No sample sizes: trial_design.csv is absent" in text
    assert "No scan–rescan repeats: declare them with the clinical column repeat_of" in text
    assert "No qc_flags.csv" in text
