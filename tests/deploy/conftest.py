"""Shared helpers for the deploy/ tests: render overlays, load the operator's CRD schemas."""

from __future__ import annotations

import copy
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
K8S = DEPLOY / "kubernetes"
OVERLAYS = sorted(p.name for p in (K8S / "overlays").iterdir() if p.is_dir())


def _render(overlay: str) -> list[dict]:
    """Objects of one overlay, rendered offline by `kubectl kustomize`."""
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl is not installed")
    res = subprocess.run(
        ["kubectl", "kustomize", str(K8S / "overlays" / overlay)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 0, res.stderr
    return [d for d in yaml.safe_load_all(res.stdout) if d]


def _closed(schema):
    """Copy of an OpenAPI schema where objects with listed properties reject unknown keys.

    Objects marked ``x-kubernetes-preserve-unknown-fields`` or with an explicit
    ``additionalProperties`` (maps such as labels or resource quantities) are left open.
    """
    if isinstance(schema, list):
        return [_closed(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _closed(v) for k, v in schema.items()}
    if (
        "properties" in schema
        and "additionalProperties" not in schema
        and not schema.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


@pytest.fixture(scope="session")
def crd_schemas() -> dict[str, dict]:
    """Strict JSON schemas of the Dask custom resources, keyed by kind.

    Taken from the CRDs shipped inside the dask-kubernetes package (the ones the operator's
    Helm chart installs).
    """
    dk = pytest.importorskip("dask_kubernetes")
    crds = Path(dk.__file__).parent / "operator/deployment/helm/dask-kubernetes-operator/crds"
    out = {}
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    for f in sorted(crds.glob("*.yaml")):
        if f.stem == "daskjob":  # no DaskJob in deploy/; its CRD is the largest to parse
            continue
        crd = yaml.load(f.read_text(), Loader=loader)
        kind = crd["spec"]["names"]["kind"]
        (version,) = [v for v in crd["spec"]["versions"] if v.get("storage")]
        schema = copy.deepcopy(version["schema"]["openAPIV3Schema"])
        schema = _closed(schema)
        schema["properties"]["apiVersion"] = {
            "type": "string",
            "const": f"{crd['spec']['group']}/{version['name']}",
        }
        schema["properties"]["kind"] = {"type": "string", "const": kind}
        schema["properties"]["metadata"] = {
            "type": "object",
            "required": ["name"],
            "properties": {
                "name": {"type": "string"},
                "namespace": {"type": "string"},
                "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
            },
            "additionalProperties": False,
        }
        schema.setdefault("required", [])
        schema["required"] = sorted(set(schema["required"]) | {"apiVersion", "kind", "metadata"})
        out[kind] = schema
    return out


@pytest.fixture(scope="session")
def rendered():
    """Function overlay name -> list of rendered objects (cached per session)."""
    cache: dict[str, list[dict]] = {}

    def get(overlay: str) -> list[dict]:
        if overlay not in cache:
            cache[overlay] = _render(overlay)
        return copy.deepcopy(cache[overlay])

    return get
