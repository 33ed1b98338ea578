"""Simulated segmentation methods: error models that reproduce the study's findings.

Every simulated method labels a voxel as thalamus (per side) when

    sdt(x) + roughness_mm * n(x) < (offset_mm + wm_offset_mm * w(x)) * (V_ref / V) ** (2/3)
                                   + prop_bias_mm * (V / V_ref - 1) + site_shift_mm + e

- ``sdt``: signed distance (mm) to the true thalamic boundary, negative inside;
- ``n``: a smooth Gaussian random field of unit SD and correlation ``scale_mm`` (boundary
  roughness: voxels near the boundary are missed or added at random, lowering Dice);
- ``w``: local share of white matter (Gaussian-smoothed WM indicator, 0..1): atlas-constrained
  methods leak across the weak thalamus–internal capsule / white matter boundary;
- ``V / V_ref``: the true volume of that side relative to ``reference_volume_mm3``: a
  non-zero ``prop_bias_mm`` makes the volume error grow with volume (proportional bias);
  the boundary offsets are scaled by ``(V_ref / V) ** (2/3)`` so that, on their own, they
  add the same volume to every thalamus (a boundary shell's volume grows with its surface,
  i.e. with V^(2/3)) and proportional bias appears only where ``prop_bias_mm`` plants it;
- ``site_shift_mm``: the site's shift of measured volumes (what harmonisation removes);
- ``e ~ N(0, jitter_mm)``: per-scan variation.

and, with probability ``failure_rate`` per scan (default 0), the method misses one whole side
(an empty left or right label, as failed runs do), to exercise empty-mask handling.

Defaults (``thaldask.synth.params``): ``freesurfer-sim`` and ``first-sim`` over-segment
(positive offset, WM leakage: highest sensitivity, lowest precision, volume over-estimated);
``freesurfer-sim`` and ``dbsegment-sim`` carry proportional bias (positive and negative);
``dbsegment-sim`` has the smallest roughness (highest Dice) and slightly under-segments;
``mindglide-sim`` has no offset (most accurate volumes), roughness by contrast
(FLAIR rougher, R1 slightly sharper than T1w).

Label conventions written: ``freesurfer-sim`` a whole aseg (FreeSurfer ids, thalamus 10/49)
on a conformed LIA 1 mm grid; ``first-sim`` 10/49; ``dbsegment-sim`` thalamus split into
thalamus proper / VPL / VIM ids (left 24/26/30, right 25/27/31); ``mindglide-sim`` explicit
ids (left 5, right 6).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from thaldask.synth.anatomy import THALAMUS, WHITE_MATTER

__all__ = ["method_spec", "prepare_truth", "simulate_sides", "encode_labels"]

_MARGIN_MM = 7.0  # beyond the largest boundary error of the defaults (offset + 3 SD)


def method_spec(params: dict, method: str, contrast: str) -> dict:
    """Error parameters of ``method`` on ``contrast`` (per-contrast overrides applied)."""
    spec = {k: v for k, v in params["methods"][method].items() if k != "by_contrast"}
    spec.update(params["methods"][method].get("by_contrast", {}).get(contrast, {}))
    return spec


def _signed_distance(mask: np.ndarray, spacing) -> np.ndarray:
    half = 0.5 * float(np.min(spacing))
    out = ndi.distance_transform_edt(~mask, sampling=spacing) - half
    inside = ndi.distance_transform_edt(mask, sampling=spacing) - half
    out[mask] = -inside[mask]
    return out


def prepare_truth(labels: np.ndarray, voxel_mm) -> dict:
    """What every simulated method of one grid shares: crop, signed distances, WM share."""
    voxel_mm = np.asarray(voxel_mm, dtype=float)
    thal = np.isin(labels, THALAMUS)
    prep = {"shape": labels.shape, "voxel_mm": voxel_mm, "sides": []}
    if not thal.any():
        return prep
    ijk = np.argwhere(thal)
    m = np.ceil(_MARGIN_MM / voxel_mm).astype(int)
    lo = np.maximum(ijk.min(axis=0) - m, 0)
    hi = np.minimum(ijk.max(axis=0) + m + 1, labels.shape)
    sl = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
    lab = labels[sl]
    prep["slice"] = sl
    prep["wm"] = ndi.gaussian_filter(np.isin(lab, WHITE_MATTER).astype(np.float32), 1.5 / voxel_mm)
    vvox = float(np.prod(voxel_mm))
    for code in THALAMUS:
        mask = lab == code
        if mask.any():
            prep["sides"].append((mask.sum() * vvox, _signed_distance(mask, voxel_mm)))
        else:
            prep["sides"].append(None)
    return prep


def simulate_sides(
    prep: dict,
    spec: dict,
    *,
    reference_volume_mm3: float,
    site_shift_mm: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """A simulated thalamus mask (uint8 0/1 left/2 right) on the grid of :func:`prepare_truth`."""
    out = np.zeros(prep["shape"], dtype=np.uint8)
    if not prep["sides"]:
        return out
    voxel_mm = prep["voxel_mm"]
    sl = prep["slice"]
    wm = prep["wm"]
    noise = rng.standard_normal(wm.shape, dtype=np.float32)
    noise = ndi.gaussian_filter(noise, spec["scale_mm"] / voxel_mm, mode="reflect")
    sd = noise.std()
    noise = noise / sd if sd > 0 else noise
    jitter = rng.normal(0, spec["jitter_mm"], 2)
    best = np.full(wm.shape, np.inf, dtype=np.float32)
    pred = np.zeros(wm.shape, dtype=np.uint8)
    for side, entry in enumerate(prep["sides"]):
        if entry is None:
            continue
        vol, sdt = entry
        # constant added volume from the boundary offsets: shell volume ~ offset * V^(2/3)
        size = (reference_volume_mm3 / vol) ** (2.0 / 3.0)
        thr = (
            (spec["offset_mm"] + spec["wm_offset_mm"] * wm) * size
            + spec["prop_bias_mm"] * (vol / reference_volume_mm3 - 1.0)
            + site_shift_mm
            + jitter[side]
        )
        score = sdt + spec["roughness_mm"] * noise - thr
        sel = (score < 0) & (score < best)
        pred[sel] = side + 1
        best = np.where(sel, score, best)
    # a prediction only grows from the thalamus: drop islands away from the main component
    for side in (1, 2):
        cc, n = ndi.label(pred == side)
        if n > 1:
            sizes = np.bincount(cc.ravel())[1:]
            keep = 1 + int(np.argmax(sizes))
            pred[(cc > 0) & (cc != keep)] = 0
    out[sl] = pred
    return out


def encode_labels(sides: np.ndarray, method: str, labels: np.ndarray | None = None) -> np.ndarray:
    """Write 0/1/2 sides in ``method``'s own label convention (uint8).

    ``freesurfer-sim`` needs the true ``labels`` on the same grid: the other aseg structures
    are copied from it, and true thalamus not predicted becomes white matter (2/41).
    """
    if method == "freesurfer-sim":
        if labels is None:
            raise ValueError("freesurfer-sim needs the label map of its grid")
        aseg = np.where(labels < 90, labels, 0).astype(np.uint8)
        aseg[aseg == 10] = 2
        aseg[aseg == 49] = 41
        aseg[sides == 1] = 10
        aseg[sides == 2] = 49
        return aseg
    if method == "first-sim":
        out = np.zeros(sides.shape, dtype=np.uint8)
        out[sides == 1] = 10
        out[sides == 2] = 49
        return out
    if method == "mindglide-sim":
        out = np.zeros(sides.shape, dtype=np.uint8)
        out[sides == 1] = 5
        out[sides == 2] = 6
        return out
    if method == "dbsegment-sim":
        return _dbsegment_ids(sides)
    if method == "gt":
        return sides.astype(np.uint8)
    raise ValueError(f"unknown simulated method {method!r}")


def _dbsegment_ids(sides: np.ndarray) -> np.ndarray:
    """Thalamus proper (24/25) with a lateral-posterior VPL (26/27) and lateral VIM (30/31) part.

    Assumes the grid's first axis is left-right and the second anterior-posterior in some
    direction; the split only has to be deterministic, the ingest merges the ids back.
    """
    out = np.zeros(sides.shape, dtype=np.uint8)
    for side, ids in ((1, (24, 26, 30)), (2, (25, 27, 31))):
        m = sides == side
        if not m.any():
            continue
        ijk = np.argwhere(m)
        c = ijk.mean(axis=0)
        ext = np.maximum(ijk.max(axis=0) - ijk.min(axis=0), 1)
        lat = np.abs(ijk[:, 0] - c[0]) / ext[0]
        ap = (ijk[:, 1] - c[1]) / ext[1]
        lab = np.full(len(ijk), ids[0], dtype=np.uint8)
        lab[(lat > 0.2) & (ap < -0.1)] = ids[1]
        lab[(lat > 0.2) & (np.abs(ap) <= 0.1)] = ids[2]
        out[tuple(ijk.T)] = lab
    return out
