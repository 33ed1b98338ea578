"""An ingest killed with SIGKILL part-way: the re-run writes only what is missing, and the
store then equals a clean run's."""

from __future__ import annotations

import os
import signal

import numpy as np
import pytest
from helpers.cluster import run_and_sigkill
from helpers.store import make_cohort

from thaldask.store import ingest, open_store
from thaldask.store.lock import lock_path

_CHILD = """
import sys, dask
from thaldask.store import ingest
with dask.config.set(scheduler="synchronous"):
    ingest(sys.argv[1], sys.argv[2], progress=True)
"""


def _written(store):
    try:
        st = open_store(store)
        return int(st.has_image("T1w").sum())
    except Exception:  # not created yet, or metadata being written
        return 0


@pytest.mark.slow
def test_ingest_client_killed_midrun_resumes_and_equals_a_clean_run(tmp_path):
    specs = [{"subject": f"s{k:02d}", "timepoint": "baseline", "shape": (40, 36, 32)} for k in range(24)]
    man = make_cohort(tmp_path / "in", specs)
    clean = str(tmp_path / "clean.zarr")
    ingest(man, clean, progress=False)
    store = str(tmp_path / "killed.zarr")
    status = run_and_sigkill(_CHILD, [man, store], when=lambda: _written(store) >= 3)
    assert status == -signal.SIGKILL, "ingest finished before it could be interrupted"
    done = _written(store)
    assert 0 < done < 24
    assert os.path.exists(lock_path(store))  # the killed process left its lock behind
    rep = ingest(man, store, progress=False)  # takes the stale lock over
    images = rep[rep.kind == "image"]
    assert int((images.status == "skipped").sum()) == done
    assert int((images.status == "written").sum()) == 24 - done
    a, b = open_store(clean), open_store(store)
    assert a.scans.equals(b.scans) and a.grid_shape == b.grid_shape
    for name in ("images/T1w", "masks/gt/T1w"):
        np.testing.assert_array_equal(a.zarr_array(name)[...], b.zarr_array(name)[...], err_msg=name)
        assert a.written(name).all() and b.written(name).all()
    assert not os.path.exists(lock_path(store))
