"""A lost chunk is found by `store verify` and never scored as an empty mask."""

from __future__ import annotations

import os

import numpy as np
import pytest
from click.testing import CliRunner
from helpers.store import lose_chunk

from thaldask.cli import main
from thaldask.metrics.evaluate import evaluate
from thaldask.store import ingest, open_store
from thaldask.store.shards import is_sharded, scans_per_object
from thaldask.store.verify import missing_chunks, read_scan, verify_store


@pytest.mark.parametrize("shards", [True, False], ids=["sharded", "unsharded"])
def test_verify_finds_a_lost_chunk_and_evaluate_refuses_to_score_it(small_cohort, tmp_path, shards):
    import dask

    from thaldask import config

    config.register()  # the defaults first: set() then restores them
    store = str(tmp_path / "c.zarr")
    with dask.config.set({"thaldask.store.shards": shards}):  # unsharded: stores before shards
        ingest(small_cohort, store, progress=False)
    assert is_sharded(open_store(store).zarr_array("masks/gt/T1w")) == shards
    assert verify_store(store).empty
    res = CliRunner().invoke(main, ["store", "verify", store])
    assert res.exit_code == 0 and "every stored scan is whole" in res.output
    # the other masks are predictions of the same scans: copy gt as a method to score
    st = open_store(store)
    for i in range(st.n_scans):
        st.write_mask("rater2", "T1w", i, st.load_mask("gt", "T1w", i))
    key = lose_chunk(store, "masks/rater2/T1w", 1)
    assert missing_chunks(open_store(store).zarr_array("masks/rater2/T1w"), 1) == [key]
    bad = verify_store(store)
    assert bad[["array", "scan"]].values.tolist() == [["masks/rater2/T1w", 1]]
    assert "chunk(s) missing" in bad.problem.iloc[0]
    res = CliRunner().invoke(main, ["store", "verify", store])
    assert res.exit_code == 1
    assert "masks/rater2/T1w: sub-01 m12:" in res.output and "1 stored scans are damaged" in res.output
    ds = evaluate(store, progress=False, surface=False)
    d = ds.dice.sel({"method": "rater2", "contrast": "T1w", "side": "total"})
    assert float(d.sel(subject="sub-01", timepoint="baseline")) == 1.0
    assert np.isnan(float(d.sel(subject="sub-01", timepoint="m12")))  # not scored as empty
    assert ds.attrs["n_failed"] >= 1


def test_a_lost_shard_file_refuses_every_scan_of_it_and_no_other(tmp_path):
    from thaldask.errors import ScanError
    from thaldask.testing import make_store

    st, truth = make_store(tmp_path / "s.zarr", n_subjects=10, images=(), grid=(6, 5, 4))
    z = st.zarr_array("masks/a/T1w")
    rows = scans_per_object(z)
    assert is_sharded(z) and 1 < rows < st.n_scans
    os.remove(os.path.join(st.path, "masks/a/T1w", z.metadata.encode_chunk_key((0, 0, 0, 0))))
    assert verify_store(st)["scan"].tolist() == list(range(rows))
    for i in range(st.n_scans):
        shape = st.shapes[i]
        if i < rows:
            with pytest.raises(ScanError, match="shard file absent"):
                read_scan(z, i, shape)
        else:
            sx, sy, sz = shape
            np.testing.assert_array_equal(read_scan(z, i, shape)[:sx, :sy, :sz], truth[("a", "T1w", i)])
