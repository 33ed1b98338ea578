"""Sharded scan arrays: what thaldask assembles is what zarr reads (and writes itself), whole
and partial shards, empty masks, writes in a batch, early flushes, overwrites, lost data
found when a shard is rewritten, and stores written before sharding."""

from __future__ import annotations

import os
import re

import numpy as np
import pytest
from helpers.store import data_file_stamps, lose_chunk

from thaldask.store import ingest, open_store
from thaldask.store.shards import EMPTY, is_sharded, read_index, scans_per_object
from thaldask.testing import make_store

GRID = (10, 8, 6)  # every make_store mask non-empty


def _shard_files(st, name):
    root = os.path.join(st.path, name, "c")
    return sorted(os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs)


def test_make_store_arrays_are_sharded_and_read_back_exactly_with_empty_masks_stored(tmp_path):
    import zarr

    st, truth = make_store(tmp_path / "s.zarr", n_subjects=10, grid=GRID, images=("T1w",))  # 20 scans
    n, rc = st.n_scans, st.record_chunk
    for method, contrast in st.methods:
        z = st.zarr_array(f"masks/{method}/{contrast}")
        assert is_sharded(z) and scans_per_object(z) == rc == 16
        assert _shard_files(st, f"masks/{method}/{contrast}") == ["0/0/0/0", "1/0/0/0"]  # 16 + 4 scans
        assert z.chunks == (1,) + GRID  # each scan one inner chunk
    for (method, contrast, i), want in truth.items():
        sx, sy, sz = want.shape
        np.testing.assert_array_equal(st.load_mask(method, contrast, i), want)
        # zarr itself, opened afresh on the folder (no thaldask)
        z = zarr.open_array(os.path.join(st.path, "masks", method, contrast), mode="r")
        np.testing.assert_array_equal(z[i, :sx, :sy, :sz], want)
    # scan 1's R1 prediction is empty: its inner chunk is stored, not absent
    assert not truth[("a", "R1", 1)].any()
    idx = read_index(st.zarr_array("masks/a/R1"), (0, 0, 0, 0))
    assert idx[1, 0, 0, 0, 0] != EMPTY and idx[1, 0, 0, 0, 1] > 0
    # the dask views keep one scan per chunk
    assert st.mask("a", "T1w").data.chunks[0] == (1,) * n
    # and evaluate scores the empty mask as empty (volume 0), not as lost
    from thaldask.metrics.evaluate import evaluate

    ds = evaluate(st.path, progress=False, csv_path="", surface=False)
    assert ds.attrs["n_failed"] == 0


@pytest.mark.parametrize("budget_mb", [512, 1e-6], ids=["one-write", "flush-every-scan"])
def test_partial_shards_written_in_several_batches_equal_zarrs_own_write(tmp_path, budget_mb):
    """Scans of one shard written by three batches (and with a tiny buffer, one flush per
    scan): the shard file holds exactly the bytes zarr writes for the same data at once."""
    import dask
    import zarr

    from thaldask import config

    config.register()
    st, _ = make_store(tmp_path / "s.zarr", n_subjects=10, grid=GRID, images=())
    rng = np.random.default_rng(1)
    masks = {i: rng.integers(0, 3, tuple(st.shapes[i])).astype(np.uint8) for i in range(st.n_scans)}
    masks[5][...] = 0  # an empty one
    with dask.config.set({"thaldask.store.shard-buffer-mb": budget_mb}):
        for part in ([3, 0, 9], [1, 2, 4, 5, 6, 7, 8], list(range(10, 20))):  # out of order
            with st.record_batch():
                for i in part:
                    assert st.write_mask("c", "T1w", i, masks[i]) == "written"
    st = open_store(st.path)
    assert st.has_mask("c", "T1w").all()
    for i, m in masks.items():
        np.testing.assert_array_equal(st.load_mask("c", "T1w", i), m)
    # zarr writes the same padded data in one go: byte-identical shards
    z = st.zarr_array("masks/c/T1w")
    full = np.zeros(z.shape, np.uint8)
    for i, m in masks.items():
        full[(i,) + tuple(slice(0, s) for s in m.shape)] = m
    ref = zarr.create_array(store=str(tmp_path / "ref.zarr"), shape=z.shape, chunks=z.chunks,
                            shards=z.shards, dtype="uint8", fill_value=0,
                            compressors=z.compressors).with_config({"write_empty_chunks": True})
    ref[...] = full
    for k in ("0/0/0/0", "1/0/0/0"):
        mine = open(os.path.join(st.path, "masks/c/T1w/c", k), "rb").read()
        assert mine == open(os.path.join(tmp_path, "ref.zarr", "c", k), "rb").read()


