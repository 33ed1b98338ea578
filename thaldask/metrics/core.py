"""Metrics over cohorts of mask pairs as lazy Dask/xarray computations.

Inputs are arrays of shape (scan, x, y, z) holding 0/1/2 labels, chunked along ``scan``
(one to a few scans per chunk; spatial chunks are concatenated inside the task). Each chunk
becomes one task running :func:`thaldask.metrics.kernels.pair_raw` on its scans and
returning a small (scan, side, field) block; nothing is computed until asked.
"""

from __future__ import annotations

import dask.array as da
import numpy as np
import xarray as xr

from thaldask.metrics.kernels import METRIC_FIELDS, RAW_FIELDS, SIDES, derive_metrics, pair_raw

__all__ = ["compute_raw", "compute_metrics", "raw_to_dataset"]


def _block_raw(gt, pred, spacing, surface=True):
    out = np.empty((gt.shape[0], 3, len(RAW_FIELDS)))
    for i in range(gt.shape[0]):  # the scans of one chunk
        out[i] = pair_raw(gt[i], pred[i], spacing[i], surface=surface)
    return out


def _as_dask(x, scan_chunks=None):
    if isinstance(x, xr.DataArray):
        x = x.data
    if isinstance(x, da.Array):
        return x
    x = np.asarray(x)
    chunks = (scan_chunks or 1,) + x.shape[1:]
    return da.from_array(x, chunks=chunks)


def compute_raw(gt, pred, spacing, *, surface: bool = True) -> da.Array:
    """Raw per-side fields for every scan (lazy).

    Parameters
    ----------
    gt, pred : dask or numpy arrays (or DataArrays) of shape (scan, x, y, z), labels 0/1/2
    spacing : array (scan, 3), voxel size in mm of each scan
    surface : also compute HD95 and ASSD

    Returns
    -------
    dask.array.Array float64 of shape (scan, 3 sides, len(RAW_FIELDS)), one chunk per input
    scan chunk; lazy.
    """
    g = _as_dask(gt)
    p = _as_dask(pred, g.chunks[0])
    if g.shape != p.shape:
        raise ValueError(f"ground truth {g.shape} and prediction {p.shape} differ in shape")
    sp = np.asarray(spacing, dtype=np.float64) if not isinstance(spacing, da.Array) else spacing
    if sp.shape != (g.shape[0], 3):
        raise ValueError(f"spacing must have shape ({g.shape[0]}, 3), got {sp.shape}")
    if not isinstance(sp, da.Array):
        sp = da.from_array(sp, chunks=(g.chunks[0], 3))
    return da.blockwise(
        _block_raw,
        "sfk",
        g,
        "sxyz",
        p,
        "sxyz",
        sp,
        "sd",
        new_axes={"f": 3, "k": len(RAW_FIELDS)},
        concatenate=True,
        dtype=np.float64,
        surface=surface,
        meta=np.empty((0, 0, 0), np.float64),
    )


def _derive_block(raw, vv):
    return derive_metrics(raw, vv[:, 0, 0])


def raw_to_dataset(raw, spacing, *, scan_coords: dict | None = None) -> xr.Dataset:
    """Turn raw fields (scan, side, field) into a Dataset of metrics (lazy if ``raw`` is).

    Variables are :data:`METRIC_FIELDS`, each with dims (scan, side).
    """
    vv = np.prod(np.asarray(spacing, dtype=np.float64), axis=-1)
    if isinstance(raw, da.Array):
        vvd = da.from_array(vv, chunks=(raw.chunks[0],))
        met = da.map_blocks(
            _derive_block,
            raw,
            vvd[:, None, None],
            chunks=raw.chunks[:2] + ((len(METRIC_FIELDS),),),
            dtype=np.float64,
        )
    else:
        met = derive_metrics(raw, vv)
    coords = {"side": list(SIDES)}
    if scan_coords:
        coords.update(scan_coords)
    return xr.Dataset(
        {f: (("scan", "side"), met[:, :, i]) for i, f in enumerate(METRIC_FIELDS)},
        coords=coords,
    )


def compute_metrics(gt, pred, spacing, *, surface: bool = True) -> xr.Dataset:
    """Overlap, volume and surface metrics of every scan's mask pair (lazy).

    Parameters
    ----------
    gt, pred : xarray.DataArray or dask/numpy arrays of shape (scan, x, y, z), labels
        0 background, 1 left, 2 right
    spacing : array (scan, 3), voxel size in mm
    surface : also compute HD95/ASSD (they cost a few ms per pair)

    Returns
    -------
    xarray.Dataset with variables :data:`METRIC_FIELDS` of dims (scan, side), side =
    ``["left", "right", "total"]``; backed by Dask, lazy. Scan coordinates of ``pred``
    (subject, timepoint, ...) are kept. Empty-mask rules: see
    :func:`thaldask.metrics.kernels.derive_metrics`.
    """
    raw = compute_raw(gt, pred, spacing, surface=surface)
    scan_coords = None
    if isinstance(pred, xr.DataArray):
        scan_coords = {k: v for k, v in pred.coords.items() if v.dims == ("scan",)}
    return raw_to_dataset(raw, spacing, scan_coords=scan_coords)
