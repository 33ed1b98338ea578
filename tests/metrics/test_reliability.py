"""Reliability of evaluate: a worker process killed mid-run, a client killed mid-run."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import zarr

from thaldask.metrics.evaluate import evaluate
from thaldask.store.format import METRICS
from thaldask.testing import make_store

VARS = ("dice", "jaccard", "sensitivity", "precision", "hd95_mm", "assd_mm", "volume_mm3", "gt_volume_mm3")


def _assert_same(a, b):
    for v in VARS:
        np.testing.assert_array_equal(a[v].values, b[v].values, err_msg=v)


def _tokens_done(path):
    done = total = 0
    root = zarr.open_group(path, mode="r")
    for name, node in root[METRICS].members(max_depth=None):
        if name.endswith("token") and not name.startswith("_consensus") and hasattr(node, "shape"):
            t = np.asarray(node[...])
            done += int((t != 0).any(axis=1).sum())
            total += t.shape[0]
    return done, total


@pytest.mark.slow
def test_evaluate_worker_sigkilled_midrun_completes_equal_to_clean_run(tmp_path):
    import dask
    from distributed import Client, LocalCluster

    st, _ = make_store(tmp_path / "a" / "cohort.zarr", n_subjects=12, grid=(40, 40, 36))
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    clean = evaluate(str(tmp_path / "b" / "cohort.zarr"), progress=False, csv_path="")

    with dask.config.set({"thaldask.metrics.scans-per-task": 1}), LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0", silence_logs=50
    ) as cluster, Client(cluster) as client:
        pids = client.run(os.getpid)
        box = {}
        th = threading.Thread(target=lambda: box.update(ds=evaluate(st.path, client=client, progress=False, csv_path="")))
        th.start()
        killed = None
        deadline = time.time() + 120
        while th.is_alive() and time.time() < deadline:
            busy = {w: k for w, k in client.processing().items() if k}
            started = any(k for k in client.processing().values())
            if started and busy:
                w = next(iter(busy))
                killed = pids.get(w)
                if killed:
                    os.kill(killed, signal.SIGKILL)
                    break
            time.sleep(0.01)
        th.join(300)
    assert killed is not None, "evaluate finished before a worker could be killed"
    ds = box["ds"]
    _assert_same(ds, clean)
    assert ds.attrs["n_computed"] == clean.attrs["n_computed"]


_CHILD = """
import sys, dask
from thaldask.metrics.evaluate import evaluate
with dask.config.set({"thaldask.metrics.scans-per-task": 1, "thaldask.metrics.cache-write-seconds": 0}):
    evaluate(sys.argv[1], progress=False, csv_path="")
"""


@pytest.mark.slow
def test_evaluate_client_killed_midrun_resumes_only_missing_rows(tmp_path):
    st, _ = make_store(tmp_path / "a" / "cohort.zarr", n_subjects=16, grid=(48, 48, 40))
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    clean = evaluate(str(tmp_path / "b" / "cohort.zarr"), progress=False, csv_path="")
    n_total = clean.attrs["n_computed"]

    # prepare the cache arrays so the child only computes, then kill it part-way through
    proc = subprocess.Popen([sys.executable, "-c", _CHILD, st.path], env={**os.environ, "OMP_NUM_THREADS": "1"})
    done = 0
    deadline = time.time() + 120
    while proc.poll() is None and time.time() < deadline:
        try:
            done, _ = _tokens_done(st.path)
        except Exception:  # arrays being created or a chunk being written
            done = 0
        if done >= 3:
            os.kill(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.005)
    proc.wait(60)
    assert proc.returncode == -signal.SIGKILL, "evaluate finished before it could be interrupted"
    done, _ = _tokens_done(st.path)
    assert 0 < done < n_total
    resumed = evaluate(st.path, progress=False, csv_path="")
    assert resumed.attrs["n_computed"] == n_total - done
    assert resumed.attrs["n_reused"] == done
    _assert_same(resumed, clean)
