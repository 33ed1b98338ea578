"""Format 2: the scan and clinical tables live in columns, not in the root metadata; stores
of format 1 open as before and migrate in place with one command."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pandas as pd
import pytest
import zarr
from click.testing import CliRunner

from thaldask.cli import main
from thaldask.errors import StoreError
from thaldask.metrics.evaluate import evaluate
from thaldask.store import open_store
from thaldask.store.create import create_store, set_clinical
from thaldask.testing import make_store


def _meta_store(path, n):
    scans = pd.DataFrame({"subject": [f"sub-{i // 2:05d}" for i in range(n)],
                          "timepoint": ["baseline", "m12"] * (n // 2), "site": ["A", "B"] * (n // 2)})
    aff = np.repeat(np.eye(4)[None], n, axis=0)
    st = create_store(str(path), scans=scans, grid_shape=(8, 8, 8),
                      scan_meta={"affine": aff, "shape": np.full((n, 3), 8), "spacing": np.ones((n, 3))},
                      reference=["T1w"] * n, orig_axcodes=["LIA"] * n)
    clin = scans.copy()
    clin["age"] = np.linspace(20, 60, n)
    clin["group"] = ["MS", None] * (n // 2)
    clin["synthetic"] = [True, False] * (n // 2)
    set_clinical(st, clin)
    return st, scans, clin


def test_root_metadata_does_not_grow_with_the_cohort(tmp_path):
    small, _, _ = _meta_store(tmp_path / "s.zarr", 20)
    big, scans, clin = _meta_store(tmp_path / "b.zarr", 4000)
    size = [os.path.getsize(os.path.join(st.path, "zarr.json")) for st in (small, big)]
    assert abs(size[1] - size[0]) <= 8, size  # only the digits of n_scans differ
    b = open_store(big.path)
    pd.testing.assert_frame_equal(b.scans.reset_index(drop=True), scans, check_names=False)
    assert b.n_scans == 4000 and b.reference == ["T1w"] * 4000 and b.orig_axcodes[0] == "LIA"
    c = b.clinical
    np.testing.assert_allclose(c["age"], clin["age"])
    assert c["group"].iloc[0] == "MS" and c["group"].iloc[1] is None  # missing stays missing
    assert c["synthetic"].dtype == bool and c["synthetic"].tolist()[:2] == [True, False]
    # the tables are a handful of objects, not one per scan
    n_files = sum(len(f) for _, _, f in os.walk(big.path))
    assert n_files < 60, n_files


def _as_format_1(st):
    """Rewrite a store's tables the way format 1 held them: in the root attributes."""
    g = zarr.open_group(st.path, mode="r+", zarr_format=3)
    attrs = dict(g.attrs)
    s = st.scans
    attrs["scans"] = {k: [str(v) for v in s[k]] for k in ("subject", "timepoint", "site")}
    attrs["reference"], attrs["orig_axcodes"] = st.reference, st.orig_axcodes
    c = st.clinical
    attrs["clinical"] = None if c is None else {
        "columns": [str(k) for k in c.columns], "dtypes": {str(k): str(c[k].dtype) for k in c.columns},
        "data": json.loads(json.dumps(c.astype(object).where(pd.notna(c), None).values.tolist()))}
    attrs["thaldask"] = {**attrs["thaldask"], "format": 1}
    attrs.pop("n_scans")
    g.attrs.put(attrs)
    for k in ("subject", "timepoint", "site", "reference", "orig_axcodes"):
        shutil.rmtree(os.path.join(st.path, "scan", k))
    shutil.rmtree(os.path.join(st.path, "_tables"), ignore_errors=True)


def test_format_1_store_opens_migrates_in_place_and_scores_the_same(tmp_path):
    st, _ = make_store(tmp_path / "new" / "s.zarr", n_subjects=3, images=())
    want_scans, want_clin = st.scans, st.clinical
    want = evaluate(st.path, progress=False, csv_path="")
    old, _ = make_store(tmp_path / "old" / "s.zarr", n_subjects=3, images=())
    _as_format_1(old)
    mine = tmp_path / "old" / "notes.txt"
    mine.write_text("a user's notes beside the store\n")
    before = (mine.read_bytes(), os.stat(mine).st_mtime_ns)
    v1 = open_store(old.path)
    assert v1.format == 1
    pd.testing.assert_frame_equal(v1.scans, want_scans)
    pd.testing.assert_frame_equal(v1.clinical, want_clin)
    with pytest.raises(StoreError, match="thaldask store migrate"):
        set_clinical(v1, want_clin)  # nothing written in the old layout's place
    r = CliRunner().invoke(main, ["store", "migrate", old.path])
    assert r.exit_code == 0, r.output
    assert "store format 1 migrated to 2" in r.output
    v2 = open_store(old.path)
    assert v2.format == 2
    root = json.load(open(os.path.join(old.path, "zarr.json")))["attributes"]
    assert "scans" not in root and "reference" not in root and "data" not in (root["clinical"] or {})
    pd.testing.assert_frame_equal(v2.scans, want_scans)
    pd.testing.assert_frame_equal(v2.clinical, want_clin)
    assert v2.reference == st.reference and v2.orig_axcodes == st.orig_axcodes
    got = evaluate(old.path, progress=False, csv_path="")
    np.testing.assert_array_equal(got["dice"].values, want["dice"].values)
    np.testing.assert_array_equal(got["volume_mm3"].values, want["volume_mm3"].values)
    assert (mine.read_bytes(), os.stat(mine).st_mtime_ns) == before  # not ours: untouched
    assert sorted(os.listdir(tmp_path / "old")) == ["notes.txt", "s.zarr"]  # no lock left behind
    r = CliRunner().invoke(main, ["store", "migrate", old.path])
    assert r.exit_code == 0 and "nothing to do" in r.output


def test_migrate_refuses_a_folder_that_is_not_a_store(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "scan.nii.gz").write_bytes(b"not ours")
    r = CliRunner().invoke(main, ["store", "migrate", str(tmp_path / "data")])
    assert r.exit_code != 0 and "no cohort store" in r.output
    assert sorted(os.listdir(tmp_path)) == ["data"] and os.listdir(tmp_path / "data") == ["scan.nii.gz"]


def test_ingest_into_a_format_1_store_migrates_it_first(small_cohort, tmp_path, capsys):
    from helpers.store import make_cohort

    from thaldask.store import ingest

    store = str(tmp_path / "c.zarr")
    ingest(small_cohort, store, progress=False)
    st = open_store(store)
    first = st.scans
    _as_format_1(st)
    more = make_cohort(tmp_path / "more", [{"subject": "y", "timepoint": "baseline", "shape": (12, 10, 10)}])
    rep = ingest(more, store, progress=False)
    assert (rep.status == "written").all(), rep.reason.tolist()
    assert "store format 1 migrated to 2" in capsys.readouterr().err
    st = open_store(store)
    assert st.format == 2 and st.n_scans == len(first) + 1
    pd.testing.assert_frame_equal(st.scans.iloc[: len(first)], first)
    assert st.scans.subject.iloc[-1] == "y" and len(st.reference) == st.n_scans
