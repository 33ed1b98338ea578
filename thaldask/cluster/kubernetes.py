"""Kubernetes through the dask-kubernetes operator, from the manifests in ``deploy/kubernetes``.

The manifests are the single source of truth: ``kubectl apply -k`` deploys them as they are,
and the ``kubernetes`` cluster kind launches the same DaskCluster and DaskWorkerGroups from
Python (``KubeCluster(custom_cluster_spec=...)``), with replica counts overridden from the
cluster section. Volumes, Secrets and the ConfigMap that the pods mount must exist already.
"""

from __future__ import annotations

import copy
import shutil
import subprocess
from pathlib import Path

from thaldask._optional import attempt_import
from thaldask.cluster.spec import ClusterSpec
from thaldask.errors import ConfigError, MissingDependencyError

__all__ = ["render_manifests", "dask_objects", "plan_kubernetes", "start_kubernetes"]

DASK_GROUP = "kubernetes.dask.org"
GPU_RESOURCE = "nvidia.com/gpu"


def render_manifests(path: str | Path) -> list[dict]:
    """Load Kubernetes objects from a kustomize directory or YAML file(s).

    A directory holding ``kustomization.yaml`` is rendered with ``kubectl kustomize`` (or
    ``kustomize build``); this works offline. Other directories: every ``*.yaml`` in it.
    Returns the objects as dicts, in file order.
    """
    import yaml

    p = Path(path)
    if not p.exists():
        raise ConfigError(f"{p}: Kubernetes manifests not found")
    if p.is_dir() and any(
        (p / n).is_file() for n in ("kustomization.yaml", "kustomization.yml", "Kustomization")
    ):
        if shutil.which("kubectl"):
            cmd = ["kubectl", "kustomize", str(p)]
        elif shutil.which("kustomize"):
            cmd = ["kustomize", "build", str(p)]
        else:
            raise MissingDependencyError(
                f"{p}: rendering a kustomize directory needs `kubectl` or `kustomize` on PATH "
                f"(or give a rendered YAML file: kubectl kustomize {p} > cluster.yaml)"
            )
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        if res.returncode != 0:
            msg = (res.stderr.strip().splitlines() or ["failed"])[-1]
            raise ConfigError(f"{p}: {' '.join(cmd[:2])} failed: {msg}")
        texts = [res.stdout]
    elif p.is_dir():
        texts = [f.read_text() for f in sorted(p.glob("*.y*ml"))]
    else:
        texts = [p.read_text()]
    objs = []
    for text in texts:
        try:
            objs.extend(d for d in yaml.safe_load_all(text) if d)
        except yaml.YAMLError as exc:
            raise ConfigError(f"{p}: not valid YAML ({str(exc).splitlines()[0]})") from None
    return objs


def _is_dask(obj: dict, kind: str) -> bool:
    return obj.get("kind") == kind and str(obj.get("apiVersion", "")).startswith(DASK_GROUP)


def _containers(worker_spec: dict) -> list[dict]:
    return worker_spec.get("spec", {}).get("containers", [])


def _requests_gpu(group: dict) -> bool:
    for c in _containers(group["spec"]["worker"]):
        res = c.get("resources", {})
        if GPU_RESOURCE in res.get("limits", {}) or GPU_RESOURCE in res.get("requests", {}):
            return True
    return False


def dask_objects(
    objs: list[dict], *, source: str = "manifests"
) -> tuple[dict, list[dict], dict | None]:
    """Split rendered objects into (DaskCluster, [DaskWorkerGroup], DaskAutoscaler or None)."""
    clusters = [o for o in objs if _is_dask(o, "DaskCluster")]
    if len(clusters) != 1:
        raise ConfigError(f"{source}: expected exactly one DaskCluster, found {len(clusters)}")
    cluster = clusters[0]
    name = cluster["metadata"]["name"]
    groups = [o for o in objs if _is_dask(o, "DaskWorkerGroup")]
    for g in groups:
        if g["spec"].get("cluster") != name:
            raise ConfigError(
                f"{source}: DaskWorkerGroup {g['metadata']['name']!r} belongs to cluster "
                f"{g['spec'].get('cluster')!r}, not {name!r}"
            )
    scalers = [o for o in objs if _is_dask(o, "DaskAutoscaler")]
    return cluster, groups, (scalers[0] if scalers else None)


def _worker_summary(worker: dict) -> dict:
    c = _containers(worker)[0]
    args = [str(a) for a in c.get("args", []) + c.get("command", [])]
    dask_resources = {}
    if "--resources" in args:
        for item in args[args.index("--resources") + 1].replace(",", " ").split():
            k, _, v = item.partition("=")
            dask_resources[k] = float(v)
    return {
        "replicas": worker.get("replicas", 1),
        "image": c.get("image"),
        "requests": c.get("resources", {}).get("requests", {}),
        "limits": c.get("resources", {}).get("limits", {}),
        "dask_resources": dask_resources,
        "node_selector": worker.get("spec", {}).get("nodeSelector", {}),
    }


