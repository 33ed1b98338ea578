"""The cluster section of a configuration file: parse and validate it.

A section looks like one of::

    cluster:                       cluster:
      kind: local                    kind: address
      n_workers: 2                   address: tls://scheduler.example.org:8786
      memory_limit: 8GiB             tls:
                                       ca_file: certs/ca.crt
                                       cert: certs/client.crt
                                       key: certs/client.key

    cluster:                       cluster:
      kind: kubernetes               kind: slurm
      manifests: deploy/kubernetes/overlays/gpu      jobs: 4
      n_workers: 4                   cores: 8
      gpu_workers: 2                 memory: 32GiB
                                     walltime: "04:00:00"
                                     gpus_per_job: 1

The section may be the whole file, or the ``cluster:`` key of a larger configuration (the
cohort configuration that ``thaldask run`` reads). Keys may be written with ``_`` or ``-``.
Relative paths (manifests, certificates, log directories) are relative to the file's folder.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from thaldask import config
from thaldask.errors import ConfigError

__all__ = ["KINDS", "ClusterSpec", "TLSFiles", "load_cluster_spec"]

KINDS = ("local", "address", "kubernetes", "slurm")

_TLS_KEYS = {"ca_file", "cert", "key", "secret_dir"}

# allowed keys of each kind (besides ``kind``), with their expected Python types
_KEYS: dict[str, dict[str, tuple[type, ...]]] = {
    "local": {
        "n_workers": (int,),
        "threads_per_worker": (int,),
        "memory_limit": (str, int),
        "resources": (dict,),
        "dashboard_address": (str,),
        "host": (str,),
    },
    "address": {
        "address": (str,),
        "tls": (dict,),
        "timeout": (str, int, float),
    },
    "kubernetes": {
        "manifests": (str,),
        "namespace": (str,),
        "n_workers": (int,),
        "gpu_workers": (int,),
        "adapt": (bool,),
        "shutdown_on_close": (bool,),
        "resource_timeout": (int,),
        "tls": (dict,),
    },
    "slurm": {
        "jobs": (int,),
        "queue": (str,),
        "account": (str,),
        "cores": (int,),
        "processes": (int,),
        "memory": (str,),
        "walltime": (str,),
        "gpus_per_job": (int,),
        "gres": (str,),
        "resources": (dict,),
        "job_extra_directives": (list,),
        "job_script_prologue": (list,),
        "worker_extra_args": (list,),
        "python": (str,),
        "local_directory": (str,),
        "log_directory": (str,),
        "interface": (str,),
        "scheduler_host": (str,),
        "dashboard_address": (str,),
        "death_timeout": (int,),
        "name": (str,),
        "tls": (dict,),
    },
}


@dataclass(frozen=True)
class TLSFiles:
    """Certificate files for ``tls://`` (CA bundle, own certificate and key), PEM."""

    ca_file: Path
    cert: Path
    key: Path

    def security(self, *, roles=("client",)):
        """A ``distributed.security.Security`` requiring encryption.

        ``roles``: which of ``client``, ``scheduler``, ``worker`` use this certificate
        (a client only needs ``client``; a cluster started here needs all three).
        """
        from distributed.security import Security

        for what, path in (("ca_file", self.ca_file), ("cert", self.cert), ("key", self.key)):
            if not path.is_file():
                raise ConfigError(f"cluster tls: {what} '{path}' does not exist")
        files = {"tls_ca_file": str(self.ca_file)}
        for role in roles:
            files[f"tls_{role}_cert"] = str(self.cert)
            files[f"tls_{role}_key"] = str(self.key)
        return Security(require_encryption=True, **files)


ALL_ROLES = ("client", "scheduler", "worker")


@dataclass(frozen=True)
class ClusterSpec:
    """A validated cluster section.

    Attributes
    ----------
    kind : one of ``local``, ``address``, ``kubernetes``, ``slurm``.
    options : the section's other keys, underscores in names.
    base_dir : folder that relative paths are resolved against.
    source : where the section came from (file name, for messages).
    """

    kind: str
    options: dict[str, Any] = field(default_factory=dict)
    base_dir: Path = field(default_factory=Path.cwd)
    source: str = "cluster config"

    def get(self, key: str, default=None):
        return self.options.get(key, default)

    def path(self, key: str, default: str | None = None) -> Path | None:
        """Option ``key`` as a path, resolved against :attr:`base_dir`."""
        value = self.options.get(key, default)
        if value is None:
            return None
        p = Path(os.path.expandvars(os.path.expanduser(str(value))))
        return p if p.is_absolute() else self.base_dir / p

    @property
    def tls(self) -> TLSFiles | None:
        """Certificate files of the ``tls`` option, or None.

        ``tls: {secret_dir: DIR}`` reads ``ca.crt``, ``tls.crt`` and ``tls.key`` from ``DIR``
        (a Kubernetes TLS Secret mounted as a volume); otherwise ``ca_file``, ``cert`` and
        ``key`` name the files.
        """
        tls = self.options.get("tls")
        if not tls:
            return None

        def resolve(value: str) -> Path:
            p = Path(os.path.expandvars(os.path.expanduser(str(value))))
            return p if p.is_absolute() else self.base_dir / p

        if "secret_dir" in tls:
            d = resolve(tls["secret_dir"])
            return TLSFiles(d / "ca.crt", d / "tls.crt", d / "tls.key")
        return TLSFiles(resolve(tls["ca_file"]), resolve(tls["cert"]), resolve(tls["key"]))


