"""The pipeline on a scheduler and workers started as separate `dask` processes on 127.0.0.1,
once over TCP and once over TLS (certificates made here, encryption required)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner
from helpers.cluster import DaskProcesses, make_certificates

from thaldask.cli import main
from thaldask.cluster import get_client
from thaldask.errors import ConfigError

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    from thaldask.synth import make_cohort

    out = tmp_path_factory.mktemp("cohort")
    return make_cohort(out, n_subjects=2, n_timepoints=1, gt_fraction=1.0, seed=3, progress=False)


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    return make_certificates(tmp_path_factory.mktemp("certs"))


def _start(folder, tls):
    procs = DaskProcesses(folder, n_workers=1, tls=tls)
    cfg = {"cluster": {"kind": "address", "address": procs.address}}
    if tls:
        cfg["cluster"]["tls"] = {k: str(v) for k, v in tls.items()}
    procs.config_file = folder / "cluster.yaml"
    procs.config_file.write_text(yaml.safe_dump(cfg))
    try:
        with get_client(cluster_config=procs.config_file) as client:
            procs.wait_for_workers(client)
    except BaseException:
        procs.close()
        raise
    return procs


@pytest.fixture(scope="module")
def remote_tcp(tmp_path_factory):
    procs = _start(tmp_path_factory.mktemp("dask-tcp"), None)
    yield procs
    procs.close()


@pytest.fixture(scope="module")
def remote_tls(tmp_path_factory, certs):
    procs = _start(tmp_path_factory.mktemp("dask-tls"), certs)
    yield procs
    procs.close()


@pytest.fixture(params=["tcp", "tls"])
def remote(request):
    return request.getfixturevalue(f"remote_{request.param}")


def _run(args):
    res = CliRunner().invoke(main, args, catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return res.output


def test_pipeline_remote_processes_thaldask_run(remote, cohort, tmp_path):
    assert remote.address.startswith("tls://" if remote.tls else "tcp://")
    assert remote.address.startswith(("tcp://127.0.0.1:", "tls://127.0.0.1:"))
    store = str(tmp_path / "store.zarr")
    # `thaldask run` with the cluster section of the scheduler's config file
    cfg = {
        "store": store,
        "manifest": str(cohort.manifest),
        "clinical": str(cohort.clinical),
        "out": str(tmp_path / "out"),
        "synthetic": True,
        "cluster": yaml.safe_load(remote.config_file.read_text())["cluster"],
    }
    if not remote.tls:
        # the HTML report renders in this process, not on the cluster: once (TLS) is enough
        cfg["stages"] = {"report": {"enabled": False}}
    config = tmp_path / "cohort.yaml"
    config.write_text(yaml.safe_dump(cfg))
    out = _run(["run", str(config), "--no-progress"])
    assert "ingest: skipped" not in out and "evaluate: skipped" not in out, out
    # segmentation (the built-in model) runs between ingest and evaluate
    assert re.search(
        r"stages: ingest [\d.]+ s, segment [\d.]+ s, evaluate [\d.]+ s, stats [\d.]+ s", out
    ), out
    assert (tmp_path / "out" / "metrics.csv").is_file()

    from thaldask.store import open_store

    st = open_store(store)
    assert st.n_scans == cohort.n_scans == 2
    ds = st.open_results()
    dice = ds["dice"].sel(side="total").values
    finite = dice[np.isfinite(dice)]
    assert finite.size >= 4  # one subject with GT x four methods (x contrasts)
    assert ((finite > 0.5) & (finite <= 1.0)).all()

    # the work ran on the separate worker processes
    with get_client(cluster_config=remote.config_file) as client:
        prefixes = client.run_on_scheduler(
            lambda dask_scheduler: {
                k: sum(v.state_counts.values()) for k, v in dask_scheduler.task_prefixes.items()
            }
        )
        workers = client.scheduler_info()["workers"]
    assert len(workers) == remote.n_workers
    assert all(w["host"] == "127.0.0.1" for w in workers.values())
    assert sum(prefixes.values()) >= cohort.n_scans, prefixes


def test_healthcheck_remote_scheduler_dashboard_healthy(remote):
    script = Path(__file__).resolve().parents[2] / "deploy" / "docker" / "healthcheck.py"
    res = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=60,
        env={"THALDASK_HEALTH_PORTS": str(remote.dashboard_port), "PATH": "/usr/bin:/bin"},
    )
    assert res.returncode == 0, res.stderr


def test_tls_scheduler_client_without_certificate_refused(remote_tls):
    remote = remote_tls
    import asyncio
    import ssl

    from distributed.comm import connect

    # trusts the CA but presents no certificate of its own: the scheduler requires one
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(remote.tls["ca_file"]))
    ctx.check_hostname = False

    async def identity():
        comm = await connect(remote.address, timeout=5, ssl_context=ctx)
        try:
            await comm.write({"op": "identity"})
            return await comm.read()
        finally:
            comm.abort()

    with pytest.raises(OSError):
        asyncio.run(identity())
    # control: the same connection with the certificate is answered by the scheduler
    ctx.load_cert_chain(str(remote.tls["cert"]), str(remote.tls["key"]))
    assert asyncio.run(identity())["type"] == "Scheduler"


def test_tls_scheduler_plain_tcp_client_refused(remote_tls):
    remote = remote_tls
    from distributed import Client

    tcp = "tcp://" + remote.address.split("://", 1)[1]
    with pytest.raises(OSError):
        Client(tcp, timeout="5s")


def test_tls_scheduler_certificate_other_ca_refused(remote_tls, tmp_path):
    remote = remote_tls
    other = make_certificates(tmp_path / "other", name="intruder")
    cfg = {
        "kind": "address",
        "address": remote.address,
        "tls": {k: str(v) for k, v in other.items()},
        "timeout": "5s",
    }
    with pytest.raises(ConfigError, match="cannot connect"):
        with get_client(cluster_config=cfg):
            pass
