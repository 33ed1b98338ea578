"""Contrast physics: a label map on a scan's grid -> T1w, FLAIR and R1 images.

Each tissue has an R1 (1/T1, s⁻¹ at 3 T), a proton density PD and a T2 (ms), drawn per subject
inside the ranges of :data:`thaldask.synth.params.TISSUE`. Then

- **R1 map**: the R1 values, blurred to a lower effective resolution (FWHM ``r1.pv_fwhm_mm``),
  a weak residual bias, Gaussian noise of ``site.r1_noise`` s⁻¹ and the site's calibration
  ``site.r1_scale``; background 0 plus noise.
- **T1w** (MPRAGE-like inversion recovery, real-valued reconstruction):
  ``S = PD (1 - 2 exp(-TI R1) + exp(-TR R1))`` clipped at 0, with TI = 1.1 s, TR = 2.3 s.
  This gives white matter > thalamus (about 0.85 of WM: a weak thalamus–internal-capsule
  boundary) > cortex (about 0.65) > CSF (about 0.1).
- **FLAIR**: ``S = PD |1 - 2 exp(-TI R1) + exp(-TR R1)| exp(-TE/T2)`` with TI chosen to null
  CSF (``TI = ln(2 / (1 + exp(-TR R1_csf))) / R1_csf``).

T1w and FLAIR get partial-volume blur (Gaussian, FWHM in voxels), a smooth multiplicative
bias field of the site's strength and Rician noise of the site's level (relative to white
matter), are multiplied by the site's intensity scale and stored as int16 like scanner data.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from thaldask.synth.params import TISSUE

__all__ = ["draw_tissue", "render_contrasts", "bias_field"]

_FWHM = 2.0 * np.sqrt(2.0 * np.log(2.0))


def draw_tissue(rng: np.random.Generator, jitter: float = 0.25) -> dict[str, np.ndarray]:
    """Per-subject tissue lookup tables indexed by label id (0..255): ``r1``, ``pd``, ``t2``.

    R1 of each brain tissue is uniform in the central ``1 - 2 * jitter`` share of its range;
    extra-cerebral classes (ids 100+) get random properties (fat, muscle, bone, skin, ...).
    """
    r1 = np.zeros(256)
    pd = np.zeros(256)
    t2 = np.full(256, 50.0)
    for spec in TISSUE.values():
        lo, hi = spec["r1"]
        w = hi - lo
        val = rng.uniform(lo + jitter * w, hi - jitter * w)
        for i in spec["ids"]:
            r1[i] = val
            pd[i] = spec["pd"] * np.exp(rng.normal(0, 0.01))
            t2[i] = spec["t2"]
    extra = np.arange(100, 256)
    r1[extra] = rng.uniform(0.4, 2.5, extra.size)
    pd[extra] = rng.uniform(0.05, 0.9, extra.size)
    t2[extra] = rng.uniform(20, 100, extra.size)
    return {"r1": r1, "pd": pd, "t2": t2}


def bias_field(
    shape,
    strength: float,
    rng: np.random.Generator,
    affine: np.ndarray | None = None,
    head_radius_mm: float = 100.0,
) -> np.ndarray:
    """A smooth multiplicative field ``exp(f)``, ``f`` a random quadratic polynomial of space.

    ``f`` has standard deviation ``strength`` over a head-sized cube (±``head_radius_mm``
    around the world origin); a smaller field of view sees only its part of it. Without an
    affine, the grid itself spans the cube.
    """
    if affine is None:
        axes = [np.linspace(-1, 1, s) for s in shape]
    else:
        axes = [
            (affine[k, k] * np.arange(shape[k]) + affine[k, 3]) / head_radius_mm for k in range(3)
        ]
    terms = [
        (a, b, c) for a in range(3) for b in range(3 - a) for c in range(3 - a - b) if a + b + c > 0
    ]
    coef = rng.normal(size=len(terms))
    ref = np.linspace(-1, 1, 9)
    fr = sum(
        w * np.multiply.outer(np.multiply.outer(ref**a, ref**b), ref**c)
        for w, (a, b, c) in zip(coef, terms, strict=True)
    )
    sd = float(fr.std())
    scale = strength / sd if sd > 0 else 0.0
    # separable evaluation: f = P0(x, y) + z P1(x, y) + z^2 P2(x, y)
    planes = np.zeros((3, len(axes[0]), len(axes[1])))
    for w, (a, b, c) in zip(coef, terms, strict=True):
        planes[c] += w * np.multiply.outer(axes[0] ** a, axes[1] ** b)
    z = np.asarray(axes[2], dtype=np.float64)
    f = planes[0][:, :, None] + z * (planes[1][:, :, None] + z * planes[2][:, :, None])
    return np.exp(scale * f).astype(np.float32)


def _rician(s: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    n1 = rng.standard_normal(s.shape, dtype=np.float32)
    n2 = rng.standard_normal(s.shape, dtype=np.float32)
    return np.sqrt((s + sigma * n1) ** 2 + (sigma * n2) ** 2)


def _blur(img: np.ndarray, fwhm_vox) -> np.ndarray:
    sig = np.asarray(fwhm_vox, dtype=float) / _FWHM
    return ndi.gaussian_filter(img, sig, mode="nearest") if np.any(sig > 0) else img


def _to_int16(x: np.ndarray) -> np.ndarray:
    return np.clip(np.round(x), 0, 32767).astype(np.int16)


def render_contrasts(
    labels: np.ndarray,
    voxel_mm,
    tissue: dict,
    site: dict,
    params: dict,
    rng: np.random.Generator,
    affine: np.ndarray | None = None,
    which=("T1w", "FLAIR", "R1"),
) -> dict[str, np.ndarray]:
    """T1w (int16), FLAIR (int16) and R1 (float32, s⁻¹) images of a label map.

    Parameters
    ----------
    labels : uint8 label map on the scan grid
    voxel_mm : (3,) voxel size in mm
    tissue : lookup tables from :func:`draw_tissue`
    site : site dict (``scale``, ``bias``, ``noise``, ``r1_noise``, ``r1_scale``)
    params : the ``contrasts`` section of the cohort parameters
    affine : the grid's RAS affine (axis-aligned); bias fields are defined over the head
    which : the contrasts to render
    """
    voxel_mm = np.asarray(voxel_mm, dtype=float)
    r1 = tissue["r1"][labels].astype(np.float32)
    pd = tissue["pd"][labels].astype(np.float32)
    t2 = tissue["t2"][labels].astype(np.float32)
    out = {}

    if "T1w" in which:
        out["T1w"] = _t1w(pd, r1, labels.shape, tissue, site, params["t1w"], rng, affine)
    if "FLAIR" in which:
        out["FLAIR"] = _flair(pd, r1, t2, labels.shape, tissue, site, params["flair"], rng, affine)
    if "R1" in which:
        p = params["r1"]
        r1m = _blur(r1, p["pv_fwhm_mm"] / voxel_mm) * bias_field(
            labels.shape, p["bias"], rng, affine
        )
        noise = rng.normal(0, site["r1_noise"], r1m.shape).astype(np.float32)
        out["R1"] = np.round((r1m * site.get("r1_scale", 1.0) + noise).astype(np.float32), 4)
    return out


def _t1w(pd, r1, shape, tissue, site, p, rng, affine):
    t1w = pd * (1 - 2 * np.exp(-p["ti_s"] * r1) + np.exp(-p["tr_s"] * r1))
    t1w = np.clip(t1w, 0, None)
    wm = float(
        tissue["pd"][2]
        * (1 - 2 * np.exp(-p["ti_s"] * tissue["r1"][2]) + np.exp(-p["tr_s"] * tissue["r1"][2]))
    )
    t1w = _blur(t1w, p["pv_fwhm_vox"]) * bias_field(shape, site["bias"], rng, affine)
    t1w = _rician(t1w, site["noise"] * wm, rng)
    return _to_int16(t1w * (p["reference"] * site["scale"] / wm))


def _flair(pd, r1, t2, shape, tissue, site, p, rng, affine):
    ti = np.log(2.0 / (1.0 + np.exp(-p["tr_s"] * p["csf_r1"]))) / p["csf_r1"]
    fl = pd * np.abs(1 - 2 * np.exp(-ti * r1) + np.exp(-p["tr_s"] * r1)) * np.exp(-p["te_ms"] / t2)
    wmf = float(
        tissue["pd"][2]
        * abs(1 - 2 * np.exp(-ti * tissue["r1"][2]) + np.exp(-p["tr_s"] * tissue["r1"][2]))
        * np.exp(-p["te_ms"] / tissue["t2"][2])
    )
    fl = _blur(fl, p["pv_fwhm_vox"]) * bias_field(shape, site["bias"], rng, affine)
    fl = _rician(fl, site["noise"] * wmf, rng)
    return _to_int16(fl * (p["reference"] * site["scale"] / wmf))
