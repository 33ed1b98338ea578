"""evaluate: results dataset against the kernel on known masks, GT choice, NaN for missing
combinations, clinical join, metrics.csv, incremental and resumed re-runs."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest
import zarr

from thaldask.metrics.evaluate import evaluate
from thaldask.metrics.kernels import METRIC_FIELDS, SIDES, derive_metrics, pair_raw
from thaldask.store import open_store
from thaldask.store.format import metrics_array


def _expected(truth, st, method, contrast, i, gt_contrast):
    g = truth[("gt", gt_contrast, i)]
    p = truth[(method, contrast, i)]
    sp = st.spacing[i]
    return derive_metrics(pair_raw(g, p, sp), float(np.prod(sp)))


def test_evaluate_small_store_matches_kernel_and_gt_rule(small_store):
    st, truth = small_store
    ds = evaluate(st.path, progress=False)
    scans = st.scans
    checked = 0
    for (m, c, i), _ in truth.items():
        if m == "gt":
            continue
        # FLAIR GT exists on even scans only; R1 has no GT: the reference (T1w) GT is used
        gtc = "FLAIR" if (c == "FLAIR" and i % 2 == 0) else "T1w"
        exp = _expected(truth, st, m, c, i, gtc)
        sel = {"subject": scans.subject[i], "timepoint": scans.timepoint[i], "method": m, "contrast": c}
        assert str(ds.gt_contrast.sel(sel).values) == gtc
        for k, f in enumerate(METRIC_FIELDS):
            if f == "gt_volume_mm3":
                continue
            np.testing.assert_allclose(ds[f].sel(sel).values, exp[:, k], rtol=1e-12, err_msg=f)
        checked += 1
    assert checked == 6 * 3 + 5
    # GT volume is the T1w GT's
    for i in range(st.n_scans):
        g = truth[("gt", "T1w", i)]
        vol = (g == 1).sum() * np.prod(st.spacing[i])
        got = ds.gt_volume_mm3.sel(subject=scans.subject[i], timepoint=scans.timepoint[i], side="left")
        assert float(got) == pytest.approx(vol)


def test_evaluate_missing_combinations_nan_and_empty_flagged(small_store):
    st, _ = small_store
    ds = evaluate(st.path, progress=False)
    assert set(ds.dims) == {"subject", "timepoint", "method", "contrast", "side"}
    assert list(ds.side.values) == list(SIDES)
    assert "gt" not in ds.method.values
    assert np.isnan(ds.dice.sel({"method": "b", "contrast": "FLAIR"})).all()  # never computed
    assert np.isnan(ds.volume_mm3.sel({"method": "b", "contrast": "T1w", "subject": "sub-01", "timepoint": "baseline"})).all()
    empty = ds.sel({"method": "a", "contrast": "R1", "subject": "sub-00", "timepoint": "m12", "side": "total"})
    assert float(empty.pred_empty) == 1.0 and float(empty.dice) == 0.0
    assert np.isnan(float(empty.hd95_mm))


def test_evaluate_clinical_joined_and_csv_written(small_store, tmp_path):
    st, _ = small_store
    ds = evaluate(st.path, progress=False)
    assert float(ds.age.sel(subject="sub-00", timepoint="baseline")) == 30.0
    assert np.isnan(float(ds.age.sel(subject="sub-02", timepoint="m12")))  # no clinical row
    assert str(ds.site.sel(subject="sub-01", timepoint="m12").values) == "siteA"
    assert str(ds.group.sel(subject="sub-00", timepoint="m12").values) == "MS"
    assert np.isnan(ds.sdmt).all()  # covariate absent from the table: NaN, still present
    df = pd.read_csv(os.path.join(st.path, "metrics.csv"))
    # only the scored (subject, timepoint, method, contrast) combinations, 3 sides each: b
    # never ran on FLAIR and lacks sub-01 baseline on T1w (NaN in the dataset, no row here)
    scored = int(np.isfinite(ds.volume_mm3).any("side").sum())
    assert scored < 3 * 2 * 2 * 3
    assert len(df) == scored * 3
    assert not ((df.method == "b") & (df.contrast == "FLAIR")).any()
    assert not ((df.method == "b") & (df.contrast == "T1w") & (df.subject == "sub-01") & (df.timepoint == "baseline")).any()
    assert df["pred_empty"].notna().all()  # every listed row was scored
    assert {"subject", "timepoint", "method", "contrast", "side", "volume_mm3", "gt_volume_mm3", "dice", "age"} <= set(df.columns)
    back = open_store(st.path).open_results()
    np.testing.assert_array_equal(back.dice.values, ds.dice.values)


def test_evaluate_rerun_recomputes_only_changed_scan(small_store):
    st, truth = small_store
    first = evaluate(st.path, progress=False, csv_path="")
    n_rows = first.attrs["n_computed"]
    assert n_rows == 6 * 3 + 5 + 6 + 3  # predictions + GT volumes
    again = evaluate(st.path, progress=False, csv_path="")
    assert again.attrs["n_computed"] == 0 and again.attrs["n_reused"] == n_rows
    new = np.zeros_like(truth[("a", "T1w", 3)])
    new[2:6, 2:6, 2:6] = 1
    st.write_mask("a", "T1w", 3, new, overwrite=True)
    third = evaluate(st.path, progress=False, csv_path="")
    assert third.attrs["n_computed"] == 1
    sel = {"subject": "sub-01", "timepoint": "m12", "method": "a", "contrast": "T1w", "side": "right"}
    assert float(third.volume_mm3.sel(sel)) == 0.0
    assert float(third.dice.sel({"method": "a", "contrast": "T1w"}).sum()) != float(first.dice.sel({"method": "a", "contrast": "T1w"}).sum())
    np.testing.assert_array_equal(third.dice.sel({"method": "b"}).values, first.dice.sel({"method": "b"}).values)


def test_evaluate_interrupted_cache_resumes_missing_rows_only(small_store):
    st, _ = small_store
    full = evaluate(st.path, progress=False, csv_path="")
    # what an interrupted run leaves: some rows never got their completion token
    tok = zarr.open_array(st.path + "/" + metrics_array("a", "FLAIR", "token"), mode="r+")
    tok[1] = np.zeros(tok.shape[1], np.uint8)
    tok[4] = np.zeros(tok.shape[1], np.uint8)
    resumed = evaluate(st.path, progress=False, csv_path="")
    assert resumed.attrs["n_computed"] == 2
    for v in ("dice", "hd95_mm", "volume_mm3"):
        np.testing.assert_array_equal(resumed[v].values, full[v].values)


def test_evaluate_corrupt_chunk_one_row_nan_rest_complete(small_store):
    from helpers.store import corrupt_chunk

    st, _ = small_store
    clean = evaluate(st.path, progress=False, csv_path="")
    # corrupt scan 3's chunk of masks/b/T1w and invalidate its cached row
    corrupt_chunk(st.path, "masks/b/T1w", 3)
    tok = zarr.open_array(st.path + "/" + metrics_array("b", "T1w", "token"), mode="r+")
    tok[3] = np.zeros(tok.shape[1], np.uint8)
    ds = evaluate(st.path, progress=False, csv_path="")
    assert ds.attrs["n_computed"] == 1 and ds.attrs["n_failed"] == 1
    sel = {"subject": "sub-01", "timepoint": "m12", "method": "b", "contrast": "T1w"}
    assert np.isnan(ds.volume_mm3.sel(sel)).all()
    other = {"method": "a"}
    np.testing.assert_array_equal(ds.dice.sel(other).values, clean.dice.sel(other).values)
    assert (tok[3] == 0).all()  # no completion token: retried next time
