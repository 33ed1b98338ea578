import json
import warnings

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from click.testing import CliRunner

from thaldask.errors import ConfigError
from thaldask.stats import headline_findings, run_stats, write_stats
from thaldask.stats.longitudinal import edss_worsening
from thaldask.synth import make_subject_table
from thaldask.testing import make_results

SITES = {"site-a": (0.0, 1.0, 0.7), "site-b": (700.0, 1.5, 0.5)}
SPECS = {("freesurfer-sim", "T1w"): (900.0, 0.15, 300.0, 0.86),
         ("mindglide-sim", "T1w"): (100.0, 0.0, 300.0, 0.88),
         ("mindglide-sim", "R1"): (50.0, 0.0, 250.0, 0.90)}


def _store(tmp_path, ds):
    from thaldask.store.create import create_store

    scans = pd.DataFrame({"subject": ["sub-000"], "timepoint": ["baseline"], "site": ["site-a"]})
    st = create_store(str(tmp_path / "cohort.zarr"), scans=scans, grid_shape=(4, 4, 4), scan_meta={},
                      reference=["T1w"], orig_axcodes=["RAS"])
    st.write_results(ds)
    return tmp_path / "cohort.zarr"


def test_run_stats_returns_five_tables_with_formula_and_n():
    ds, _ = make_results(0, n_subjects=80, specs=SPECS, sites=SITES)
    tables = run_stats(ds, {"mixed": False})
    five = ["agreement", "method_comparison", "clinical_cross", "longitudinal", "harmonisation"]
    assert list(tables) == [*five, "reliability", "atrophy_recovery", "trial_design", "qc_flags"]
    assert all(len(t) for t in tables.values())
    assert {"n_patients", "formula"} <= set(tables["trial_design"].columns)
    for name in five:
        t = tables[name]
        assert {"n", "n_fit"} & set(t.columns), name
        assert {"model", "formula"} & set(t.columns), name
    assert tables["clinical_cross"].harmonised.all()  # two sites: clinical models on ComBat volumes
    assert tables["harmonisation"].harmonised.all()


def test_run_stats_single_timepoint_without_gt_notes_instead_of_failing():
    ds, _ = make_results(1, n_subjects=40, followup=False)
    ds = ds.assign(gt_volume_mm3=ds["gt_volume_mm3"] * np.nan)
    with pytest.warns(UserWarning, match="longitudinal not computed"):
        tables = run_stats(ds)
    assert tables["agreement"].note.iloc[0] == "no ground-truth volumes"
    assert "2 timepoints" in tables["longitudinal"].note.iloc[0]
    assert len(tables["clinical_cross"]) == 2 * 5


def test_run_stats_unknown_option_raises_config_error():
    ds, _ = make_results(1, n_subjects=20)
    with pytest.raises(ConfigError, match="unknown stats option"):
        run_stats(ds, {"sidez": "all"})


def test_headline_findings_name_best_dice_bias_associations_and_r1_change():
    ds, _ = make_results(2, n_subjects=150, specs=SPECS)
    lines = headline_findings(run_stats(ds, {"mixed": False}))
    text = "\n".join(lines)
    assert lines[0].startswith("Best Dice: mindglide-sim (R1)")
    assert "R1/ensembles change it (best without them: mindglide-sim (T1w)" in lines[0]
    assert "Least volume bias: mindglide-sim" in text
    assert "Proportional bias: freesurfer-sim (T1w)" in text
    assert "Strongest EDSS association" in text and "Strongest SDMT association" in text
    assert "EDSS worsening" in text


@pytest.mark.slow
def test_write_stats_writes_csvs_and_stats_dataset_into_store(tmp_path):
    from thaldask.store import open_store

    ds, _ = make_results(3, n_subjects=60, specs=SPECS, sites=SITES)
    path = _store(tmp_path, ds)
    out = tmp_path / "tables"
    cfg = tmp_path / "stats.yaml"
    cfg.write_text("stats:\n  side: all\n  mixed: false\n  edss_cut: 5.0\n")
    paths = write_stats(path, out=out, config=cfg)
    assert sorted(p.name for p in paths.values()) == sorted(
        f"{n}.csv" for n in ("agreement", "method_comparison", "clinical_cross", "longitudinal", "harmonisation",
                             "reliability", "atrophy_recovery", "trial_design", "qc_flags"))
    # without repeats the reliability table says why it is empty
    assert pd.read_csv(out / "reliability.csv")["note"].iloc[0].startswith("no scan-rescan repeats")
    ag = pd.read_csv(out / "agreement.csv")
    assert set(ag.side) == {"left", "right", "total"}
    lg = pd.read_csv(out / "longitudinal.csv")
    assert lg[lg.analysis == "worsening_logistic"].formula.str.contains("EDSS rule cut 5.0").all()
    st = open_store(path).open_results("stats")
    assert isinstance(st, xr.Dataset)
    np.testing.assert_allclose(st["agreement__bias_mm3"].values, ag.bias_mm3.values)
    assert st.sizes["clinical_cross_row"] == len(pd.read_csv(out / "clinical_cross.csv"))


