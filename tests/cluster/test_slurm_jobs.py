"""The slurm kind end to end on this machine: dask-jobqueue's SLURMCluster submits its real
generated batch script to a one-node stand-in for `sbatch`/`scancel` (a shell script that runs
the batch script in the background), and the worker it starts joins with the `gpu` resource."""

from __future__ import annotations

import os
import signal
import stat
import sys

import pytest

from thaldask.cluster import get_client

pytestmark = [pytest.mark.requires_slurm, pytest.mark.slow]

SBATCH = """#!/usr/bin/env bash
# one-node stand-in for sbatch: run the batch script in its own session, print the job id
set -euo pipefail
id=$RANDOM$RANDOM
cp "$1" "$JOBDIR/job-$id.sh"
setsid bash "$JOBDIR/job-$id.sh" > "$JOBDIR/job-$id.log" 2>&1 < /dev/null &
echo $! > "$JOBDIR/job-$id.pid"
echo "Submitted batch job $id"
"""
SCANCEL = """#!/usr/bin/env bash
for id in "$@"; do
  pid=$(cat "$JOBDIR/job-$id.pid")
  kill -TERM -- "-$pid" 2>/dev/null || true
done
"""


@pytest.fixture
def slurm_stand_in(tmp_path, monkeypatch):
    pytest.importorskip("dask_jobqueue")
    bindir, jobdir = tmp_path / "bin", tmp_path / "jobs"
    bindir.mkdir()
    jobdir.mkdir()
    for name, text in (("sbatch", SBATCH), ("scancel", SCANCEL)):
        f = bindir / name
        f.write_text(text)
        f.chmod(f.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("JOBDIR", str(jobdir))
    yield jobdir
    for pidfile in jobdir.glob("*.pid"):  # whatever scancel did not stop
        try:
            os.killpg(int(pidfile.read_text()), signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def test_slurm_cluster_generated_job_starts_gpu_worker(slurm_stand_in, tmp_path):
    section = {
        "kind": "slurm",
        "jobs": 1,
        "cores": 1,
        "processes": 1,
        "memory": "2GiB",
        "walltime": "00:10:00",
        "gpus_per_job": 1,
        "python": sys.executable,
        "scheduler_host": "127.0.0.1",
        "worker_extra_args": ["--host", "127.0.0.1", "--no-dashboard"],
        "local_directory": str(tmp_path / "scratch"),
        "log_directory": str(tmp_path / "logs"),
    }
    with get_client(cluster_config=section, quiet=True) as client:
        assert client.scheduler.address.startswith("tcp://127.0.0.1:")
        client.wait_for_workers(1, timeout=120)
        (w,) = client.scheduler_info()["workers"].values()
        assert w["resources"] == {"gpu": 1}
        assert w["host"] == "127.0.0.1"
        assert w["memory_limit"] == 2 * 2**30
        # a task that asks for the GPU resource runs on it
        assert (
            client.submit(lambda: os.getpid(), resources={"gpu": 1}, pure=False).result()
            != os.getpid()
        )
    (script,) = slurm_stand_in.glob("job-*.sh")
    text = script.read_text()
    assert "#SBATCH --gres=gpu:1" in text and "#SBATCH -t 00:10:00" in text
    assert "--resources gpu=1" in text
