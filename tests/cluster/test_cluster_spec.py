"""Cluster sections: parsing, validation, `thaldask cluster check`, local and missing extras."""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

import dask
import pytest
import yaml
from click.testing import CliRunner

from thaldask.cli import main
from thaldask.cluster import get_client
from thaldask.cluster.client import describe_cluster
from thaldask.cluster.spec import load_cluster_spec
from thaldask.errors import ConfigError, MissingDependencyError

REPO = Path(__file__).resolve().parents[2]
OVERLAYS = REPO / "deploy" / "kubernetes" / "overlays"


def _write(tmp_path, section, name="cluster.yaml", wrap=True):
    p = tmp_path / name
    p.write_text(yaml.safe_dump({"cluster": section} if wrap else section))
    return p


def test_load_cluster_spec_none_local_default():
    spec = load_cluster_spec(None)
    assert spec.kind == "local"


def test_load_cluster_spec_file_without_section_local(tmp_path):
    p = tmp_path / "cohort.yaml"
    p.write_text("manifest: manifest.csv\nstore: store.zarr\n")
    assert load_cluster_spec(p).kind == "local"


def test_load_cluster_spec_hyphen_keys_and_bare_section(tmp_path):
    p = _write(tmp_path, {"kind": "local", "n-workers": 3, "threads-per-worker": 2}, wrap=False)
    spec = load_cluster_spec(p)
    assert spec.options == {"n_workers": 3, "threads_per_worker": 2}


def test_load_cluster_spec_relative_paths_from_file_folder(tmp_path):
    (tmp_path / "certs").mkdir()
    p = _write(
        tmp_path,
        {
            "kind": "address",
            "address": "tls://127.0.0.1:8786",
            "tls": {"ca_file": "certs/ca.crt", "cert": "certs/c.crt", "key": "certs/c.key"},
        },
    )
    tls = load_cluster_spec(p).tls
    assert tls.ca_file == tmp_path / "certs" / "ca.crt"


def test_load_cluster_spec_secret_dir_kubernetes_tls_names(tmp_path):
    spec = load_cluster_spec(
        {"kind": "address", "address": "tls://h:8786", "tls": {"secret_dir": str(tmp_path)}}
    )
    assert (spec.tls.ca_file.name, spec.tls.cert.name, spec.tls.key.name) == (
        "ca.crt",
        "tls.crt",
        "tls.key",
    )


@pytest.mark.parametrize(
    "section,match",
    [
        ({"kind": "yarn"}, "unknown cluster kind 'yarn'"),
        ({"kind": "local", "n_wokers": 2}, "no option 'n_wokers'"),
        ({"kind": "local", "n_workers": "two"}, "'n_workers' must be int"),
        ({"kind": "local", "n_workers": True}, "'n_workers' must be int"),
        ({"kind": "slurm", "jobs": -1}, "'jobs' must be >= 0"),
        ({"kind": "address"}, "needs an 'address'"),
        ({"kind": "address", "address": "http://h:8786"}, "tcp:// or tls://"),
        ({"kind": "address", "address": "tls://h:8786"}, "no 'tls' certificates"),
        (
            {"kind": "address", "address": "tls://h:8786", "tls": {"ca_file": "a"}},
            "needs ca_file, cert and key",
        ),
        ({"kind": "kubernetes"}, "needs 'manifests'"),
        ({"kind": "slurm", "gpus_per_job": 3, "processes": 2}, "multiple of processes"),
    ],
)
def test_load_cluster_spec_invalid_config_error(section, match):
    with pytest.raises(ConfigError, match=match):
        load_cluster_spec(section)


def test_load_cluster_spec_all_problems_listed():
    with pytest.raises(ConfigError) as info:
        load_cluster_spec({"kind": "local", "a": 1, "b": 2})
    assert len(info.value.problems) == 2


