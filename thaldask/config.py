"""Defaults under dask.config's ``thaldask`` namespace, declared once.

The defaults are in ``thaldask.yaml`` and every key's type and one-line description in
``thaldask-schema.yaml`` (both beside this module, in dask's own style). Any value can be
overridden the usual dask ways: ``dask.config.set({"thaldask.store.zarr-concurrency": 4})``,
a YAML file in ``~/.config/dask/``, or the environment
(``DASK_THALDASK__STORE__ZARR_CONCURRENCY=4``).

Importing this module does not import dask (so that ``thaldask --help`` answers at once);
the defaults are registered with dask the first time :func:`get` or :func:`register` runs.
"""

from __future__ import annotations

import difflib
import functools
from pathlib import Path

import yaml

from thaldask.errors import ConfigError

__all__ = ["get", "settings", "register", "defaults", "schema", "describe", "flat_keys", "check_keys"]

_HERE = Path(__file__).parent


@functools.cache
def defaults() -> dict:
    """The defaults of ``thaldask.yaml`` (a nested dict under ``"thaldask"``)."""
    return yaml.safe_load((_HERE / "thaldask.yaml").read_text())


@functools.cache
def schema() -> dict:
    """``thaldask-schema.yaml``: type and description of every key."""
    return yaml.safe_load((_HERE / "thaldask-schema.yaml").read_text())


def flat_keys(tree: dict, prefix: str = "") -> dict:
    """``{"a.b": value}`` for a nested dict (leaves only).

    >>> flat_keys({"a": {"b": 1, "c": {"d": None}}})
    {'a.b': 1, 'a.c.d': None}
    """
    out = {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flat_keys(v, key + "."))
        else:
            out[key] = v
    return out


def describe() -> dict[str, dict]:
    """Every ``thaldask.*`` key with its ``type``, ``description`` and ``default``."""

    def walk(node, prefix):
        for k, v in (node.get("properties") or {}).items():
            key = f"{prefix}{k}"
            if v.get("type") == "object" and "properties" in v:
                yield from walk(v, key + ".")
            else:
                yield key, v

    flat = flat_keys(defaults())
    return {k: dict(v, default=flat.get(k)) for k, v in walk(schema(), "")}


@functools.cache
def register() -> None:
    """Register the defaults with dask.config (once per process; values already set by the
    user keep priority)."""
    import dask.config

    dask.config.update_defaults(defaults())


def get(key: str, default=None):
    """Read ``thaldask.<key>`` from dask's configuration.

    >>> get("store.compressor")
    'lz4'
    """
    import dask.config

    register()
    return dask.config.get(f"thaldask.{key}", default=default)


def settings() -> dict:
    """The whole ``thaldask`` namespace of dask's configuration as now set (nested dict)."""
    import dask.config

    register()
    return dask.config.get("thaldask", {})


def check_keys(section: dict, allowed, *, where: str) -> None:
    """Raise :class:`ConfigError` for the first key of ``section`` not in ``allowed``, naming
    it and the closest valid key.

    >>> check_keys({"qc_randm": 2}, ["out", "qc_random"], where="stages.report")
    Traceback (most recent call last):
    ...
    thaldask.errors.ConfigError: stages.report: unknown key 'qc_randm' (did you mean 'qc_random'?); allowed: out, qc_random
    """
    allowed = list(allowed)
    for key in section:
        if key not in allowed:
            close = difflib.get_close_matches(str(key), allowed, n=1, cutoff=0.5)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"{where}: unknown key {key!r}{hint}; allowed: {', '.join(allowed)}")
