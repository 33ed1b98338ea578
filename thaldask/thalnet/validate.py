"""Whole-head validation scans rendered from label maps, and Dice of a segmenter on them.

Used for the model card's numbers (held-out label maps rendered as T1w-, FLAIR- and R1-like
images at 1 mm and 1 x 1 x 1.5 mm) and by the tests (on the held-out anatomy shipped beside
the weights).
"""

from __future__ import annotations

import numpy as np
import torch
from torch.nn import functional as F

from thaldask.metrics.kernels import side_dice
from thaldask.thalnet import augment
from thaldask.thalnet.assets import models_dir

__all__ = ["load_heldout_anatomy", "crop_around_thalami", "render_scan", "dice", "evaluate_segmenter",
           "ThalamusResizer", "volume_response", "response_slope", "build_heldout_asset"]


def load_heldout_anatomy():
    """The held-out label map shipped with the model: (labels uint8 (X, Y, Z) RAS, affine).

    Values are FreeSurfer brain labels (thalamus 10 left, 49 right); extra-cerebral
    generation classes are renumbered from 100.
    """
    with np.load(models_dir() / "heldout_anatomy.npz") as z:
        return z["labels"], z["affine"]


def crop_around_thalami(labels: np.ndarray, affine: np.ndarray, size_mm=(112, 112, 96)):
    """A box of about ``size_mm`` (1 mm voxels) of a label map centred on its thalami (10/49).

    Returns the cropped labels and their vox->world affine; small boxes keep renders fast.
    """
    thal = np.argwhere((labels == 10) | (labels == 49))
    c = np.rint(thal.mean(0)).astype(int)
    half = np.asarray(size_mm) // 2
    lo = np.maximum(c - half, 0)
    hi = np.minimum(c + half, labels.shape)
    crop = labels[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]
    aff = affine.copy()
    aff[:3, 3] = affine[:3, :3] @ lo + affine[:3, 3]
    return crop, aff


def render_scan(labels: np.ndarray, affine: np.ndarray, contrast: str, *, spacing=(1.0, 1.0, 1.0),
                rng=0, skull_strip: bool = False):
    """Render a whole-head image of ``contrast`` from a 1 mm RAS label map.

    Parameters
    ----------
    labels : int array (X, Y, Z)
        FreeSurfer label values on a 1 mm RAS grid with vox->world ``affine``.
    contrast : ``"T1w"``, ``"FLAIR"`` or ``"R1"``
        Tissue prior used for the intensities (with random jitter, noise and bias field).
    spacing : 3 floats
        Output voxel size in mm (e.g. (1, 1, 1.5) for thick slices along z).
    rng : int
        Seed.

    Returns
    -------
    image : float32 array on the output grid
    truth : uint8 array 0/1/2 on the output grid
    out_affine : (4, 4) array
    """
    gen = torch.Generator().manual_seed(int(rng))
    values = np.unique(labels)
    bank = augment.LabelBank(values)
    idx = torch.from_numpy(bank.encode(labels))
    img = augment.render_image(idx, bank, gen, spacing=1.0, contrast=contrast, prior_prob=1.0,
                             skull_strip_prob=1.0 if skull_strip else 0.0, degrade=False)
    # mild, fixed degradations: scanner blur, bias field and noise
    img = augment.blur(img, [0.5, 0.5, 0.5])
    field = torch.randn(1, 1, 4, 4, 4, generator=gen) * 0.15
    img = img * torch.exp(F.interpolate(field, size=img.shape, mode="trilinear", align_corners=True)[0, 0])
    img = img + torch.randn(img.shape, generator=gen) * 0.02
    spacing = np.asarray(spacing, dtype=float)
    truth = bank.sides(idx).to(torch.uint8)
    out_affine = np.asarray(affine, dtype=float).copy()
    if np.allclose(spacing, 1.0):
        return img.numpy().astype(np.float32), truth.numpy(), out_affine
    # thick slices: slab profile blur then sampling every `spacing` mm
    sig = [0.42 * max(s - 1.0, 0.0) * 1.2 for s in spacing]
    img = augment.blur(img, sig)
    shape = tuple(int(np.floor((n - 1) / s)) + 1 for n, s in zip(img.shape, spacing, strict=False))
    grids = [torch.arange(m, dtype=torch.float32) * s for m, s in zip(shape, spacing, strict=False)]
    ijk = torch.stack(torch.meshgrid(*grids, indexing="ij"), dim=-1)
    size = torch.tensor(img.shape, dtype=torch.float32)
    g = (2 * ijk / (size - 1) - 1).flip(-1)[None]
    out = F.grid_sample(img[None, None], g, mode="bilinear", align_corners=True)[0, 0]
    tr = F.grid_sample(truth[None, None].float(), g, mode="nearest", align_corners=True)[0, 0]
    out_affine[:3, :3] = out_affine[:3, :3] @ np.diag(spacing)
    return out.numpy().astype(np.float32), tr.to(torch.uint8).numpy(), out_affine


