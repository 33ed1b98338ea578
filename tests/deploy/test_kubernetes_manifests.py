"""deploy/kubernetes: every overlay renders offline and every object validates strictly."""

from __future__ import annotations

import re
from pathlib import Path

import click
import pytest
import yaml

from thaldask import pipeline

K8S = Path(__file__).resolve().parents[2] / "deploy" / "kubernetes"
OVERLAYS = sorted(p.name for p in (K8S / "overlays").iterdir() if p.is_dir())
K8S_VERSION = "1.32.0"
DASK_KINDS = {"DaskCluster", "DaskWorkerGroup", "DaskAutoscaler", "DaskJob"}

pytestmark = pytest.mark.requires_kubectl


def _pod_specs(obj: dict) -> list[dict]:
    """Every pod spec inside an object (built-in workloads and Dask resources)."""
    kind, spec = obj["kind"], obj.get("spec", {})
    if kind == "DaskCluster":
        return [spec["scheduler"]["spec"], spec["worker"]["spec"]]
    if kind == "DaskWorkerGroup":
        return [spec["worker"]["spec"]]
    if kind == "DaskJob":
        return [
            spec["job"]["spec"],
            *_pod_specs({"kind": "DaskCluster", "spec": spec["cluster"]["spec"]}),
        ]
    if kind in ("Job", "Deployment", "StatefulSet", "DaemonSet"):
        return [spec["template"]["spec"]]
    if kind == "Pod":
        return [spec]
    return []


def _containers(obj: dict) -> list[dict]:
    return [
        c for ps in _pod_specs(obj) for c in ps.get("containers", []) + ps.get("initContainers", [])
    ]


def _one(objs, kind, name=None):
    found = [
        o for o in objs if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)
    ]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def test_overlays_present_cpu_gpu_and_tls():
    assert {"cpu", "gpu", "gpu-tls"} <= set(OVERLAYS)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_builtin_kinds_strict_schema_validate(overlay, rendered):
    kv = pytest.importorskip("kubernetes_validate")
    objs = rendered(overlay)
    builtin = [o for o in objs if o["kind"] not in DASK_KINDS]
    assert {"Job", "ConfigMap", "PersistentVolumeClaim", "NetworkPolicy"} <= {
        o["kind"] for o in builtin
    }
    for obj in builtin:
        kv.validate(obj, K8S_VERSION, strict=True)


@pytest.mark.requires_kubernetes
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_dask_resources_match_crd_schemas(overlay, rendered, crd_schemas):
    jsonschema = pytest.importorskip("jsonschema")
    objs = [o for o in rendered(overlay) if o["kind"] in DASK_KINDS]
    assert {"DaskCluster", "DaskWorkerGroup", "DaskAutoscaler"} <= {o["kind"] for o in objs}
    for obj in objs:
        validator = jsonschema.Draft7Validator(crd_schemas[obj["kind"]])
        errors = [
            f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
            for e in validator.iter_errors(obj)
        ]
        assert not errors, f"{overlay} {obj['kind']}/{obj['metadata']['name']}: {errors[:3]}"


@pytest.mark.requires_kubernetes
def test_crd_schema_typo_in_resources_rejected(rendered, crd_schemas):
    """The operator silently drops unknown fields; the strict schema must catch them."""
    jsonschema = pytest.importorskip("jsonschema")
    group = _one(rendered("gpu"), "DaskWorkerGroup", "thaldask-gpu")
    container = group["spec"]["worker"]["spec"]["containers"][0]
    container["resources"]["limit"] = container["resources"].pop("limits")
    with pytest.raises(jsonschema.ValidationError, match="limit"):
        jsonschema.validate(group, crd_schemas["DaskWorkerGroup"])
    bad_quantity = _one(rendered("gpu"), "DaskWorkerGroup", "thaldask-gpu")
    bad_quantity["spec"]["worker"]["spec"]["containers"][0]["resources"]["limits"][
        "nvidia.com/gpu"
    ] = 1
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad_quantity, crd_schemas["DaskWorkerGroup"])


@pytest.mark.parametrize("overlay", ["gpu", "gpu-tls"])
def test_gpu_group_gpu_overlay_requests_gpu_and_declares_resource(overlay, rendered):
    group = _one(rendered(overlay), "DaskWorkerGroup", "thaldask-gpu")
    pod = group["spec"]["worker"]["spec"]
    (c,) = pod["containers"]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert c["resources"]["requests"]["nvidia.com/gpu"] == "1"
    args = c["args"]
    assert args[args.index("--resources") + 1] == "gpu=1"
    assert pod["nodeSelector"]
    assert any(
        t["key"] == "nvidia.com/gpu" and t["effect"] == "NoSchedule" for t in pod["tolerations"]
    )


