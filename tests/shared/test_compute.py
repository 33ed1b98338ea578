"""The batched task runner: local threads and a real LocalCluster, per-batch errors."""

from __future__ import annotations

import pytest

from thaldask._shared.compute import active_client, run_batches, split_batches


def square_batch(batch, offset=0):
    return [x * x + offset for x in batch]


def failing_batch(batch):
    if 3 in batch:
        raise ValueError(f"bad item in {batch}")
    return list(batch)


def test_split_batches_bounds_size_and_keeps_order():
    items = list(range(37))
    b = split_batches(items, max_per_batch=16, slots=2)
    assert [x for grp in b for x in grp] == items
    assert max(map(len, b)) <= 16 and len(b) >= 4


def test_run_batches_local_threads_keeps_batch_order(capsys):
    out = run_batches(square_batch, [[1, 2], [3], [4, 5, 6]], label="t", kwargs={"offset": 1},
                      progress=True)
    assert out == [[2, 5], [10], [17, 26, 37]]
    err = capsys.readouterr().err
    assert "t: 6/6 scans (100%)" in err


def test_run_batches_local_error_goes_to_its_batch_only():
    out = run_batches(failing_batch, [[1], [3], [5]], label="t", progress=False,
                      on_error=lambda b, exc: f"failed: {exc}")
    assert out == [[1], "failed: bad item in [3]", [5]]


def test_run_batches_without_handler_raises_after_the_rest():
    with pytest.raises(ValueError, match="bad item"):
        run_batches(failing_batch, [[1], [3]], label="t", progress=False)


@pytest.mark.slow
def test_run_batches_uses_the_active_distributed_client():
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=":0") as lc, \
            Client(lc) as client:
        assert active_client() is client
        out = run_batches(failing_batch, [[1, 2], [3], [4]], label="t", progress=False,
                          on_error=lambda b, exc: type(exc).__name__)
        assert out == [[1, 2], "ValueError", [4]]
        # the tasks ran on the cluster
        prefixes = client.run_on_scheduler(lambda dask_scheduler: list(dask_scheduler.task_prefixes))
        assert "thaldask-t" in prefixes
    assert active_client() is None


def _tasks_of_run(dask_scheduler, prefix):
    return sum(1 for k in dask_scheduler.tasks if str(k).startswith(prefix))


def known_to_scheduler(batch, prefix):
    """How many tasks of this run the scheduler holds while this batch runs."""
    from distributed import get_client

    return [get_client().run_on_scheduler(_tasks_of_run, prefix=prefix)]


@pytest.mark.slow
def test_run_batches_submits_a_window_of_batches_and_keeps_order():
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=":0") as lc, \
            Client(lc) as client:
        batches = [[i] for i in range(10)]
        # in order, and never more than 2 tasks per thread on the scheduler
        seen = run_batches(known_to_scheduler, batches, client=client, label="win", progress=False,
                           key_prefix="thaldask-win", args=("thaldask-win",), in_flight=2)
        windowed = max(x for b in seen for x in b)
        assert windowed <= 2
        order = []
        out = run_batches(square_batch, batches, client=client, label="t", progress=False,
                          in_flight=3, on_result=lambda i, r: order.append(i))
        assert out == [[i * i] for i in range(10)] and sorted(order) == list(range(10))
        # a window wider than the stage: the scheduler holds most of its tasks at once
        seen = run_batches(known_to_scheduler, batches, client=client, label="all", progress=False,
                           key_prefix="thaldask-all", args=("thaldask-all",), in_flight=100)
        assert max(x for b in seen for x in b) >= 5 > windowed


def test_run_batches_empty():
    assert run_batches(square_batch, [], label="t", progress=False) == []
