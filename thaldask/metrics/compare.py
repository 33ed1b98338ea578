"""Metrics for one pair of mask files (``thaldask compare``)."""

from __future__ import annotations

import math

import numpy as np

from thaldask.cohort.labels import detect_convention, parse_labels, to_sides
from thaldask.errors import LabelConventionError, ScanError
from thaldask.metrics.kernels import METRIC_FIELDS, SIDES, derive_metrics, pair_raw
from thaldask.store.nifti import check_overlap, load_volume, resample_to, same_grid, to_ras

__all__ = ["compare_files"]


def _load(path: str, labels, role: str):
    try:
        vol = load_volume(str(path), kind="mask")
    except ScanError as exc:
        raise ScanError(f"{path}: {exc}") from None
    except FileNotFoundError:
        raise ScanError(f"{path}: no such file") from None
    try:
        conv = parse_labels(labels) if labels else detect_convention(vol.data)
        sides = to_sides(vol.data, conv)
    except LabelConventionError as exc:
        raise LabelConventionError(f"{path} ({role}): {exc}") from None
    data, aff, _ = to_ras(sides, vol.affine)
    return np.ascontiguousarray(data, dtype=np.uint8), aff, conv


def compare_files(gt_path, pred_path, *, gt_labels=None, pred_labels=None, surface: bool = True) -> dict:
    """Metrics of one predicted mask file against one ground-truth file.

    Parameters
    ----------
    gt_path, pred_path : NIfTI (.nii, .nii.gz) or .mgz mask files
    gt_labels, pred_labels : label conventions (``freesurfer``, ``binary``, ``L:10;R:49``,
        ...); detected from the voxel values when None and unambiguous
    surface : compute HD95 and ASSD

    Returns
    -------
    dict with ``gt``, ``pred``, ``gt_labels``, ``pred_labels``, ``resampled`` (the
    prediction was resampled nearest-neighbour onto the ground truth's grid, as ingest does
    for masks), ``spacing_mm`` and ``metrics``: ``{side: {metric: value}}`` for left, right
    and total. With a binary convention on either side only ``total`` is defined (left and
    right are NaN). Empty-mask rules as in :func:`thaldask.metrics.kernels.derive_metrics`.
    """
    g, gaff, gconv = _load(gt_path, gt_labels, "ground truth")
    p, paff, pconv = _load(pred_path, pred_labels, "prediction")
    resampled = False
    if not same_grid(gaff, g.shape, paff, p.shape):
        try:
            check_overlap(p, paff, p.shape, gaff, g.shape)
        except ScanError as exc:
            raise ScanError(f"{pred_path}: {exc}") from None
        p = resample_to(p, paff, gaff, g.shape, order=0).astype(np.uint8)
        resampled = True
    binary = gconv.binary or pconv.binary
    if binary:
        g = (g > 0).astype(np.uint8)
        p = (p > 0).astype(np.uint8)
    spacing = np.sqrt((gaff[:3, :3] ** 2).sum(axis=0))
    met = derive_metrics(pair_raw(g, p, spacing, surface=surface), float(np.prod(spacing)))
    if binary:
        met[:2] = np.nan
    out = {
        side: {f: (None if math.isnan(v) else float(v)) for f, v in zip(METRIC_FIELDS, met[s], strict=True)}
        for s, side in enumerate(SIDES)
    }
    return {
        "gt": str(gt_path),
        "pred": str(pred_path),
        "gt_labels": gconv.spec,
        "pred_labels": pconv.spec,
        "resampled": resampled,
        "spacing_mm": [float(v) for v in spacing],
        "metrics": out,
    }