def test_a_batch_writes_each_shard_once_and_records_after_the_data(tmp_path):
    st, truth = make_store(tmp_path / "s.zarr", n_subjects=8, grid=GRID, images=())
    name = "masks/c/T1w"
    path = os.path.join(st.path, name, "c", "0", "0", "0", "0")
    with st.record_batch():
        for i in range(st.n_scans):
            st.write_mask("c", "T1w", i, truth[("gt", "T1w", i)])
            assert not os.path.exists(path)  # held until the block ends
        assert not open_store(st.path).has_mask("c", "T1w").any()  # nothing recorded yet
    assert os.path.exists(path)
    assert open_store(st.path).has_mask("c", "T1w").all()


def test_an_overwrite_in_a_batch_marks_the_scan_unwritten_until_its_shard_is_written(tmp_path):
    st, truth = make_store(tmp_path / "s.zarr", n_subjects=4, grid=GRID, images=())
    lab = truth[("gt", "T1w", 3)]
    with st.record_batch():
        assert st.write_mask("gt", "T1w", 3, np.zeros_like(lab), overwrite=True) == "written"
        seen = open_store(st.path)
        assert not seen.has_mask("gt", "T1w")[3] and seen.has_mask("gt", "T1w")[2]
        np.testing.assert_array_equal(seen.load_mask("gt", "T1w", 3), lab)  # data not yet changed
        # a read through the writing handle sees its own write (the shard is written first)
        assert st.load_mask("gt", "T1w", 3).max() == 0
    after = open_store(st.path)
    assert after.has_mask("gt", "T1w").all() and after.load_mask("gt", "T1w", 3).max() == 0
    np.testing.assert_array_equal(after.load_mask("gt", "T1w", 2), truth[("gt", "T1w", 2)])


def test_a_scan_lost_from_its_shard_is_marked_unwritten_when_the_shard_is_rewritten(tmp_path):
    from thaldask.errors import ScanError
    from thaldask.store.verify import read_scan

    st, truth = make_store(tmp_path / "s.zarr", n_subjects=4, grid=GRID, images=())
    key = lose_chunk(st.path, "masks/b/T1w", 4)
    z = st.zarr_array("masks/b/T1w")
    with pytest.raises(ScanError, match=re.escape(key)):
        read_scan(z, 4, st.shapes[4])
    assert not open_store(st.path).has_mask("b", "T1w")[2]  # never written (make_store)
    with st.record_batch():  # a new scan of that shard: the shard is rewritten
        st.write_mask("b", "T1w", 2, truth[("gt", "T1w", 2)])
    again = open_store(st.path)
    has = again.has_mask("b", "T1w")
    assert has[2] and not has[4] and has[[0, 1, 3, 5, 6, 7]].all()  # 4 is redone next run
    with pytest.raises(ScanError):
        read_scan(again.zarr_array("masks/b/T1w"), 4, again.shapes[4])
    for i in (0, 1, 3, 5):
        np.testing.assert_array_equal(again.load_mask("b", "T1w", i), truth[("b", "T1w", i)])


def test_interrupted_batch_keeps_the_scans_before_the_error(tmp_path):
    st, truth = make_store(tmp_path / "s.zarr", n_subjects=4, grid=GRID, images=())
    with pytest.raises(RuntimeError), st.record_batch():
        for i in range(3):
            st.write_mask("c", "T1w", i, truth[("gt", "T1w", i)])
        raise RuntimeError("the task failed here")
    again = open_store(st.path)
    assert again.has_mask("c", "T1w").tolist() == [True] * 3 + [False] * (st.n_scans - 3)
    for i in range(3):
        np.testing.assert_array_equal(again.load_mask("c", "T1w", i), truth[("gt", "T1w", i)])


