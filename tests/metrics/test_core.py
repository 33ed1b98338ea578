"""Lazy Dask metrics: laziness, chunking invariance, agreement with the numpy kernel."""

from __future__ import annotations

import dask
import dask.array as da
import numpy as np
import pytest
import xarray as xr

from thaldask.metrics.core import compute_metrics, compute_raw
from thaldask.metrics.kernels import pair_raw


class CountingScheduler:
    """A dask scheduler that counts (and optionally forbids) computes, like xarray's."""

    def __init__(self, max_computes=0):
        self.total = 0
        self.max_computes = max_computes

    def __call__(self, dsk, keys, **kwargs):
        self.total += 1
        if self.total > self.max_computes:
            raise RuntimeError(f"too many computes: {self.total} > {self.max_computes}")
        return dask.get(dsk, keys, **kwargs)


def _cohort(n=5, shape=(14, 16, 12), seed=0):
    rng = np.random.default_rng(seed)
    g = np.zeros((n, *shape), np.uint8)
    p = np.zeros((n, *shape), np.uint8)
    for i in range(n):
        lo = rng.integers(1, 4, 3)
        g[i, lo[0] : lo[0] + 5, lo[1] : lo[1] + 6, lo[2] : lo[2] + 5] = 1
        g[i, lo[0] + 6 : lo[0] + 10, lo[1] : lo[1] + 6, lo[2] : lo[2] + 5] = 2
        p[i] = np.roll(g[i], tuple(rng.integers(-1, 2, 3)), axis=(0, 1, 2))
    p[-1] = 0  # one empty prediction
    spacing = rng.uniform(0.8, 1.5, (n, 3))
    return g, p, spacing


def test_compute_metrics_building_graph_computes_nothing():
    g, p, sp = _cohort()
    gd = xr.DataArray(da.from_array(g, chunks=(1, -1, -1, -1)), dims=("scan", "x", "y", "z"))
    pd_ = xr.DataArray(da.from_array(p, chunks=(1, -1, -1, -1)), dims=("scan", "x", "y", "z"))
    sched = CountingScheduler(0)
    with dask.config.set(scheduler=sched):
        ds = compute_metrics(gd, pd_, sp)
        ds = ds.mean("scan")  # further lazy work stays lazy
    assert sched.total == 0
    assert isinstance(ds.dice.data, da.Array)


@pytest.mark.parametrize(
    "gchunks,pchunks",
    [((1, -1, -1, -1), (1, -1, -1, -1)), ((2, 7, -1, 5), (3, -1, 8, -1)), ((5, -1, -1, -1), (1, 4, 4, 4))],
)
def test_compute_raw_any_chunking_equals_numpy_kernel(gchunks, pchunks):
    g, p, sp = _cohort()
    expect = np.stack([pair_raw(g[i], p[i], sp[i]) for i in range(len(g))])
    got = compute_raw(da.from_array(g, chunks=gchunks), da.from_array(p, chunks=pchunks), sp)
    np.testing.assert_array_equal(got.compute(scheduler="sync"), expect)


def test_compute_metrics_keeps_scan_coords_and_flags_empty_prediction():
    g, p, sp = _cohort()
    coords = {"subject": ("scan", [f"s{i}" for i in range(len(g))])}
    gd = xr.DataArray(g, dims=("scan", "x", "y", "z"), coords=coords)
    pd_ = xr.DataArray(p, dims=("scan", "x", "y", "z"), coords=coords)
    ds = compute_metrics(gd, pd_, sp).compute(scheduler="sync")
    assert list(ds.subject.values) == [f"s{i}" for i in range(len(g))]
    assert ds.pred_empty.sel(side="total").values.tolist() == [0, 0, 0, 0, 1]
    assert ds.dice.sel(side="total").values[-1] == 0.0
    assert np.isnan(ds.hd95_mm.sel(side="total").values[-1])
    assert (ds.dice.sel(side="total").values[:-1] > 0.3).all()


@pytest.mark.slow  # a fresh interpreter importing dask, xarray and zarr
def test_metrics_import_never_pulls_torch():
    import subprocess
    import sys

    code = (
        "import sys, thaldask.metrics, thaldask.metrics.evaluate, thaldask.metrics.compare, "
        "thaldask.commands.metrics; print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