def dice(pred: np.ndarray, truth: np.ndarray, side: int) -> float:
    """Dice of one side, 1 left or 2 right (NaN when both are empty)."""
    return float(side_dice(truth, pred)[side - 1])


def _labels_and_soft(result):
    """``predict``'s answer -> (labels, soft voxel counts (left, right) or None); ``predict``
    may return labels or a dict with ``labels`` and ``soft_voxels``."""
    if isinstance(result, dict):
        soft = result.get("soft_voxels")
        return result["labels"], (None if soft is None else np.asarray(soft, float))
    return result, None


def _volume_fields(pred, soft, truth, side):
    n_true = int(np.count_nonzero(truth == side))
    n_pred = int(np.count_nonzero(pred == side))
    row = dict(true_voxels=n_true, pred_voxels=n_pred,
               volume_error=100.0 * (n_pred - n_true) / max(n_true, 1))
    if soft is not None:
        row["pred_soft_voxels"] = float(soft[side - 1])
        row["soft_volume_error"] = 100.0 * (float(soft[side - 1]) - n_true) / max(n_true, 1)
    return row


def _renders(labels, affine, contrast, spacing, rng):
    """Image (or co-registered channels (C, X, Y, Z) for ``"A+B"``), truth and affine."""
    parts = contrast.split("+")
    renders = [render_scan(labels, affine, p, spacing=spacing, rng=rng + 1000 * j)
               for j, p in enumerate(parts)]
    img, truth, aff = renders[0]
    if len(parts) > 1:
        img = np.stack([r[0] for r in renders])
    return img, truth, aff


def evaluate_segmenter(predict, maps, *, contrasts=("T1w", "FLAIR", "R1"),
                       spacings=((1.0, 1.0, 1.0), (1.0, 1.0, 1.5)), seed=0):
    """Dice and volume error per (map, contrast, spacing, side) of
    ``predict(image, affine, contrast) -> labels``.

    ``volume_error`` is (predicted - true) / true voxel count, in percent; when ``predict``
    returns a dict with ``labels`` and ``soft_voxels`` (sum of probabilities per side, in
    voxels of the input grid) the rows also hold ``soft_volume_error``.

    ``maps``: iterable of (name, labels, affine). A contrast like ``"T1w+FLAIR+R1"`` passes
    co-registered renders stacked as (C, X, Y, Z). Returns a list of dict rows.
    """
    rows = []
    for k, (name, labels, affine) in enumerate(maps):
        for ci, c in enumerate(contrasts):
            for si, sp in enumerate(spacings):
                img, truth, aff = _renders(labels, affine, c, sp, seed + 100 * k + 10 * ci + si)
                pred, soft = _labels_and_soft(predict(img, aff, c))
                for side, sname in ((1, "left"), (2, "right")):
                    rows.append(dict(map=name, contrast=c, spacing="x".join(f"{v:g}" for v in sp),
                                     side=sname, dice=dice(pred, truth, side),
                                     **_volume_fields(pred, soft, truth, side)))
    return rows