def _norm(d: dict) -> dict:
    return {str(k).replace("-", "_"): v for k, v in d.items()}


def _validate(kind: str, options: dict, source: str) -> None:
    allowed = _KEYS[kind]
    problems = []
    for key, value in options.items():
        if key not in allowed:
            problems.append(
                f"{source}: cluster kind {kind!r} has no option {key!r} "
                f"(allowed: {', '.join(sorted(allowed))})"
            )
        elif value is not None and (
            not isinstance(value, allowed[key])
            or (isinstance(value, bool) and bool not in allowed[key])
        ):
            names = " or ".join(t.__name__ for t in allowed[key])
            problems.append(f"{source}: cluster option {key!r} must be {names}, got {value!r}")
    for key in ("n_workers", "gpu_workers", "jobs", "cores", "processes", "gpus_per_job"):
        v = options.get(key)
        if isinstance(v, int) and not isinstance(v, bool) and v < 0:
            problems.append(f"{source}: cluster option {key!r} must be >= 0, got {v}")
    tls = options.get("tls")
    if isinstance(tls, dict):
        tls_keys = set(_norm(tls))
        unknown = tls_keys - _TLS_KEYS
        if unknown:
            problems.append(
                f"{source}: cluster tls has unknown keys {sorted(unknown)} "
                f"(allowed: ca_file, cert, key, or secret_dir)"
            )
        elif "secret_dir" not in tls_keys and not {"ca_file", "cert", "key"} <= tls_keys:
            problems.append(
                f"{source}: cluster tls needs ca_file, cert and key (or secret_dir), "
                f"got {sorted(tls_keys)}"
            )
    if kind == "address":
        addr = options.get("address")
        if not addr:
            problems.append(f"{source}: cluster kind 'address' needs an 'address' option")
        elif isinstance(addr, str):
            scheme = addr.split("://", 1)[0] if "://" in addr else ""
            if scheme not in ("tcp", "tls"):
                problems.append(
                    f"{source}: cluster address {addr!r} must start with tcp:// or tls://"
                )
            elif scheme == "tls" and not tls:
                problems.append(
                    f"{source}: cluster address {addr!r} is tls:// but no 'tls' certificates "
                    f"are given (ca_file, cert, key)"
                )
    if kind == "kubernetes" and not options.get("manifests"):
        problems.append(
            f"{source}: cluster kind 'kubernetes' needs 'manifests' (a kustomize directory "
            f"such as deploy/kubernetes/overlays/gpu, or a rendered YAML file)"
        )
    if kind == "slurm":
        gpus, procs = options.get("gpus_per_job") or 0, options.get("processes") or 1
        if isinstance(gpus, int) and isinstance(procs, int) and gpus and gpus % procs:
            problems.append(
                f"{source}: slurm gpus_per_job={gpus} must be a multiple of processes={procs} "
                f"(each worker process gets the same number of GPUs)"
            )
    if problems:
        err = ConfigError(problems[0])
        err.problems = problems
        raise err


def load_cluster_spec(source=None) -> ClusterSpec:
    """Read and validate a cluster section.

    Parameters
    ----------
    source : None, a path to a YAML file, a dict, or a :class:`ClusterSpec`.
        ``None`` gives the defaults from dask.config (``thaldask.cluster``: a local cluster).
        A file or dict may be the section itself or hold it under ``cluster:``.

    Raises
    ------
    ConfigError
        The file is missing or not YAML, the kind is unknown, an option is unknown or has the
        wrong type (every problem is listed in ``.problems``).
    """
    if isinstance(source, ClusterSpec):
        return source
    base_dir, name = Path.cwd(), "cluster config"
    if source is None:
        raw = {"kind": config.get("cluster.kind") or "local"}
        for key in ("n-workers", "threads-per-worker", "memory-limit", "dashboard-address"):
            v = config.get(f"cluster.{key}")
            if v is not None:
                raw[key] = v
    elif isinstance(source, dict):
        raw = source
    else:
        import yaml

        p = Path(source)
        name = str(p)
        if not p.is_file():
            raise ConfigError(f"{p}: cluster configuration file not found")
        try:
            raw = yaml.safe_load(p.read_text())
        except yaml.YAMLError as exc:
            first = str(exc).splitlines()[0]
            raise ConfigError(f"{p}: not valid YAML ({first})") from None
        base_dir = p.resolve().parent
        if raw is None:
            raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{name}: expected a mapping, got {type(raw).__name__}")
    if "cluster" in raw:
        raw = raw["cluster"]
        if not isinstance(raw, dict):
            raise ConfigError(f"{name}: 'cluster' must be a mapping, got {raw!r}")
    elif "kind" not in raw:
        # a configuration file without a cluster section: the default local cluster
        raw = {"kind": "local"}
    raw = _norm(raw)
    kind = raw.pop("kind", "local")
    if kind not in KINDS:
        raise ConfigError(f"{name}: unknown cluster kind {kind!r} (allowed: {', '.join(KINDS)})")
    if isinstance(raw.get("tls"), dict):
        raw["tls"] = _norm(raw["tls"])
    _validate(kind, raw, name)
    return ClusterSpec(kind=kind, options=raw, base_dir=base_dir, source=name)
