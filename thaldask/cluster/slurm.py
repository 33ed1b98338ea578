"""SLURM through dask-jobqueue: one batch job per group of worker processes.

GPU jobs ask SLURM for the cards with ``--gres=gpu:N`` and each worker process advertises the
Dask resource ``gpu`` (lowercase, the name segmentation tasks request).
"""

from __future__ import annotations

import sys

from thaldask._optional import attempt_import
from thaldask.cluster.spec import ALL_ROLES, ClusterSpec

__all__ = ["slurm_kwargs", "job_script", "plan_slurm", "start_slurm"]

DEFAULTS = {"cores": 4, "processes": 1, "memory": "16GiB", "walltime": "01:00:00", "jobs": 1}


def slurm_kwargs(spec: ClusterSpec) -> dict:
    """Keyword arguments for ``dask_jobqueue.SLURMCluster`` (and ``SLURMJob``) from a section."""
    o = {**DEFAULTS, **{k: v for k, v in spec.options.items() if v is not None}}
    kw: dict = {
        "cores": o["cores"],
        "processes": o["processes"],
        "memory": o["memory"],
        "walltime": o["walltime"],
        "python": o.get("python") or sys.executable,
    }
    for key in ("queue", "account", "interface", "death_timeout"):
        if key in o:
            kw[key] = o[key]
    kw["job_name"] = o.get("name") or "thaldask"
    for key in ("local_directory", "log_directory"):
        if key in o:
            # "$TMPDIR"-style values are expanded by the job's shell on the compute node
            kw[key] = str(o[key]) if "$" in str(o[key]) else str(spec.path(key))
    directives = [str(d) for d in o.get("job_extra_directives", [])]
    worker_args = [str(a) for a in o.get("worker_extra_args", [])]
    gpus = o.get("gpus_per_job") or 0
    gres = o.get("gres") or (f"gpu:{gpus}" if gpus else None)
    if gres:
        directives.append(f"--gres={gres}")
    res = _resources(o)
    if res:
        worker_args += ["--resources", ",".join(f"{k}={v:g}" for k, v in res.items())]
    kw["job_extra_directives"] = directives
    kw["worker_extra_args"] = worker_args
    if o.get("job_script_prologue"):
        kw["job_script_prologue"] = [str(line) for line in o["job_script_prologue"]]
    tls = spec.tls
    if tls is not None:
        kw["protocol"] = "tls://"
    return kw


def _resources(o: dict) -> dict:
    """Dask resources each worker declares: the section's ``resources`` (e.g. ``{threads: 8,
    memory: 32e9}`` for external tools) plus ``gpu`` from ``gpus_per_job``."""
    res = {str(k): float(v) for k, v in (o.get("resources") or {}).items()}
    gpus = o.get("gpus_per_job") or 0
    if gpus:
        res["gpu"] = float(gpus // (o.get("processes") or 1))
    return res


def _security(spec: ClusterSpec):
    return spec.tls.security(roles=ALL_ROLES) if spec.tls is not None else None


def job_script(spec: ClusterSpec, scheduler_address: str = "tcp://SCHEDULER:8786") -> str:
    """The ``sbatch`` script one job would run, without starting a scheduler.

    Parameters
    ----------
    scheduler_address : written into the worker command line; the real one is known only
        once ``SLURMCluster`` has started its scheduler.
    """
    jobqueue = attempt_import("dask_jobqueue.slurm", extra="slurm")
    kw = slurm_kwargs(spec)
    kw.pop("protocol", None)
    security = _security(spec) if spec.tls else None
    if security is not None:
        kw["security"] = security
        if scheduler_address.startswith("tcp://"):
            scheduler_address = "tls://" + scheduler_address[len("tcp://") :]
    # dask-jobqueue creates the log directory when a job object is made; a preview must not
    # touch the file system, so render with a scratch folder and put the real path back
    import tempfile

    log_dir = kw.pop("log_directory", None)
    with tempfile.TemporaryDirectory() as scratch:
        if log_dir is not None:
            kw["log_directory"] = scratch
        job = jobqueue.SLURMJob(scheduler=scheduler_address, name="thaldask-worker", **kw)
        script = job.job_script()
    if log_dir is not None:
        script = script.replace(scratch, log_dir)
    return script


def plan_slurm(spec: ClusterSpec) -> dict:
    """What the ``slurm`` kind would submit, without submitting anything."""
    kw = slurm_kwargs(spec)
    o = {**DEFAULTS, **spec.options}
    procs = kw["processes"]
    gpus = o.get("gpus_per_job") or 0
    from dask.utils import format_bytes, parse_bytes

    return {
        "kind": "slurm",
        "jobs": o["jobs"],
        "n_workers": o["jobs"] * procs,
        "threads_per_worker": max(1, kw["cores"] // procs),
        "memory_per_worker": format_bytes(parse_bytes(kw["memory"]) // procs),
        "walltime": kw["walltime"],
        "queue": kw.get("queue"),
        "resources": _resources(o),
        "gpus": o["jobs"] * gpus,
        "job_script": job_script(spec),
    }


def start_slurm(spec: ClusterSpec, *, quiet: bool = False):
    """Start a ``SLURMCluster`` and submit ``jobs`` worker jobs; return the cluster."""
    jobqueue = attempt_import("dask_jobqueue", extra="slurm")
    kw = slurm_kwargs(spec)
    scheduler_options = {}
    if spec.get("scheduler_host"):
        scheduler_options["host"] = spec.get("scheduler_host")
    scheduler_options["dashboard_address"] = spec.get("dashboard_address") or ":0"
    security = _security(spec)
    if security is not None:
        kw["security"] = security
    cluster = jobqueue.SLURMCluster(
        scheduler_options=scheduler_options, silence_logs=40 if quiet else 30, **kw
    )
    try:
        cluster.scale(jobs=spec.get("jobs") or DEFAULTS["jobs"])
    except BaseException:
        cluster.close()
        raise
    return cluster