class ThalamusResizer:
    """Grow or shrink each thalamus of one label map by a chosen volume factor.

    The thalamus is first filled with the label of the nearest other structure (what atrophy
    exposes: ventricle, internal capsule, ...), then set again where a smoothed signed
    distance to its original boundary is below the threshold that gives the wanted volume;
    the rest of the anatomy stays as it is.

    Parameters
    ----------
    labels : numpy.ndarray
        Integer label volume (X, Y, Z), isotropic voxels of ``spacing`` mm.
    codes : (int, int)
        The left and right thalamus values in ``labels``.
    """

    def __init__(self, labels: np.ndarray, codes, spacing: float = 1.0, margin: int = 12):
        from scipy import ndimage as ndi

        labels = np.asarray(labels)
        self.codes = tuple(int(c) for c in codes)
        thal = np.isin(labels, self.codes)
        ijk = np.argwhere(thal)
        lo = np.maximum(ijk.min(0) - margin, 0)
        hi = np.minimum(ijk.max(0) + margin + 1, labels.shape)
        self.box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))
        sub = labels[self.box]
        near = ndi.distance_transform_edt(np.isin(sub, self.codes), return_distances=False,
                                          return_indices=True)
        self.filled = labels.copy()
        self.filled[self.box] = sub[tuple(near)]
        self.sdt, self.sorted, self.n0 = [], [], []
        for c in self.codes:
            m = sub == c
            out = ndi.distance_transform_edt(~m, sampling=spacing)
            inside = ndi.distance_transform_edt(m, sampling=spacing)
            d = np.where(m, -(inside - 0.5 * spacing), out - 0.5 * spacing)
            d = ndi.gaussian_filter(d, 0.7 / spacing).astype(np.float32)
            self.sdt.append(d)
            vals = np.sort(d.ravel())
            self.sorted.append(vals)
            self.n0.append(int(np.count_nonzero(m)))

    def threshold(self, side: int, factor: float) -> float:
        """Signed-distance threshold (mm) giving ``factor`` times the side's volume."""
        vals = self.sorted[side]
        k = int(np.clip(round(factor * self.n0[side]), 1, vals.size - 1))
        return float(0.5 * (vals[k - 1] + vals[k]))

    def __call__(self, factors) -> np.ndarray:
        """The label map with thalamus volumes scaled by ``factors`` (left, right)."""
        out = self.filled.copy()
        sub = out[self.box]
        for side, (c, f) in enumerate(zip(self.codes, factors, strict=True)):
            sub[self.sdt[side] < self.threshold(side, float(f))] = c
        return out


def volume_response(predict, maps, *, factors=(0.7, 0.85, 1.0, 1.15), contrast="T1w", seed=0):
    """Measured against true volume when each thalamus is shrunk or grown on its own.

    Every map's thalami are scaled by each factor (:class:`ThalamusResizer`: what atrophy
    exposes takes the neighbouring labels), rendered at 1 mm and segmented. A
    method that follows the image measures the planted change; one that leans on a typical
    shape pulls volumes towards it (slope of measured on true volume below 1).

    Returns a list of dict rows: map, factor, side, true and predicted voxel counts,
    volume_error (percent), and the soft ones when ``predict`` gives them (see
    :func:`evaluate_segmenter`). A contrast like ``"T1w+FLAIR+R1"`` renders co-registered
    channels.
    """
    rows = []
    for k, (name, labels, affine) in enumerate(maps):
        resize = ThalamusResizer(labels, (10, 49))
        for j, f in enumerate(factors):
            img, truth, aff = _renders(resize((f, f)), affine, contrast, (1.0, 1.0, 1.0), seed + 100 * k + j)
            pred, soft = _labels_and_soft(predict(img, aff, contrast))
            for side, sname in ((1, "left"), (2, "right")):
                rows.append(dict(map=name, factor=float(f), side=sname,
                                 **_volume_fields(pred, soft, truth, side)))
    return rows


def response_slope(rows, pred: str = "pred_voxels") -> float:
    """Least-squares slope of predicted (column ``pred``) on true volume, within each
    (map, side) (so that differences between anatomies do not count): 1 for a method that
    follows every change."""
    import pandas as pd

    df = pd.DataFrame(rows)
    g = df.groupby(["map", "side"])
    x = df["true_voxels"] - g["true_voxels"].transform("mean")
    y = df[pred] - g[pred].transform("mean")
    return float((x * y).sum() / (x * x).sum())


def build_heldout_asset(label_map, out) -> None:
    """Write the shipped held-out anatomy from a FreeSurfer label map (asset building only).

    Reoriented to RAS, cropped to the head's bounding box (+2 voxels), brain labels kept,
    other generation classes renumbered from 100, uint8, compressed.
    """
    import nibabel as nib

    img = nib.as_closest_canonical(nib.load(str(label_map)))
    lab = np.rint(np.asarray(img.dataobj)).astype(np.int32)
    nz = np.argwhere(lab > 0)
    lo = np.maximum(nz.min(0) - 2, 0)
    hi = np.minimum(nz.max(0) + 3, lab.shape)
    crop = lab[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]
    out_lab = np.zeros(crop.shape, dtype=np.uint8)
    extra = sorted(v for v in np.unique(crop) if v and v not in augment.BRAIN_LABELS)
    for v in np.unique(crop):
        if v in augment.BRAIN_LABELS:
            out_lab[crop == v] = v
    for k, v in enumerate(extra):
        out_lab[crop == v] = 100 + k
    aff = img.affine.copy()
    aff[:3, 3] = img.affine[:3, :3] @ lo + img.affine[:3, 3]
    np.savez_compressed(out, labels=out_lab, affine=aff, source=np.array(str(getattr(label_map, "name", label_map)).split("/")[-1]))