def test_load_cluster_spec_bad_yaml_names_file(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("cluster: [unclosed\n")
    with pytest.raises(ConfigError, match="c.yaml: not valid YAML"):
        load_cluster_spec(p)


def test_describe_local_sized_to_machine():
    import os

    plan = describe_cluster({"kind": "local", "threads_per_worker": 1})
    assert plan["n_workers"] == (os.cpu_count() or 1)
    assert plan["processes"] is True


def test_cluster_check_cli_local_json(tmp_path):
    p = _write(
        tmp_path, {"kind": "local", "n_workers": 2, "memory_limit": "1GiB", "resources": {"gpu": 1}}
    )
    res = CliRunner().invoke(main, ["cluster", "check", str(p), "--json"])
    assert res.exit_code == 0, res.output
    plan = json.loads(res.output)
    assert plan["n_workers"] == 2 and plan["memory_per_worker"] == "1.00 GiB"
    assert plan["resources"] == {"gpu": 1}


def test_cluster_check_cli_bad_section_one_line_exit_2(tmp_path):
    p = _write(tmp_path, {"kind": "local", "workers": 2})
    res = CliRunner().invoke(main, ["cluster", "check", str(p)])
    assert res.exit_code == 2
    assert "no option 'workers'" in res.output
    assert "Traceback" not in res.output


def test_cluster_check_cli_address_starts_nothing(tmp_path):
    # nothing listens on this port: check must not try to connect
    p = _write(tmp_path, {"kind": "address", "address": "tcp://127.0.0.1:9"})
    res = CliRunner().invoke(main, ["cluster", "check", str(p)])
    assert res.exit_code == 0, res.output
    assert "starts nothing" in res.output


@pytest.mark.requires_kubectl
def test_cluster_check_cli_kubernetes_gpu_overlay_counts(tmp_path):
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl is not installed")
    p = _write(
        tmp_path,
        {
            "kind": "kubernetes",
            "manifests": str(OVERLAYS / "gpu"),
            "n_workers": 5,
            "gpu_workers": 3,
        },
    )
    res = CliRunner().invoke(main, ["cluster", "check", str(p), "--json"])
    assert res.exit_code == 0, res.output
    plan = json.loads(res.output)
    groups = plan["worker_groups"]
    assert groups["gpu"]["replicas"] == 3 and groups["gpu"]["dask_resources"] == {"gpu": 1.0}
    assert groups["cpu"]["replicas"] == 5
    assert plan["gpus"] == 3
    assert plan["n_workers"] == groups["default"]["replicas"] + 5 + 3
    assert plan["scheduler_address"] == "tcp://thaldask-scheduler.thaldask:8786"
    docs = list(yaml.safe_load_all(plan["manifests"]))
    assert [d["kind"] for d in docs] == [
        "DaskCluster",
        "DaskWorkerGroup",
        "DaskWorkerGroup",
        "DaskAutoscaler",
    ]
    text = CliRunner().invoke(main, ["cluster", "check", str(p)]).output
    assert "kind: DaskWorkerGroup" in text and "3 GPU(s)" in text


@pytest.mark.requires_kubectl
def test_describe_kubernetes_cpu_overlay_gpu_workers_config_error(tmp_path):
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl is not installed")
    with pytest.raises(ConfigError, match="no DaskWorkerGroup requesting nvidia.com/gpu"):
        describe_cluster(
            {"kind": "kubernetes", "manifests": str(OVERLAYS / "cpu"), "gpu_workers": 1}
        )


@pytest.mark.requires_kubectl
def test_describe_kubernetes_tls_overlay_tls_address():
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl is not installed")
    plan = describe_cluster({"kind": "kubernetes", "manifests": str(OVERLAYS / "gpu-tls")})
    assert plan["scheduler_address"].startswith("tls://")
    assert plan["secrets"] == {"thaldask-tls": True, "thaldask-s3": False}


def test_describe_kubernetes_rendered_yaml_file(tmp_path):
    """A rendered YAML file works without kubectl."""
    docs = [
        {
            "apiVersion": "kubernetes.dask.org/v1",
            "kind": "DaskCluster",
            "metadata": {"name": "c"},
            "spec": {
                "scheduler": {
                    "service": {"ports": [{"name": "tcp-comm", "port": 8786}]},
                    "spec": {
                        "containers": [{"name": "s", "image": "i:1", "args": ["dask", "scheduler"]}]
                    },
                },
                "worker": {"replicas": 2, "spec": {"containers": [{"name": "w", "image": "i:1"}]}},
            },
        },
    ]
    p = tmp_path / "rendered.yaml"
    p.write_text(yaml.safe_dump_all(docs))
    plan = describe_cluster({"kind": "kubernetes", "manifests": str(p), "n_workers": 4})
    assert plan["n_workers"] == 4 and plan["autoscaler"] is None


def test_get_client_kubernetes_without_package_missing_dependency(monkeypatch, tmp_path):
    docs = [
        {
            "apiVersion": "kubernetes.dask.org/v1",
            "kind": "DaskCluster",
            "metadata": {"name": "c"},
            "spec": {
                "scheduler": {
                    "service": {},
                    "spec": {"containers": [{"name": "s", "image": "i:1"}]},
                },
                "worker": {"spec": {"containers": [{"name": "w", "image": "i:1"}]}},
            },
        }
    ]
    p = tmp_path / "rendered.yaml"
    p.write_text(yaml.safe_dump_all(docs))
    for mod in [m for m in sys.modules if m.startswith("dask_kubernetes")]:
        monkeypatch.delitem(sys.modules, mod)
    monkeypatch.setitem(sys.modules, "dask_kubernetes", None)  # import fails as if absent
    with pytest.raises(MissingDependencyError, match=r"thaldask\[kubernetes\]"):
        with get_client(cluster_config={"kind": "kubernetes", "manifests": str(p)}):
            pass


def test_get_client_slurm_without_package_missing_dependency(monkeypatch, tmp_path):
    for mod in [m for m in sys.modules if m.startswith("dask_jobqueue")]:
        monkeypatch.delitem(sys.modules, mod)
    monkeypatch.setitem(sys.modules, "dask_jobqueue", None)
    with pytest.raises(MissingDependencyError, match=r"thaldask\[slurm\]"):
        with get_client(cluster_config={"kind": "slurm"}):
            pass
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    res = CliRunner().invoke(main, ["cluster", "check", "--json", str(empty)])
    assert res.exit_code == 0, res.output  # an empty file: the local default, no extra needed
    assert json.loads(res.output)["kind"] == "local"


def test_get_client_address_unreachable_config_error():
    with pytest.raises(
        ConfigError, match="cannot connect to the Dask scheduler at tcp://127.0.0.1:9"
    ):
        with get_client(
            cluster_config={"kind": "address", "address": "tcp://127.0.0.1:9", "timeout": "1s"}
        ):
            pass


def test_get_client_address_tls_missing_certificate_file(tmp_path):
    cfg = {
        "kind": "address",
        "address": "tls://127.0.0.1:9",
        "tls": {
            "ca_file": str(tmp_path / "ca.crt"),
            "cert": str(tmp_path / "c"),
            "key": str(tmp_path / "k"),
        },
    }
    with pytest.raises(ConfigError, match="ca_file .* does not exist"):
        with get_client(cluster_config=cfg):
            pass


@pytest.mark.slow
def test_get_client_local_section_processes_and_resources(tmp_path):
    p = _write(
        tmp_path,
        {
            "kind": "local",
            "n_workers": 1,
            "threads_per_worker": 1,
            "memory_limit": "1GiB",
            "resources": {"gpu": 1},
        },
    )
    with get_client(cluster_config=p, quiet=True) as client:
        info = client.scheduler_info()["workers"]
        (w,) = info.values()
        assert w["resources"] == {"gpu": 1}
        assert w["memory_limit"] == 2**30
        import os

        # a separate worker process, not a thread of this one
        (pid,) = client.run(os.getpid).values()
        assert pid != os.getpid()
        assert client.submit(sum, [1, 2, 3], resources={"gpu": 1}).result() == 6
        # dask's statistical profiler is off in thaldask's workers (it would keep ~180 MB of
        # samples per worker): nothing is sampled during a 1.5 s task
        client.submit(time.sleep, 1.5, resources={"gpu": 1}).result()
        (hist,) = client.run(lambda dask_worker: len(dask_worker.profile_history)).values()
        (enabled,) = client.run(lambda: dask.config.get("distributed.worker.profile.enabled")).values()
        assert hist == 0 and enabled is False
