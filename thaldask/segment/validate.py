"""Whole-head validation scans rendered from label maps, and Dice of a segmenter on them.

Used for the model card's numbers (held-out label maps rendered as T1w-, FLAIR- and R1-like
images at 1 mm and 1 x 1 x 1.5 mm) and by the tests (on the held-out anatomy shipped beside
the weights).
"""

from __future__ import annotations

import numpy as np
import torch
from torch.nn import functional as F

from thaldask.segment import synth

__all__ = ["load_heldout_anatomy", "render_scan", "dice", "evaluate_segmenter"]


def load_heldout_anatomy():
    """The held-out label map shipped with the model: (labels uint8 (X, Y, Z) RAS, affine).

    Values are FreeSurfer brain labels (thalamus 10 left, 49 right); extra-cerebral
    generation classes are renumbered from 100.
    """
    from importlib import resources

    path = resources.files("thaldask") / "data" / "models" / "heldout_anatomy.npz"
    with resources.as_file(path) as p, np.load(p) as z:
        return z["labels"], z["affine"]


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
    bank = synth.LabelBank(values)
    idx = torch.from_numpy(bank.encode(labels))
    img = synth.render_image(idx, bank, gen, spacing=1.0, contrast=contrast, prior_prob=1.0,
                             skull_strip_prob=1.0 if skull_strip else 0.0, degrade=False)
    # mild, fixed degradations: scanner blur, bias field and noise
    img = synth.blur(img, [0.5, 0.5, 0.5])
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
    img = synth.blur(img, sig)
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
    """Dice of one side (NaN when both are empty)."""
    p, t = pred == side, truth == side
    denom = int(p.sum()) + int(t.sum())
    return 2.0 * int((p & t).sum()) / denom if denom else float("nan")


def evaluate_segmenter(predict, maps, *, contrasts=("T1w", "FLAIR", "R1"),
                       spacings=((1.0, 1.0, 1.0), (1.0, 1.0, 1.5)), seed=0):
    """Dice and volume error per (map, contrast, spacing, side) of
    ``predict(image, affine, contrast) -> labels``.

    ``volume_error`` is (predicted - true) / true voxel count, in percent.

    ``maps``: iterable of (name, labels, affine). A contrast like ``"T1w+FLAIR+R1"`` passes
    co-registered renders stacked as (C, X, Y, Z). Returns a list of dict rows.
    """
    rows = []
    for k, (name, labels, affine) in enumerate(maps):
        for ci, c in enumerate(contrasts):
            for si, sp in enumerate(spacings):
                parts = c.split("+")
                renders = [render_scan(labels, affine, p, spacing=sp, rng=seed + 100 * k + 10 * ci + si + 1000 * j)
                           for j, p in enumerate(parts)]
                img, truth, aff = renders[0]
                if len(parts) > 1:  # co-registered channels of one anatomy
                    img = np.stack([r[0] for r in renders])
                pred = predict(img, aff, c)
                for side, sname in ((1, "left"), (2, "right")):
                    n_true = int(np.count_nonzero(truth == side))
                    n_pred = int(np.count_nonzero(pred == side))
                    rows.append(dict(map=name, contrast=c, spacing="x".join(f"{v:g}" for v in sp),
                                     side=sname, dice=dice(pred, truth, side),
                                     volume_error=100.0 * (n_pred - n_true) / max(n_true, 1)))
    return rows


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
    extra = sorted(v for v in np.unique(crop) if v and v not in synth.BRAIN_LABELS)
    for v in np.unique(crop):
        if v in synth.BRAIN_LABELS:
            out_lab[crop == v] = v
    for k, v in enumerate(extra):
        out_lab[crop == v] = 100 + k
    aff = img.affine.copy()
    aff[:3, 3] = img.affine[:3, :3] @ lo + img.affine[:3, 3]
    np.savez_compressed(out, labels=out_lab, affine=aff, source=np.array(str(getattr(label_map, "name", label_map)).split("/")[-1]))