def _apply_overrides(spec: ClusterSpec, cluster: dict, groups: list[dict]) -> None:
    n, ngpu = spec.get("n_workers"), spec.get("gpu_workers")
    gpu_groups = [g for g in groups if _requests_gpu(g)]
    cpu_groups = [g for g in groups if not _requests_gpu(g)]
    if ngpu is not None:
        if ngpu and not gpu_groups:
            raise ConfigError(
                f"{spec.source}: gpu_workers={ngpu} but the manifests have no DaskWorkerGroup "
                f"requesting {GPU_RESOURCE} (use deploy/kubernetes/overlays/gpu)"
            )
        for g in gpu_groups:
            g["spec"]["worker"]["replicas"] = ngpu
    if n is not None:
        for g in cpu_groups or [cluster]:
            g["spec"]["worker"]["replicas"] = n


def load_kubernetes(spec: ClusterSpec) -> tuple[dict, list[dict], dict | None, list[dict]]:
    """Render the manifests of ``spec`` and apply its replica overrides."""
    path = spec.path("manifests")
    objs = copy.deepcopy(render_manifests(path))
    cluster, groups, scaler = dask_objects(objs, source=str(path))
    _apply_overrides(spec, cluster, groups)
    return cluster, groups, scaler, objs


def plan_kubernetes(spec: ClusterSpec) -> dict:
    """What the ``kubernetes`` kind would create, without contacting any cluster."""
    import yaml

    cluster, groups, scaler, objs = load_kubernetes(spec)
    name = cluster["metadata"]["name"]
    namespace = spec.get("namespace") or cluster["metadata"].get("namespace", "default")
    ports = {p["name"]: p["port"] for p in cluster["spec"]["scheduler"]["service"].get("ports", [])}
    protocol = "tls" if spec.tls or _uses_tls(cluster) else "tcp"
    worker_groups = {"default": _worker_summary(cluster["spec"]["worker"])}
    for g in groups:
        short = g["metadata"]["name"].removeprefix(f"{name}-")
        worker_groups[short] = _worker_summary(g["spec"]["worker"])
    dask_objs = [cluster, *groups] + ([scaler] if scaler else [])
    return {
        "kind": "kubernetes",
        "cluster_name": name,
        "namespace": namespace,
        "scheduler_address": f"{protocol}://{name}-scheduler.{namespace}:{ports.get('tcp-comm', 8786)}",
        "dashboard_port": ports.get("http-dashboard"),
        "worker_groups": worker_groups,
        "n_workers": sum(g["replicas"] for g in worker_groups.values()),
        "gpus": sum(
            g["replicas"] * int(g["limits"].get(GPU_RESOURCE, 0)) for g in worker_groups.values()
        ),
        "autoscaler": (
            {"minimum": scaler["spec"]["minimum"], "maximum": scaler["spec"]["maximum"]}
            if scaler
            else None
        ),
        "other_objects": [
            f"{o['kind']}/{o['metadata']['name']}" for o in objs if o not in dask_objs
        ],
        "secrets": _secrets(dask_objs),
        "manifests": yaml.safe_dump_all(dask_objs, sort_keys=False),
    }


def _secrets(objs: list[dict]) -> dict[str, bool]:
    """Secrets the Dask pods reference: name -> required (False when marked optional)."""
    found: dict[str, bool] = {}

    def add(name: str, optional: bool) -> None:
        found[name] = found.get(name, False) or not optional

    for o in objs:
        spec = o["spec"]
        groups = [spec.get("worker"), spec.get("scheduler")]
        for pod in (g.get("spec", {}) for g in groups if g):
            for v in pod.get("volumes", []):
                if "secret" in v:
                    add(v["secret"]["secretName"], v["secret"].get("optional", False))
            for c in pod.get("containers", []):
                for ef in c.get("envFrom", []):
                    if "secretRef" in ef:
                        add(ef["secretRef"]["name"], ef["secretRef"].get("optional", False))
    return found


def _uses_tls(cluster: dict) -> bool:
    c = _containers(cluster["spec"]["scheduler"])[0]
    args = [str(a) for a in c.get("args", [])]
    return "--protocol" in args and args[args.index("--protocol") + 1].startswith("tls")


def start_kubernetes(spec: ClusterSpec, *, quiet: bool = False):
    """Create the DaskCluster and its worker groups; return the ``KubeCluster``."""
    operator = attempt_import("dask_kubernetes.operator", extra="kubernetes")
    cluster_obj, groups, scaler, _ = load_kubernetes(spec)
    name = cluster_obj["metadata"]["name"]
    namespace = spec.get("namespace") or cluster_obj["metadata"].get("namespace")
    kwargs = {"custom_cluster_spec": cluster_obj, "quiet": quiet}
    if namespace:
        kwargs["namespace"] = namespace
    if spec.get("shutdown_on_close") is not None:
        kwargs["shutdown_on_close"] = spec.get("shutdown_on_close")
    if spec.get("resource_timeout") is not None:
        kwargs["resource_timeout"] = spec.get("resource_timeout")
    cluster = operator.KubeCluster(**kwargs)
    try:
        for g in groups:
            short = g["metadata"]["name"].removeprefix(f"{name}-")
            try:
                cluster.add_worker_group(short, custom_spec=g["spec"]["worker"])
            except Exception as exc:
                # the cluster was already deployed (kubectl apply -k): keep its group and
                # only set the replica count asked for here
                if "409" not in str(exc) and "already exists" not in str(exc).lower():
                    raise
                cluster.scale(g["spec"]["worker"].get("replicas", 1), worker_group=short)
        if scaler is not None and spec.get("adapt", True):
            cluster.adapt(minimum=scaler["spec"]["minimum"], maximum=scaler["spec"]["maximum"])
    except BaseException:
        cluster.close()
        raise
    return cluster
