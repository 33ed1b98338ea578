"""Open a Dask client for a thaldask command."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

from thaldask import config


def _local_workers() -> int:
    n = os.cpu_count() or 1
    return max(1, n)


@contextlib.contextmanager
def get_client(
    scheduler: str | None = None,
    *,
    n_workers: int | None = None,
    threads_per_worker: int | None = None,
    memory_limit: str | None = None,
    resources: dict | None = None,
    quiet: bool = False,
) -> Iterator["distributed.Client"]:  # noqa: F821
    """Yield a ``distributed.Client``; close what was started on exit.

    Parameters
    ----------
    scheduler : address of an existing scheduler (``tcp://host:8786`` or ``tls://...``);
        ``None`` starts a ``LocalCluster`` with worker processes sized to the machine.
    n_workers, threads_per_worker, memory_limit : local cluster sizing (defaults from
        ``thaldask.cluster.*`` in dask.config).
    resources : worker resources for the local cluster, e.g. ``{"gpu": 1}``.
    """
    from distributed import Client, LocalCluster

    if scheduler:
        client = Client(scheduler)
        try:
            yield client
        finally:
            client.close()
        return
    n = n_workers or config.get("cluster.n-workers") or _local_workers()
    tpw = threads_per_worker or config.get("cluster.threads-per-worker") or 1
    cluster = LocalCluster(
        n_workers=n,
        threads_per_worker=tpw,
        processes=True,
        memory_limit=memory_limit or config.get("cluster.memory-limit") or "auto",
        dashboard_address=config.get("cluster.dashboard-address", ":0"),
        resources=resources,
        silence_logs=40 if quiet else 30,
    )
    client = Client(cluster)
    try:
        yield client
    finally:
        client.close()
        cluster.close()