@pytest.mark.slow
def test_stats_command_prints_headlines_and_bad_store_exits_2(tmp_path):
    from thaldask.cli import main

    ds, _ = make_results(4, n_subjects=50, specs=SPECS)
    path = _store(tmp_path, ds)
    r = CliRunner().invoke(main, ["stats", str(path), "--out", str(tmp_path / "o"), "--config",
                                  str(_cfg(tmp_path))])
    assert r.exit_code == 0, r.output
    assert "agreement:" in r.output and "Best Dice:" in r.output
    assert (tmp_path / "o" / "clinical_cross.csv").exists()
    r = CliRunner().invoke(main, ["stats", str(tmp_path / "missing.zarr")])
    assert r.exit_code == 2
    assert "thaldask: error:" in r.output
    bad = tmp_path / "bad.yaml"
    bad.write_text("nonsense_option: 1\n")
    r = CliRunner().invoke(main, ["stats", str(path), "--config", str(bad)])
    assert r.exit_code == 2 and "unknown stats option" in r.output


def _cfg(tmp_path):
    p = tmp_path / "s.yaml"
    p.write_text(json.dumps({"mixed": False}))  # JSON is YAML
    return p


def test_run_stats_on_synth_subject_table_recovers_planted_directions():
    tab = make_subject_table(200, n_timepoints=2, n_sites=1, seed=3)
    subs = sorted(tab.subject.unique())
    tps = ["baseline", "m12"]
    tab = tab.set_index(["subject", "timepoint"]).reindex(pd.MultiIndex.from_product([subs, tps]))
    S = len(subs)
    true = tab[["thalamus_left_mm3", "thalamus_right_mm3", "thalamus_total_mm3"]].to_numpy().reshape(S, 2, 3)
    rng = np.random.default_rng(0)
    gt = true + rng.normal(0, 50, true.shape)
    gt[:, 1] = np.nan
    vol = np.stack([true + rng.normal(0, 50, true.shape), 1.1 * true + 500], axis=2)[:, :, :, None, :]
    dims2 = ("subject", "timepoint")
    ds = xr.Dataset(
        {"volume_mm3": (("subject", "timepoint", "method", "contrast", "side"), vol),
         "gt_volume_mm3": (("subject", "timepoint", "side"), gt)}
        | {c: (dims2, tab[c].to_numpy().reshape(S, 2)) for c in
           ("site", "group", "sex", "age", "edss", "sdmt", "years_since_baseline", "icv_mm3")},
        coords={"subject": subs, "timepoint": tps, "method": ["near", "scaled"], "contrast": ["T1w"],
                "side": ["left", "right", "total"]},
    )
    tables = run_stats(ds, {"mixed": False})
    ag = tables["agreement"].set_index("method")
    assert ag.loc["scaled", "prop_bias"] and not ag.loc["near", "prop_bias"]
    cc = tables["clinical_cross"].set_index(["outcome", "method"])
    assert cc.loc[("edss", "near"), "beta_std_ci_upper"] < 0  # planted: lower volume, higher EDSS
    assert cc.loc[("sdmt", "near"), "beta_std_ci_lower"] > 0
    # the rule agrees with the generator's own worsening flag on observed scores
    e = tab["edss"].to_numpy().reshape(S, 2)
    w = edss_worsening(e[:, 0], e[:, 1], cut=5.5)
    flag = tab["worsened"].to_numpy().reshape(S, 2)[:, 1].astype(float)
    ok = np.isfinite(w) & (tab["edss_true"].to_numpy().reshape(S, 2) == e).all(axis=1)
    assert (w[ok] == flag[ok]).mean() > 0.99


def test_table_to_xarray_every_table_has_unique_keys():
    from thaldask.stats import table_to_xarray

    ds, _ = make_results(5, n_subjects=60, specs=SPECS, sites=SITES)
    tables = run_stats(ds, {"mixed": False, "side": "all"})
    for name, t in tables.items():
        if list(t.columns) == ["note"]:  # nothing to estimate (no repeats, no GT at follow-up)
            assert name in ("reliability", "atrophy_recovery", "qc_flags"), name
            continue
        x = table_to_xarray(name, t)
        assert isinstance(x, xr.Dataset) and x.sizes, name
    cc = table_to_xarray("clinical_cross", tables["clinical_cross"])
    assert set(cc.dims) == {"outcome", "method", "contrast", "side"}
    r = tables["clinical_cross"].iloc[0]
    assert float(cc["beta_std"].sel({"outcome": r.outcome, "method": r.method, "contrast": r.contrast,
                                     "side": r.side})) == r.beta_std


@pytest.mark.parametrize("n", [1, 2, 5])
def test_run_stats_tiny_cohorts_give_tables_not_exceptions(n):
    ds, _ = make_results(0, n_subjects=n, sites={"a": (0.0, 1.0, 0.5), "b": (100.0, 1.0, 0.5)})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tables = run_stats(ds, {"mixed": False})
    assert all(len(t) for t in tables.values())
    assert headline_findings(tables)[0].startswith("Best Dice:")
