"""The TLS component configures Dask only through environment variables and arguments in the
manifests. Run the rendered scheduler, GPU worker and Job client configuration as real
processes on 127.0.0.1 (certificates made here stand in for the Secret's files)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers.cluster import free_port, make_certificates

pytestmark = [pytest.mark.requires_kubectl, pytest.mark.requires_cryptography, pytest.mark.slow]

MOUNT = "/etc/thaldask/tls"


def _env(container, certs_dir: Path) -> dict[str, str]:
    env = {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}
    return {k: v.replace(MOUNT, str(certs_dir)) for k, v in env.items()}


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _arg(args, flag, value):
    args = list(args)
    args[args.index(flag) + 1] = value
    return args


def test_tls_component_rendered_config_real_processes_encrypted(rendered, tmp_path):
    import dask.config
    from distributed import Client

    certs = tmp_path / "tls"
    make_certificates(certs)  # ca.crt, tls.crt, tls.key: the Secret's key names
    objs = rendered("gpu-tls")
    (cluster,) = [o for o in objs if o["kind"] == "DaskCluster"]
    (gpu,) = [
        o
        for o in objs
        if o["kind"] == "DaskWorkerGroup" and o["metadata"]["name"] == "thaldask-gpu"
    ]
    (job,) = [o for o in objs if o["kind"] == "Job"]
    sched_c = cluster["spec"]["scheduler"]["spec"]["containers"][0]
    worker_c = gpu["spec"]["worker"]["spec"]["containers"][0]
    job_c = job["spec"]["template"]["spec"]["containers"][0]

    port, dash = free_port(), free_port()
    base_env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "PYTHONUNBUFFERED": "1"}
    procs = []
    try:
        # scheduler: the manifest's arguments, bound to 127.0.0.1 and free ports
        s_args = _arg(sched_c["args"][2:], "--port", str(port))
        s_args = _arg(s_args, "--dashboard-address", f"127.0.0.1:{dash}") + ["--host", "127.0.0.1"]
        s_env = base_env | _env(sched_c, certs) | {"DASK_TEMPORARY_DIRECTORY": str(tmp_path / "s")}
        log = open(tmp_path / "scheduler.log", "w")
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "distributed.cli.dask_scheduler", *s_args],
                env=s_env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        )
        address = f"tls://127.0.0.1:{port}"
        # worker: the manifest's arguments and environment; the scheduler address the
        # manifest gives (tls://thaldask-scheduler:8786) pointed at 127.0.0.1
        w_env = base_env | _env(worker_c, certs)
        assert w_env["DASK_SCHEDULER_ADDRESS"] == "tls://thaldask-scheduler:8786"
        w_env["DASK_SCHEDULER_ADDRESS"] = address
        w_args = [a.replace("$(DASK_WORKER_NAME)", "gpu-0") for a in worker_c["args"][2:]]
        w_args = _arg(w_args, "--local-directory", str(tmp_path / "w"))
        w_args = _arg(w_args, "--dashboard-address", f"127.0.0.1:{free_port()}")
        w_args += ["--host", "127.0.0.1"]
        wlog = open(tmp_path / "worker.log", "w")
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "distributed.cli.dask_worker", *w_args],
                env=w_env,
                stdout=wlog,
                stderr=subprocess.STDOUT,
            )
        )
        # client: the Job's environment as Dask configuration, as `thaldask run` sees it
        j_env = _env(job_c, certs)
        assert j_env["DASK_SCHEDULER_ADDRESS"].startswith("tls://")
        cfg = dask.config.collect_env(
            {k: v for k, v in j_env.items() if k.startswith("DASK_DISTRIBUTED")}
        )
        with dask.config.set(_flat(cfg)):
            t0 = time.monotonic()
            while True:
                try:
                    client = Client(address, timeout="5s")
                    break
                except OSError:
                    if time.monotonic() - t0 > 60 or any(p.poll() is not None for p in procs):
                        raise
                    time.sleep(0.5)
            with client:
                client.wait_for_workers(1, timeout=90)
                (w,) = client.scheduler_info()["workers"].values()
                assert w["resources"] == {"gpu": 1}
                assert w["id"] == "gpu-0"
                assert client.submit(sum, [1, 2, 3], resources={"gpu": 1}).result() == 6
                assert client.scheduler.address.startswith("tls://")
        # without the Job's TLS settings the scheduler cannot be reached over plain TCP
        with pytest.raises(OSError):
            Client(f"tcp://127.0.0.1:{port}", timeout="3s")
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
