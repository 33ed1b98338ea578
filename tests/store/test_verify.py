"""A lost chunk is found by `store verify` and never scored as an empty mask."""

from __future__ import annotations

import os

import numpy as np
from click.testing import CliRunner

from thaldask.cli import main
from thaldask.metrics.evaluate import evaluate
from thaldask.store import ingest, open_store
from thaldask.store.verify import missing_chunks, verify_store


def _lose_chunk(store, name, scan):
    st = open_store(store)
    z = st.zarr_array(name)
    (key,) = [k for k in [z.metadata.encode_chunk_key((scan, 0, 0, 0))]]
    path = os.path.join(store, name, key)
    assert os.path.isfile(path)
    os.remove(path)  # the test's own store: simulate a lost file
    return key


def test_verify_finds_a_lost_chunk_and_evaluate_refuses_to_score_it(small_cohort, tmp_path):
    store = str(tmp_path / "c.zarr")
    ingest(small_cohort, store, progress=False)
    assert verify_store(store).empty
    res = CliRunner().invoke(main, ["store", "verify", store])
    assert res.exit_code == 0 and "every stored scan is whole" in res.output
    # the other masks are predictions of the same scans: copy gt as a method to score
    st = open_store(store)
    for i in range(st.n_scans):
        st.write_mask("rater2", "T1w", i, st.load_mask("gt", "T1w", i))
    key = _lose_chunk(store, "masks/rater2/T1w", 1)
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
