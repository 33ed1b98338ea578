"""``thaldask run CONFIG.yaml``: the configured stages for a real cohort."""

from __future__ import annotations

import os
from pathlib import Path

import yaml

from thaldask._shared.paths import is_remote, is_url
from thaldask.config import check_keys
from thaldask.errors import ConfigError
from thaldask.pipeline.context import Context, pipeline_client
from thaldask.pipeline.sections import check_stages
from thaldask.pipeline.stages import run_stages

__all__ = ["load_config", "run_config", "KNOWN_KEYS"]

KNOWN_KEYS = {"store", "manifest", "clinical", "out", "cluster", "stages", "synthetic"}


def load_config(path: str | os.PathLike) -> dict:
    """Read and check a ``thaldask run`` YAML file; relative paths are resolved against it.

    Raises
    ------
    ConfigError
        unreadable YAML, unknown keys, or a missing store path.
    """
    p = Path(path)
    try:
        raw = yaml.safe_load(p.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{p}: no such config file") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{p}: expected a mapping with keys {sorted(KNOWN_KEYS)}")
    check_keys(raw, sorted(KNOWN_KEYS), where=str(p))
    if not raw.get("store"):
        raise ConfigError(f"{p}: 'store' (cohort store path or URL) is required")
    stages = check_stages(raw.get("stages"), where=f"{p}: stages")

    def resolve(v):
        if v is None or is_url(str(v)) or os.path.isabs(str(v)):
            return v
        return str((p.parent / str(v)).resolve())

    cfg = dict(raw)
    for key in ("store", "manifest", "clinical", "out"):
        if cfg.get(key):
            cfg[key] = resolve(cfg[key])
    if cfg.get("manifest") and not os.path.exists(cfg["manifest"]) and not is_remote(cfg["manifest"]):
        raise ConfigError(f"{p}: manifest {cfg['manifest']} does not exist")
    cfg["stages"] = stages
    cfg["_path"] = str(p.resolve())
    return cfg


def run_config(config_path: str | os.PathLike, *, client=None, scheduler: str | None = None,
               cluster_file: str | os.PathLike | None = None, progress: bool = True) -> Context:
    """Run the stages a YAML config asks for, on the cluster it describes.

    See ``thaldask/data/example_config.yaml`` for every key. Stages not implemented in this
    installation are skipped with a message. ``cluster_file`` (a YAML file with a cluster
    section) replaces the config's own ``cluster:`` section; ``scheduler`` overrides both.
    """
    cfg = load_config(config_path)
    store = cfg["store"]
    # default: inside the store, so that two stores in one folder never share outputs
    out = cfg.get("out") or (store if not is_remote(store) else ".")
    os.makedirs(out, exist_ok=True)
    ctx = Context(
        out=out,
        store=store,
        config={k: v for k, v in cfg["stages"].items() if k != "synth"} | {"synth": False},
        manifest=cfg.get("manifest"),
        clinical=cfg.get("clinical"),
        synthetic=bool(cfg.get("synthetic", False)),
        progress=progress,
    )
    # the file itself, so that the cluster section's relative paths resolve against it
    cluster = cfg["_path"] if cfg.get("cluster") else None
    if cluster_file is not None:
        cluster = str(cluster_file)
    with pipeline_client(client, scheduler, cluster_config=cluster, progress=progress) as c:
        ctx.client = c
        run_stages(ctx)
        ctx.client = None
    return ctx
