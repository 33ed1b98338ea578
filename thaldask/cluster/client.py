"""Open a Dask client for a thaldask command."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import dask.config

from thaldask import config
from thaldask.cluster.kubernetes import plan_kubernetes, start_kubernetes
from thaldask.cluster.slurm import plan_slurm, start_slurm
from thaldask.cluster.spec import ClusterSpec, load_cluster_spec
from thaldask.errors import ConfigError

__all__ = ["get_client", "describe_cluster"]


def _local_workers() -> int:
    n = os.cpu_count() or 1
    return max(1, n)


def _local_sizing(spec: ClusterSpec, n_workers, threads_per_worker, memory_limit, resources):
    """Local cluster sizing: explicit arguments, then the section, then dask.config."""
    tpw = (
        threads_per_worker
        or spec.get("threads_per_worker")
        or config.get("cluster.threads-per-worker")
        or 1
    )
    n = (
        n_workers
        or spec.get("n_workers")
        or config.get("cluster.n-workers")
        or max(1, _local_workers() // tpw)
    )
    mem = memory_limit or spec.get("memory_limit") or config.get("cluster.memory-limit") or "auto"
    res = resources if resources is not None else spec.get("resources")
    return n, tpw, mem, res


def describe_cluster(cluster_config=None, **local_overrides) -> dict:
    """What :func:`get_client` would start for ``cluster_config``, without starting it.

    Returns a dict with at least ``kind`` and ``n_workers``; the kubernetes kind adds the
    rendered Dask manifests (``manifests``), the slurm kind the batch script (``job_script``).
    """
    spec = load_cluster_spec(cluster_config)
    if spec.kind == "local":
        from dask.utils import format_bytes, parse_bytes
        from distributed.system import MEMORY_LIMIT

        n, tpw, mem, res = _local_sizing(
            spec,
            local_overrides.get("n_workers"),
            local_overrides.get("threads_per_worker"),
            local_overrides.get("memory_limit"),
            local_overrides.get("resources"),
        )
        per_worker = MEMORY_LIMIT // n if mem == "auto" else parse_bytes(mem)
        return {
            "kind": "local",
            "n_workers": n,
            "threads_per_worker": tpw,
            "memory_per_worker": format_bytes(per_worker),
            "resources": res or {},
            "processes": True,
            "host_cores": _local_workers(),
            "host_memory": format_bytes(MEMORY_LIMIT),
        }
    if spec.kind == "address":
        tls = spec.tls
        return {
            "kind": "address",
            "address": spec.get("address"),
            "n_workers": None,
            "tls": (
                {"ca_file": str(tls.ca_file), "cert": str(tls.cert), "key": str(tls.key)}
                if tls
                else None
            ),
            "require_encryption": bool(tls),
        }
    if spec.kind == "kubernetes":
        return plan_kubernetes(spec)
    return plan_slurm(spec)


@contextlib.contextmanager
def _connect(address, security=None, timeout=None):
    from distributed import Client

    kwargs = {}
    if security is not None:
        kwargs["security"] = security
    if timeout is not None:
        kwargs["timeout"] = timeout
    try:
        client = Client(address, **kwargs)
    except OSError as exc:
        raise ConfigError(f"cannot connect to the Dask scheduler at {address}: {exc}") from None
    try:
        yield client
    finally:
        client.close()


@contextlib.contextmanager
def get_client(
    scheduler: str | None = None,
    *,
    n_workers: int | None = None,
    threads_per_worker: int | None = None,
    memory_limit: str | None = None,
    resources: dict | None = None,
    quiet: bool = False,
    cluster_config=None,
) -> Iterator[distributed.Client]:  # noqa: F821
    """Yield a ``distributed.Client``; close what was started on exit.

    Parameters
    ----------
    scheduler : address of an existing scheduler (``tcp://host:8786`` or ``tls://...``);
        ``None`` starts what ``cluster_config`` describes (default: a ``LocalCluster`` with
        worker processes sized to the machine's cores and memory).
    n_workers, threads_per_worker, memory_limit : local cluster sizing (override the section;
        defaults from ``thaldask.cluster.*`` in dask.config).
    resources : worker resources for the local cluster, e.g. ``{"gpu": 1}``.
    cluster_config : a cluster section: path to a YAML file (the section itself or a file with
        a ``cluster:`` key), a dict, or a :class:`~thaldask.cluster.spec.ClusterSpec`. Kinds
        ``local``, ``address`` (``tls://`` with certificates, encryption required),
        ``kubernetes`` (dask-kubernetes operator, extra ``kubernetes``) and ``slurm``
        (dask-jobqueue, extra ``slurm``). With ``scheduler`` given, only its ``tls`` option
        is used.

    Raises
    ------
    ConfigError
        Invalid section, or the scheduler cannot be reached.
    MissingDependencyError
        The kind needs an optional package that is not installed (names the extra).
    """
    from distributed import Client, LocalCluster

    spec = load_cluster_spec(cluster_config)

    if scheduler:
        security = spec.tls.security() if spec.tls is not None else None
        with _connect(scheduler, security) as client:
            yield client
        return

    if spec.kind == "address":
        security = spec.tls.security() if spec.tls is not None else None
        with _connect(spec.get("address"), security, spec.get("timeout")) as client:
            yield client
        return

    if spec.kind in ("kubernetes", "slurm"):
        start = start_kubernetes if spec.kind == "kubernetes" else start_slurm
        cluster = start(spec, quiet=quiet)
        try:
            security = spec.tls.security() if spec.tls is not None else None
            client = Client(cluster, security=security) if security else Client(cluster)
            try:
                yield client
            finally:
                client.close()
        finally:
            cluster.close()
        return

    n, tpw, mem, res = _local_sizing(spec, n_workers, threads_per_worker, memory_limit, resources)
    # each worker takes dask's config when it starts: its statistical profiler keeps up to
    # 1,000 one-second call-tree samples (about 180 MB), off unless asked for
    with dask.config.set({"distributed.worker.profile.enabled": bool(config.get("cluster.worker-profile"))}):
        cluster = LocalCluster(
            n_workers=n,
            threads_per_worker=tpw,
            processes=True,
            memory_limit=mem,
            host=spec.get("host"),
            dashboard_address=spec.get("dashboard_address")
            or config.get("cluster.dashboard-address", ":0"),
            resources=res,
            silence_logs=40 if quiet else 30,
        )
    client = Client(cluster)
    try:
        yield client
    finally:
        client.close()
        cluster.close()
