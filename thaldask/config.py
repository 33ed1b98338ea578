"""Defaults under dask.config's ``thaldask`` namespace.

Any value can be overridden the usual dask ways: ``dask.config.set({"thaldask.store.zarr-concurrency": 4})``,
a YAML file in ``~/.config/dask/``, or the environment (``DASK_THALDASK__STORE__ZARR_CONCURRENCY=4``).
"""

from __future__ import annotations

import dask.config

DEFAULTS: dict = {
    "thaldask": {
        "store": {
            # zarr's async concurrency inside Dask workers; high values oversubscribe cores
            "zarr-concurrency": 8,
            # blosc codec of new stores; lz4 + bitshuffle ingested fastest, read fastest and
            # stayed smaller than the .nii.gz inputs (benchmarks/ingest.py)
            "compressor": "lz4",
            "clevel": 5,
            "shuffle": "bitshuffle",
            # float images (quantitative maps): "auto" stores a map with a fixed number of
            # decimals as its integers and any other as float32, both with blosc lz4 + byte
            # shuffle ("float-shuffle"); "blosc" always float32; "pcodec" (as small, slower)
            "float-codec": "auto",
            "float-shuffle": "shuffle",
            "pcodec-level": 4,
            "spatial-chunks": "scan",  # one chunk per scan, or [cx, cy, cz]
        },
        "cluster": {
            "kind": "local",
            "n-workers": None,  # None: sized to the machine
            "threads-per-worker": 1,
            "memory-limit": "auto",
            "dashboard-address": ":0",
        },
        "segment": {
            "device": "auto",
            "batch-size": 1,
        },
        "metrics": {
            "scans-per-task": 4,
        },
        "stats": {
            "edss-cut": 5.5,
            "fdr-method": "fdr_bh",
            "bootstrap": 0,
        },
    }
}

dask.config.update_defaults(DEFAULTS)


def get(key: str, default=None):
    """Read ``thaldask.<key>`` from dask's configuration.

    >>> get("store.compressor")
    'lz4'
    """
    return dask.config.get(f"thaldask.{key}", default=default)
