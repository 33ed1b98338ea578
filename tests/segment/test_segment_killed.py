"""A segment run killed with SIGKILL part-way: the re-run segments only the missing scans,
and the masks then equal a clean run's (thalnet is deterministic). A task owns whole
chunks of its masks' write records: one scan each with the default batch size."""

from __future__ import annotations

import shutil
import signal

import numpy as np
import pytest
from helpers.cluster import run_and_sigkill

from thaldask.segment import segment_store
from thaldask.store import ingest, open_store
from thaldask.synth import make_cohort

_CHILD = """
import sys, dask
from thaldask.segment import segment_store
segment_store(sys.argv[1], "thalnet", ["T1w"], progress=False)
"""


def _done(store):
    try:
        return int(open_store(store).has_mask("thalnet", "T1w").sum())
    except Exception:  # array being created
        return 0


@pytest.mark.slow
def test_segment_killed_midrun_resumes_only_missing_scans(tmp_path):
    cohort = make_cohort(tmp_path / "in", n_subjects=4, shape="tiny", seed=3, progress=False)
    ingest(cohort.manifest, str(tmp_path / "a.zarr"), progress=False)
    shutil.copytree(tmp_path / "a.zarr", tmp_path / "b.zarr")
    clean = segment_store(str(tmp_path / "b.zarr"), "thalnet", ["T1w"], progress=False)
    n = len(clean)
    store = str(tmp_path / "a.zarr")
    status = run_and_sigkill(_CHILD, [store], when=lambda: _done(store) >= 2, timeout=300)
    assert status == -signal.SIGKILL, "segment finished before it could be interrupted"
    done = _done(store)
    assert 0 < done < n
    assert open_store(store).zarr_array("_meta/masks/thalnet/T1w/record").chunks[0] == 1
    again = segment_store(store, "thalnet", ["T1w"], progress=False)
    assert len(again) == n - done and (again.status == "written").all()
    a, b = open_store(store), open_store(str(tmp_path / "b.zarr"))
    assert a.has_mask("thalnet", "T1w").all()
    for i in range(a.n_scans):
        np.testing.assert_array_equal(a.load_mask("thalnet", "T1w", i), b.load_mask("thalnet", "T1w", i))


_CHILD_SHARDED = """
import sys, dask
from thaldask.segment import segment_store
segment_store(sys.argv[1], "thalnet", ["T1w"], batch_size=4, progress=False)
"""


@pytest.mark.slow
def test_segment_killed_midrun_redoes_only_the_shards_it_did_not_finish(tmp_path):
    """Four scans per task, per write-record chunk and per shard file: the run is killed
    after the first task's records (either shard may come first); the re-run writes exactly the other task's scans, and
    each mask and probability array is two shard files."""
    import os

    from thaldask.store.shards import is_sharded, scans_per_object

    cohort = make_cohort(tmp_path / "in", n_subjects=4, shape="tiny", seed=3, progress=False)
    ingest(cohort.manifest, str(tmp_path / "a.zarr"), progress=False)
    shutil.copytree(tmp_path / "a.zarr", tmp_path / "b.zarr")
    clean = segment_store(str(tmp_path / "b.zarr"), "thalnet", ["T1w"], batch_size=4, progress=False)
    n = len(clean)
    assert n == 8
    store = str(tmp_path / "a.zarr")
    status = run_and_sigkill(_CHILD_SHARDED, [store], when=lambda: _done(store) >= 4, timeout=300)
    assert status == -signal.SIGKILL, "segment finished before it could be interrupted"
    has = open_store(store).has_mask("thalnet", "T1w")
    halves = [bool(has[:4].all()), bool(has[4:].all())]
    assert sorted(halves) == [False, True] and not has[4 * halves.index(False):][:4].any()  # a whole shard's records, or none
    again = segment_store(store, "thalnet", ["T1w"], batch_size=4, progress=False)
    todo = list(range(4 * halves.index(False), 4 * halves.index(False) + 4))
    assert sorted(again.scan) == todo and (again.status == "written").all()
    a, b = open_store(store), open_store(str(tmp_path / "b.zarr"))
    for name in ("masks/thalnet/T1w", "probs/thalnet/T1w"):
        z = a.zarr_array(name)
        assert is_sharded(z) and scans_per_object(z) == 4
        files = [f for _, _, fs in os.walk(os.path.join(store, name)) for f in fs if f != "zarr.json"]
        assert len(files) == 2
    for i in range(a.n_scans):
        np.testing.assert_array_equal(a.load_mask("thalnet", "T1w", i), b.load_mask("thalnet", "T1w", i))
        np.testing.assert_array_equal(a.load_prob("thalnet", "T1w", i), b.load_prob("thalnet", "T1w", i))
