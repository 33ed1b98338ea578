"""A new store's record chunk (and shard) grows with the cohort it is created for, so that
per-scan files stay under two with many arrays; a configured size is kept as given."""

import dask
import numpy as np
import pandas as pd
import pytest

import thaldask.config
from thaldask.store import open_store
from thaldask.store.create import create_store

GRID = (4, 4, 4)


def _create(path, n, layout=None):
    scans = pd.DataFrame({"subject": [f"s{i}" for i in range(n)], "timepoint": ["t"] * n,
                          "site": [""] * n})
    return create_store(str(path), scans=scans, grid_shape=GRID, layout=layout,
                        scan_meta={"affine": np.repeat(np.eye(4)[None], n, 0),
                                   "shape": np.tile(GRID, (n, 1)), "spacing": np.ones((n, 3))},
                        reference=["T1w"] * n, orig_axcodes=["RAS"] * n)


@pytest.mark.parametrize("n,rc", [(100, 16), (2048, 32), (16384, 64)])
def test_record_chunk_follows_the_cohort_at_creation(tmp_path, n, rc):
    st = _create(tmp_path / "s.zarr", n)
    assert st.record_chunk == rc
    st.ensure_array("masks/gt/T1w", dtype="uint8")
    z = st.zarr_array("masks/gt/T1w")
    assert z.shards is not None and z.shards[0] == rc  # one shard file per record chunk
    rec = st.zarr_array("_meta/masks/gt/T1w/record")
    assert rec.chunks[0] == rc
    # the size is the store's: reopened, it is the same
    assert open_store(st.path).record_chunk == rc


def test_a_configured_record_chunk_is_kept_whatever_the_cohort(tmp_path):
    thaldask.config.get("store.record-chunk")
    with dask.config.set({"thaldask.store.record-chunk": 8}):
        assert _create(tmp_path / "a.zarr", 4096).record_chunk == 8


def _grow(st, n):
    from thaldask.store.create import append_scans

    scans = pd.DataFrame({"subject": [f"s{i}" for i in range(n)], "timepoint": ["t"] * n,
                          "site": [""] * n})
    meta = {"affine": np.repeat(np.eye(4)[None], n, 0), "shape": np.tile(GRID, (n, 1)),
            "spacing": np.ones((n, 3))}
    append_scans(st, scans, meta, ["T1w"] * n, ["RAS"] * n)
    return open_store(st.path)


def test_a_grown_store_gives_new_arrays_the_chunk_of_its_size_and_keeps_the_old_ones(tmp_path):
    st = _create(tmp_path / "s.zarr", 100)
    st.ensure_array("images/T1w", dtype="float32")
    st = _grow(st, 2048)
    assert st.n_scans == 2048 and st.record_chunk == 32
    assert st.zarr_array("_meta/images/T1w/record").chunks[0] == 16  # as it was written
    st.ensure_array("masks/thalnet/T1w", dtype="uint8")
    assert st.zarr_array("masks/thalnet/T1w").shards[0] == 32
    assert st.zarr_array("_meta/masks/thalnet/T1w/record").chunks[0] == 32
    # a task writing both owns whole chunks of the larger, which nest the smaller ones
    assert st.write_chunk(["images/T1w", "masks/thalnet/T1w"]) == 32
    assert st.layout["record_chunk"] == 16  # the creation's layout is not rewritten


def test_a_configured_record_chunk_is_kept_when_the_store_grows(tmp_path):
    thaldask.config.get("store.record-chunk")
    with dask.config.set({"thaldask.store.record-chunk": 16}):
        st = _create(tmp_path / "s.zarr", 100)
    st = _grow(st, 2048)  # grown later, with the setting back to null: the store's is kept
    assert st.record_chunk == 16
    st.ensure_array("masks/thalnet/T1w", dtype="uint8")
    assert st.zarr_array("_meta/masks/thalnet/T1w/record").chunks[0] == 16
    # and so is a size given in the layout at creation
    lay = _create(tmp_path / "l.zarr", 100, {"record_chunk": 8})
    assert _grow(lay, 20_000).record_chunk == 8