def test_a_store_written_before_sharding_reads_writes_and_reingests_unchanged(small_cohort, tmp_path):
    """A format-2 store as earlier versions wrote it: no "shards" in its layout, one chunk
    file per scan. New arrays in it stay unsharded; re-ingest is a no-op."""
    import dask

    from thaldask import config

    config.register()
    store = str(tmp_path / "c.zarr")
    with dask.config.set({"thaldask.store.shards": False}):
        ingest(small_cohort, store, progress=False)
    st = open_store(store)
    lay = st.layout
    lay.pop("shards")
    st.update_attrs({"layout": lay})  # exactly the earlier layout
    st = open_store(store)
    assert "shards" not in st.layout and st.format == 2
    for i in range(st.n_scans):
        st.write_mask("rater2", "T1w", i, st.load_mask("gt", "T1w", i))
    with st.record_batch():
        st.write_mask("rater3", "T1w", 0, st.load_mask("gt", "T1w", 0))
    for name in ("images/T1w", "masks/gt/T1w", "masks/rater2/T1w", "masks/rater3/T1w"):
        assert not is_sharded(st.zarr_array(name))
    assert len(_shard_files(st, "masks/rater2/T1w")) == st.n_scans
    from thaldask.store.verify import verify_store

    assert verify_store(store).empty
    stamps = data_file_stamps(store)
    again = ingest(small_cohort, store, progress=False)
    assert (again.status == "skipped").all()
    assert data_file_stamps(store) == stamps


def test_reingest_of_a_sharded_store_writes_no_data_file(small_cohort, tmp_path):
    store = str(tmp_path / "c.zarr")
    ingest(small_cohort, store, progress=False)
    assert is_sharded(open_store(store).zarr_array("images/T1w"))
    stamps = data_file_stamps(store)
    assert len(stamps) == 2  # one shard each: images/T1w, masks/gt/T1w
    again = ingest(small_cohort, store, progress=False)
    assert (again.status == "skipped").all()
    assert data_file_stamps(store) == stamps


@pytest.mark.parametrize("scans", [None, [5, 6, 7], list(range(16))], ids=["whole", "a-range", "all"])
def test_shard_reader_reads_what_zarr_reads_and_refuses_a_lost_scan(tmp_path, scans):
    from thaldask.errors import ScanError
    from thaldask.store.shards import ShardReader
    from thaldask.store.verify import read_scan

    st, truth = make_store(tmp_path / "s.zarr", n_subjects=10, grid=GRID, images=())
    key = lose_chunk(st.path, "masks/a/T1w", 6)
    z = st.zarr_array("masks/a/T1w")
    reader = ShardReader(scans)
    for i in list(scans or range(st.n_scans)) + [2, 17]:  # 2, 17: outside the range given
        if i == 6:
            with pytest.raises(ScanError, match=re.escape(key)):
                read_scan(z, i, st.shapes[i], reader)
            continue
        sx, sy, sz = st.shapes[i]
        np.testing.assert_array_equal(read_scan(z, i, st.shapes[i], reader)[:sx, :sy, :sz], truth[("a", "T1w", i)])


def test_a_failed_shard_write_removes_only_its_own_temporary_file(tmp_path, monkeypatch):
    """The one delete of the shard writer is its own temporary file (created exclusively
    beside the shard) after a failed write; the stored shard and a file the user left in
    the same folder are untouched."""
    import thaldask.store.shards as shards

    st, _ = make_store(tmp_path / "s.zarr", n_subjects=3, images=("T1w",))
    z = st.zarr_array("images/T1w", mode="r+")
    assert is_sharded(z)
    folder = os.path.join(st.path, "images", "T1w", "c")
    shard = os.path.join(st.path, *shards.shard_path(z, (0, 0, 0, 0)).split("/"))
    before = open(shard, "rb").read()
    user = os.path.join(os.path.dirname(shard), "notes.partial")  # even a look-alike name
    with open(user, "w") as f:
        f.write("mine")

    def fail(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(shards.os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        shards.write_shard(z, (0, 0, 0, 0), {})
    monkeypatch.undo()
    assert open(shard, "rb").read() == before
    assert open(user).read() == "mine"
    left = [f for _, _, fs in os.walk(folder) for f in fs]
    assert os.path.basename(shard) in left and "notes.partial" in left
    assert [f for f in left if f.endswith(".partial")] == ["notes.partial"]  # no temporary left
    np.testing.assert_array_equal(open_store(st.path).load_image("T1w", 0), st.load_image("T1w", 0))
