"""deploy/slurm: the example configuration and the job script generated from it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from thaldask.cluster.client import describe_cluster
from thaldask.cluster.slurm import job_script
from thaldask.cluster.spec import load_cluster_spec

SLURM = Path(__file__).resolve().parents[2] / "deploy" / "slurm"

pytestmark = pytest.mark.requires_slurm


@pytest.fixture(autouse=True)
def _jobqueue():
    pytest.importorskip("dask_jobqueue")


def _directives(script: str) -> dict[str, str]:
    out = {}
    for line in script.splitlines():
        if line.startswith("#SBATCH "):
            flag, _, value = line[len("#SBATCH ") :].replace("=", " ", 1).partition(" ")
            out[flag] = value.strip()
    return out


def _worker_command(script: str) -> list[str]:
    (line,) = [ln for ln in script.splitlines() if "distributed.cli.dask_worker" in ln]
    return line.split()


def test_job_script_example_gres_resources_memory_walltime():
    script = describe_cluster(SLURM / "cluster.yaml")["job_script"]
    d = _directives(script)
    assert d["--gres"] == "gpu:1"
    assert d["--mem"] == "64G"
    assert d["-t"] == "04:00:00"
    assert d["-p"] == "gpu" and d["-A"] == "ms-imaging"
    assert d["--cpus-per-task"] == "8"
    cmd = _worker_command(script)
    assert cmd[cmd.index("--resources") + 1] == "gpu=1"
    assert cmd[cmd.index("--nthreads") + 1] == "8"
    assert cmd[cmd.index("--memory-limit") + 1] == "64.00GiB"
    assert cmd[cmd.index("--local-directory") + 1] == "$TMPDIR"
    assert cmd[0] == "/opt/thaldask/venv/bin/python"
    assert "module load cuda/12.4" in script.splitlines()


def test_job_script_committed_copy_matches_generator():
    committed = (SLURM / "job-script.sh").read_text()
    body = "\n".join(ln for ln in committed.splitlines() if not ln.startswith("# "))
    generated = describe_cluster(SLURM / "cluster.yaml")["job_script"]
    assert body.strip() == generated.strip()


def test_job_script_preview_creates_no_log_directory(tmp_path):
    logs = tmp_path / "logs"
    spec = load_cluster_spec({"kind": "slurm", "log_directory": str(logs)})
    script = job_script(spec)
    assert f"#SBATCH -e {logs}/thaldask-%J.err" in script
    assert not logs.exists()


@pytest.mark.parametrize("gpus,procs,per_worker", [(2, 2, 1), (4, 2, 2), (2, 1, 2)])
def test_job_script_gpus_split_between_worker_processes(gpus, procs, per_worker):
    spec = load_cluster_spec(
        {
            "kind": "slurm",
            "cores": 8,
            "processes": procs,
            "memory": "32GiB",
            "gpus_per_job": gpus,
            "jobs": 3,
        }
    )
    plan = describe_cluster(spec)
    assert plan["n_workers"] == 3 * procs and plan["gpus"] == 3 * gpus
    assert plan["resources"] == {"gpu": per_worker}
    script = plan["job_script"]
    assert _directives(script)["--gres"] == f"gpu:{gpus}"
    cmd = _worker_command(script)
    assert cmd[cmd.index("--resources") + 1] == f"gpu={per_worker}"
    if procs > 1:
        assert cmd[cmd.index("--nworkers") + 1] == str(procs)
    else:
        assert "--nworkers" not in cmd
    assert plan["memory_per_worker"] == f"{32 / procs:.2f} GiB"


def test_job_script_cpu_only_no_gres_no_gpu_resource():
    script = describe_cluster(
        {"kind": "slurm", "cores": 4, "memory": "8GiB", "walltime": "00:30:00"}
    )["job_script"]
    assert "--gres" not in script
    assert "--resources" not in script
    assert _directives(script)["-t"] == "00:30:00"
    assert re.search(r"--mem=8G\b", script)


def test_job_script_explicit_gres_type_kept():
    spec = {"kind": "slurm", "gpus_per_job": 1, "gres": "gpu:a100:1"}
    script = describe_cluster(spec)["job_script"]
    assert _directives(script)["--gres"] == "gpu:a100:1"
    assert "gpu=1" in _worker_command(script)


@pytest.mark.requires_cryptography
def test_job_script_tls_worker_gets_certificates(tmp_path):
    from helpers.cluster import make_certificates

    certs = make_certificates(tmp_path / "tls")
    plan = describe_cluster({"kind": "slurm", "tls": {k: str(v) for k, v in certs.items()}})
    cmd = _worker_command(plan["job_script"])
    assert cmd[3].startswith("tls://")
    assert cmd[cmd.index("--tls-ca-file") + 1] == str(certs["ca_file"])
    assert cmd[cmd.index("--tls-cert") + 1] == str(certs["cert"])
    assert cmd[cmd.index("--tls-key") + 1] == str(certs["key"])