def test_cpu_overlay_no_gpu_requested(rendered):
    for obj in rendered("cpu"):
        for c in _containers(obj):
            assert "nvidia.com/gpu" not in str(c.get("resources")), obj["metadata"]["name"]
            assert "gpu=" not in " ".join(c.get("args", []))


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_job_address_overlay_points_at_scheduler_service(overlay, rendered):
    objs = rendered(overlay)
    cluster = _one(objs, "DaskCluster")
    job = _one(objs, "Job", "thaldask-run")
    (c,) = job["spec"]["template"]["spec"]["containers"]
    assert c["args"][:2] == ["thaldask", "run"]
    env = {e["name"]: e.get("value") for e in c["env"]}
    address = env["DASK_SCHEDULER_ADDRESS"]
    assert "$(DASK_SCHEDULER_ADDRESS)" in c["args"]
    m = re.fullmatch(
        r"(tcp|tls)://([a-z0-9-]+)(?:\.([a-z0-9-]+))?(?:\.svc(?:\.cluster\.local)?)?:(\d+)", address
    )
    assert m, address
    scheme, host, namespace, port = m.groups()
    # the operator names the scheduler Service "<cluster>-scheduler"
    assert host == f"{cluster['metadata']['name']}-scheduler"
    assert namespace in (None, job["metadata"]["namespace"])
    assert job["metadata"]["namespace"] == cluster["metadata"]["namespace"]
    ports = {p["name"]: p["port"] for p in cluster["spec"]["scheduler"]["service"]["ports"]}
    assert int(port) == ports["tcp-comm"]
    sched = cluster["spec"]["scheduler"]["spec"]["containers"][0]
    assert scheme == ("tls" if "tls" in sched["args"] else "tcp")
    # the Job's pods carry the label the scheduler's NetworkPolicy admits
    assert job["spec"]["template"]["metadata"]["labels"]["thaldask.io/pipeline"] == "true"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_scheduler_named_ports_probes_and_dashboard(overlay, rendered):
    cluster = _one(rendered(overlay), "DaskCluster")
    sched = cluster["spec"]["scheduler"]
    (c,) = sched["spec"]["containers"]
    port_names = {p["name"] for p in c["ports"]}
    assert {"tcp-comm", "http-dashboard"} <= port_names
    for p in sched["service"]["ports"]:
        assert p["targetPort"] in port_names
    for probe in ("readinessProbe", "livenessProbe"):
        assert c[probe]["httpGet"]["port"] == "http-dashboard"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_containers_overlay_pinned_limited_and_locked_down(overlay, rendered):
    n = 0
    for obj in rendered(overlay):
        for ps in _pod_specs(obj):
            assert ps["securityContext"]["runAsNonRoot"] is True
            assert ps.get("automountServiceAccountToken") is False
        for c in _containers(obj):
            n += 1
            where = f"{overlay}: {obj['kind']}/{obj['metadata']['name']}/{c['name']}"
            image = c["image"]
            assert "@sha256:" in image or re.search(r":[\w.-]+$", image.rsplit("/", 1)[-1]), where
            assert not image.endswith(":latest"), where
            assert "/" in image, f"{where}: image {image} not resolved by kustomize"
            for section in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(c["resources"][section]), where
            sc = c["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True, where
            assert sc["allowPrivilegeEscalation"] is False, where
            assert sc["capabilities"]["drop"] == ["ALL"], where
            assert "add" not in sc["capabilities"], where
    assert n >= 4


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_networkpolicy_scheduler_admits_only_pipeline_pods(overlay, rendered):
    objs = rendered(overlay)
    pol = _one(objs, "NetworkPolicy", "thaldask-scheduler")
    cluster = _one(objs, "DaskCluster")
    sel = pol["spec"]["podSelector"]["matchLabels"]
    assert sel == {
        "dask.org/cluster-name": cluster["metadata"]["name"],
        "dask.org/component": "scheduler",
    }
    assert pol["spec"]["policyTypes"] == ["Ingress"]
    pipeline_rule, operator_rule = pol["spec"]["ingress"]
    assert pipeline_rule["from"] == [
        {"podSelector": {"matchLabels": {"thaldask.io/pipeline": "true"}}}
    ]
    # besides pipeline pods only the operator's own pods (the autoscaler queries the scheduler)
    (peer,) = operator_rule["from"]
    assert peer["namespaceSelector"] == {
        "matchLabels": {"kubernetes.io/metadata.name": "dask-operator"}
    }
    assert peer["podSelector"] == {
        "matchLabels": {"app.kubernetes.io/name": "dask-kubernetes-operator"}
    }
    for rule in (pipeline_rule, operator_rule):
        assert sorted(p["port"] for p in rule["ports"]) == [8786, 8787]
    # every pod that must reach the scheduler carries that label
    labelled = [
        cluster["spec"]["scheduler"]["metadata"]["labels"],
        cluster["spec"]["worker"]["metadata"]["labels"],
        *[
            g["spec"]["worker"]["metadata"]["labels"]
            for g in objs
            if g["kind"] == "DaskWorkerGroup"
        ],
        _one(objs, "Job")["spec"]["template"]["metadata"]["labels"],
    ]
    assert all(lbl.get("thaldask.io/pipeline") == "true" for lbl in labelled)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_store_overlay_rwx_volume_and_s3_secret_reference(overlay, rendered):
    objs = rendered(overlay)
    pvc = _one(objs, "PersistentVolumeClaim", "thaldask-store")
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    cm = _one(objs, "ConfigMap", "thaldask-cohort")
    assert "store:" in cm["data"]["cohort.yaml"]
    workers = [o for o in objs if o["kind"] in ("DaskWorkerGroup", "Job")]
    for obj in workers:
        for c in _containers(obj):
            assert {"secretRef": {"name": "thaldask-s3", "optional": True}} in c["envFrom"]
            assert "/data" in {m["mountPath"] for m in c["volumeMounts"]}


def test_tls_overlay_certificates_from_secret_encryption_required(rendered):
    objs = rendered("gpu-tls")
    cluster = _one(objs, "DaskCluster")
    sched = cluster["spec"]["scheduler"]["spec"]["containers"][0]
    assert sched["args"][sched["args"].index("--protocol") + 1] == "tls"
    for obj in objs:
        for ps in _pod_specs(obj):
            secrets = [v["secret"]["secretName"] for v in ps.get("volumes", []) if "secret" in v]
            assert secrets == ["thaldask-tls"], obj["metadata"]["name"]
            for c in ps["containers"]:
                env = {e["name"]: e.get("value") for e in c.get("env", [])}
                assert env["DASK_DISTRIBUTED__COMM__REQUIRE_ENCRYPTION"] == "True"
                assert env["DASK_DISTRIBUTED__COMM__TLS__CA_FILE"] == "/etc/thaldask/tls/ca.crt"
                if "DASK_SCHEDULER_ADDRESS" in env:
                    assert env["DASK_SCHEDULER_ADDRESS"].startswith("tls://")
                mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
                assert mounts["/etc/thaldask/tls"]["readOnly"] is True


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_configmap_cohort_config_valid_for_thaldask_run(overlay, rendered, tmp_path):
    """The Job's `thaldask run` reads the ConfigMap's cohort.yaml: it must be a valid config."""
    objs = rendered(overlay)
    cm = _one(objs, "ConfigMap", "thaldask-cohort")
    job = _one(objs, "Job", "thaldask-run")
    (c,) = job["spec"]["template"]["spec"]["containers"]
    mount = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}["cohort"]
    (name,) = cm["data"]
    assert c["args"][2] == f"{mount}/{name}"
    data = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}["store"]
    raw = yaml.safe_load(cm["data"][name])
    for key in ("manifest", "clinical", "store", "out"):
        assert str(raw[key]).startswith(data + "/"), f"{key} is not on the store volume"
    # the same file with the volume's paths moved under tmp_path, where the inputs exist
    local = tmp_path / data.strip("/")
    for key in ("manifest", "clinical"):
        f = local / Path(raw[key]).relative_to(data)
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text("subject,timepoint\n")
    p = tmp_path / name
    p.write_text(cm["data"][name].replace(f"{data}/", f"{local}/"))
    cfg = pipeline.load_config(p)
    assert cfg["store"] == str(local / Path(raw["store"]).relative_to(data))


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_job_command_line_accepted_by_thaldask_cli(overlay, rendered, tmp_path):
    """The Job's arguments parse with the real `thaldask` CLI (kubelet expands $(VAR))."""
    from thaldask.cli import main

    job = _one(rendered(overlay), "Job", "thaldask-run")
    (c,) = job["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e["value"] for e in c["env"] if "value" in e}
    config = tmp_path / "cohort.yaml"
    config.write_text("store: /data/store.zarr\n")
    args = [re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], a) for a in c["args"]]
    assert args[0] == "thaldask"
    args = [str(config) if a.startswith("/etc/thaldask/") else a for a in args[1:]]
    ctx = click.Context(main, info_name="thaldask")
    cmd = main.get_command(ctx, args[0])
    assert cmd is not None and cmd.name == "run"
    sub = cmd.make_context(args[0], args[1:], parent=ctx)
    assert sub.params["scheduler"] == env["DASK_SCHEDULER_ADDRESS"]
    assert sub.params["config"] == str(config)
