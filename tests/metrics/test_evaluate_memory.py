"""evaluate streams: one task per block of scans, each reading its own masks, so what a
worker holds is bounded by the blocks in flight, not by the cohort. Read from the
scheduler as a property of the graph (the bytes of every task result, the task count),
never as a timing, on a real cluster of worker processes."""

import dask
import numpy as np
import pytest
from distributed import Client, LocalCluster
from distributed.diagnostics.plugin import SchedulerPlugin

from thaldask.metrics import evaluate
from thaldask.testing import STORE_GRID, make_store

pytestmark = pytest.mark.slow
BLOCK = 4


class _Results(SchedulerPlugin):
    """Records (key, nbytes) of every task result that reached memory."""

    name = "thaldask-test-results"

    def __init__(self):
        self.seen = []

    def start(self, scheduler):
        self.scheduler = scheduler

    def transition(self, key, start, finish, *args, **kwargs):
        if finish == "memory":
            ts = self.scheduler.tasks.get(key)
            self.seen.append((str(key), int(ts.nbytes) if ts is not None else -1))


def _seen(dask_scheduler):
    return dask_scheduler.plugins[_Results.name].seen


def _profile(tmp_path, n_subjects):
    store, _ = make_store(str(tmp_path / f"c{n_subjects}.zarr"), n_subjects=n_subjects, seed=1)
    with dask.config.set({"thaldask.metrics.scans-per-task": BLOCK}), LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0"
    ) as lc, Client(lc) as client:
        client.register_plugin(_Results())
        ds = evaluate(store.path, client=client, progress=False, surface=False)
        seen = client.run_on_scheduler(_seen)
    return store, ds, seen


def test_evaluate_worker_memory_is_bounded_by_the_block_not_the_cohort(tmp_path):
    small = _profile(tmp_path, 6)  # 12 scans
    large = _profile(tmp_path, 24)  # 48 scans
    mask_bytes = int(np.prod(STORE_GRID))  # one scan's uint8 mask
    for store, ds, seen in (small, large):
        n = store.n_scans
        assert seen, "no task reached memory"
        # no task result holds a mask: every result is a block's few numbers
        assert max(b for _, b in seen) < mask_bytes
        rows = int(np.isfinite(ds["volume_mm3"].sel(side="total")).sum())
        assert rows >= n  # every stored mask was scored
        # one task per block of scans and GT: several (scan, mask) rows per task
        assert rows >= 2 * len(seen), (rows, len(seen))
    assert len(large[2]) <= large[0].n_scans  # never more than one task per scan
    # the largest result does not grow with the cohort
    assert max(b for _, b in large[2]) == max(b for _, b in small[2])
    assert len(large[2]) > len(small[2])  # more blocks, not bigger ones
