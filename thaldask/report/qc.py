"""Visual quality control: thalamus contours over the image in three planes.

Volumes are in the store's RAS orientation (axis 0 = x towards the subject's right, 1 = y
anterior, 2 = z superior), so every panel is drawn in neurological convention (subject's
right on the viewer's right) and labelled. Panels are cropped around the thalamus and drawn
with the voxel size as aspect ratio, so anisotropic scans keep their true proportions.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from thaldask._shared.paths import safe_name
from thaldask.errors import ScanError
from thaldask.report.style import GT_COLOUR, PRED_COLOUR, new_figure, png_bytes, save, styled
from thaldask.schema import GT_METHOD
from thaldask.store import open_store

__all__ = ["slice_centre", "plot_scan_qc", "select_qc_cases", "write_qc", "qc_rows_for_scan",
           "qc_montage_png"]

PLANES = ("axial", "coronal", "sagittal")
_TAG = {"facecolor": "black", "alpha": 0.55, "pad": 1.0, "linewidth": 0}  # orientation letters


def slice_centre(*masks, shape=None) -> tuple[int, int, int]:
    """Voxel index (x, y, z) where the three QC planes cross.

    y and z: centroid of the union of the non-empty ``masks``; x: centroid of the left
    thalamus (label 1; else the right, label 2), so the sagittal plane cuts through a
    thalamus rather than the midline between them. The volume centre when all are empty.

    >>> lab = np.zeros((10, 10, 10), np.uint8); lab[2:4, 4:6, 5] = 1; lab[6:8, 4:6, 5] = 2
    >>> slice_centre(lab)
    (2, 4, 5)
    """
    masks = [m for m in masks if m is not None]
    union = None
    for m in masks:
        union = (m > 0) if union is None else union | (m > 0)
    if union is None or not union.any():
        shape = shape if shape is not None else (union.shape if union is not None else (1, 1, 1))
        return tuple(int(s // 2) for s in shape)
    centre = [int(round(float(c.mean()))) for c in np.nonzero(union)]
    for value in (1, 2):
        xs = np.concatenate([np.nonzero(m == value)[0] for m in masks])
        if xs.size:
            centre[0] = int(round(float(xs.mean())))
            break
    return tuple(centre)


def _bbox(masks, shape, spacing, margin_mm):
    union = np.zeros(shape, bool)
    for m in masks:
        if m is not None:
            union |= m > 0
    if not union.any():
        return tuple(slice(0, s) for s in shape)
    out = []
    for ax in range(3):
        idx = np.flatnonzero(union.any(tuple(a for a in range(3) if a != ax)))
        pad = int(np.ceil(margin_mm / spacing[ax]))
        out.append(slice(max(idx[0] - pad, 0), min(idx[-1] + pad + 1, shape[ax])))
    return tuple(out)


def _plane(vol, plane, centre, box):
    """2-D view (rows = vertical axis) and the (horizontal, vertical) axis indices."""
    x, y, z = centre
    if plane == "axial":
        return vol[box[0], box[1], z].T, (0, 1)
    if plane == "coronal":
        return vol[box[0], y, box[2]].T, (0, 2)
    return vol[x, box[1], box[2]].T, (1, 2)


def _contours(ax, lab2d, colour, *, ls="-", lw=1.1, extent=None):
    for value in (1, 2):
        m = (lab2d == value).astype(float)
        if m.any() and m.min() == 0:
            ax.contour(m, levels=[0.5], colors=[colour], linewidths=lw, linestyles=ls,
                       origin="lower", extent=extent)


@styled
def plot_scan_qc(
    image: np.ndarray,
    rows: list[tuple[str, np.ndarray | None]],
    *,
    spacing=(1.0, 1.0, 1.0),
    gt: np.ndarray | None = None,
    images: list[np.ndarray | None] | None = None,
    gts: list[np.ndarray | None] | None = None,
    spacings: list | None = None,
    title: str = "",
    margin_mm: float = 20.0,
):
    """Montage of thalamus contours over ``image``: one row per ``(label, labels)`` entry,
    columns axial / coronal / sagittal through the thalamus centroid.

    Parameters
    ----------
    image : array of shape (x, y, z), float
        Image in RAS orientation (used for every row unless ``images`` is given).
    rows : list of (str, array of shape (x, y, z) uint8 or None)
        Row title and 0/1/2 label volume of a method (None: image and GT only).
    spacing : sequence of 3 floats
        Voxel size in mm.
    gt : array of shape (x, y, z) uint8, optional
        Ground truth drawn dashed in every row.
    images : list of arrays, optional
        Per-row image (e.g. the contrast a method ran on); None entries use ``image``.
    gts, spacings : lists, optional
        Per-row ground truth and voxel size, for rows from different scans; they replace
        ``gt`` and ``spacing``.

    Returns
    -------
    matplotlib.figure.Figure
        Method contours in sky blue (solid), ground truth in yellow (dashed).
    """
    rows = rows or [("image", None)]
    height = 2.35 * len(rows) + 0.5
    fig, axes = new_figure(7.2, height, len(rows), 3, layout=None)
    fig.subplots_adjust(left=0.07, right=0.995, bottom=0.1 / height, top=1 - 0.85 / height,
                        wspace=0.04, hspace=0.3 / 2.35 * 2)
    any_gt = gt is not None or (gts is not None and any(g is not None for g in gts))
    for r, (label, lab) in enumerate(rows):
        img = image if images is None or images[r] is None else images[r]
        spacing = np.asarray(spacing if spacings is None else spacings[r], float)
        if gts is not None:
            gt = gts[r]
        centre = slice_centre(lab, gt, shape=img.shape)
        box = _bbox([lab, gt], img.shape, spacing, margin_mm)
        finite = img[np.isfinite(img)]
        vmin, vmax = (np.percentile(finite, [1, 99.5]) if finite.size else (0, 1))
        for c, plane in enumerate(PLANES):
            ax = axes[r, c]
            view, (h, v) = _plane(img, plane, centre, box)
            extent = (0, view.shape[1] * spacing[h], 0, view.shape[0] * spacing[v])
            ax.imshow(view, cmap="gray", origin="lower", vmin=vmin, vmax=vmax, extent=extent,
                      interpolation="nearest")
            if lab is not None:
                _contours(ax, _plane(lab, plane, centre, box)[0], PRED_COLOUR, lw=1.4,
                          extent=extent)
            if gt is not None:  # dashed on top, so a perfect match still shows both
                _contours(ax, _plane(gt, plane, centre, box)[0], GT_COLOUR, ls="--", lw=1.0,
                          extent=extent)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.grid(False)
            for s in ax.spines.values():
                s.set_visible(False)
            idx = {"axial": ("z", centre[2]), "coronal": ("y", centre[1]),
                   "sagittal": ("x", centre[0])}[plane]
            if r == 0:
                ax.set_title(f"{plane} ({idx[0]} = {idx[1]})", fontsize=8)
            else:
                ax.set_title(f"{idx[0]} = {idx[1]}", fontsize=7)
            if plane != "sagittal":
                ax.text(0.01, 0.02, "L", color="white", fontsize=7, bbox=_TAG, transform=ax.transAxes)
                ax.text(0.99, 0.02, "R", color="white", fontsize=7, bbox=_TAG, ha="right",
                        transform=ax.transAxes)
            else:
                ax.text(0.01, 0.02, "P", color="white", fontsize=7, bbox=_TAG, transform=ax.transAxes)
                ax.text(0.99, 0.02, "A", color="white", fontsize=7, bbox=_TAG, ha="right",
                        transform=ax.transAxes)
            if c == 0:
                ax.set_ylabel(label, fontsize=8)
    legend = "method: solid sky blue" + ("; ground truth: dashed yellow" if any_gt else "")
    fig.suptitle(f"{title}\n{legend}" if title else legend, fontsize=9)
    return fig


def select_qc_cases(
    ds: xr.Dataset, method: str, contrast: str, *, n_random: int = 2, rng=0, side: str = "total"
) -> pd.DataFrame:
    """Scans to show for one method × contrast: best, median and worst Dice plus a random
    sample of the others (``rng``: int or ``np.random.Generator``).

    Without ground truth (no finite Dice) only the random sample is drawn, from the scans
    with a volume. Returns a frame with columns case, subject, timepoint, dice.
    """
    rng = np.random.default_rng(rng)
    d = ds.sel(side=side) if "side" in ds.dims else ds
    sel = {"method": method, "contrast": contrast}
    dice = d["dice"].sel(sel).to_series() if "dice" in d else pd.Series(dtype=float)
    vol = d["volume_mm3"].sel(sel).to_series()
    dice = dice.dropna().sort_values(kind="stable")
    picked = []
    if len(dice):
        order = list(dice.index)
        for case, k in (("best", len(order) - 1), ("median", (len(order) - 1) // 2), ("worst", 0)):
            if order[k] not in [p[1] for p in picked]:
                picked.append((case, order[k]))
    rest = [k for k in vol.dropna().index if k not in [p[1] for p in picked]]
    if rest and n_random > 0:
        for j in rng.choice(len(rest), size=min(n_random, len(rest)), replace=False):
            picked.append(("random", rest[int(j)]))
    return pd.DataFrame(
        [(case, str(k[0]), str(k[1]), float(dice.get(k, np.nan))) for case, k in picked],
        columns=["case", "subject", "timepoint", "dice"],
    )


def qc_montage_png(store, method: str, contrast: str, image_contrast: str, cases, *, title: str) -> bytes:
    """PNG bytes of one method × contrast montage (:func:`plot_scan_qc`) of stored scans.

    ``cases``: (row label, scan index) pairs; each row draws the method's mask over the
    ``image_contrast`` image of that scan, with the scan's ground truth. Reads the store
    where it runs (a Dask worker, for the report's visual QC) and returns only the bytes.
    """
    st = open_store(store) if isinstance(store, (str, Path)) else store
    rows, images, gts, spacings = [], [], [], []
    for label, i in cases:
        rows.append((label, st.load_mask(method, contrast, int(i))))
        images.append(st.load_image(image_contrast, int(i)))
        gts.append(gt_mask_for(st, contrast, int(i)))
        spacings.append(st.spacing[int(i)])
    return png_bytes(plot_scan_qc(images[0], rows, images=images, gts=gts, spacings=spacings, title=title))


def image_contrast_of(st, contrast: str) -> str | None:
    """Image to draw a mask on: its own contrast, else (ensembles such as ``T1w+FLAIR``) the
    first of its parts that is stored, else the first stored contrast."""
    for c in [contrast, *contrast.split("+"), *st.contrasts]:
        if c in st.contrasts:
            return c
    return None


def gt_mask_for(st, contrast: str, i: int) -> np.ndarray | None:
    """Ground-truth labels of scan ``i`` drawn beside a mask of ``contrast``: the GT of that
    contrast, else of one of its parts, else any stored GT; None when the scan has none."""
    gts = [c for m, c in st.methods if m == GT_METHOD]
    for c in [contrast, *contrast.split("+"), *gts]:
        if (GT_METHOD, c) in st.methods and bool(st.has_mask(GT_METHOD, c)[i]):
            return st.load_mask(GT_METHOD, c, i)
    return None


def scan_index(st, subject: str, timepoint: str) -> int | None:
    """Position of the scan (subject, timepoint) in the store, None if absent."""
    sc = st.scans
    hit = np.flatnonzero((sc["subject"].astype(str) == str(subject))
                         & (sc["timepoint"].astype(str) == str(timepoint)))
    return int(hit[0]) if hit.size else None


def qc_rows_for_scan(st, i: int, methods=None):
    """Rows (label, labels, image contrast, mask contrast) for every stored (method,
    contrast) mask of scan ``i``."""
    rows = []
    for m, c in st.methods:
        if m == GT_METHOD or (methods is not None and (m, c) not in methods):
            continue
        if not bool(st.has_mask(m, c)[i]):
            continue
        ic = image_contrast_of(st, c)
        if ic is None:
            continue
        rows.append((f"{m} · {c}", st.load_mask(m, c, i), ic, c))
    return rows


def write_qc(store, subject: str, out, *, timepoint: str | None = None, fmt: str = "png"):
    """One montage per scan of ``subject`` (every timepoint, or only ``timepoint``): every
    method's contours over the image it ran on, with the ground truth where present.

    Parameters
    ----------
    store : str, Path or opened store
    subject, timepoint : str
    out : str or Path
        Folder; files are named ``qc_<subject>_<timepoint>.<fmt>``.

    Returns
    -------
    list of Path
        The files written (eager; reads one scan at a time from the store).
    """
    st = open_store(store) if isinstance(store, (str, Path)) else store
    sc = st.scans
    sel = sc["subject"].astype(str) == str(subject)
    if timepoint is not None:
        sel &= sc["timepoint"].astype(str) == str(timepoint)
    idx = np.flatnonzero(sel.to_numpy())
    if idx.size == 0:
        known = ", ".join(sorted(sc["subject"].astype(str).unique())[:10])
        what = f"subject {subject!r}" + (f" at timepoint {timepoint!r}" if timepoint else "")
        raise ScanError(f"{st.path}: no scan for {what}; subjects include: {known}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for i in idx:
        i = int(i)
        tp = str(sc["timepoint"].iloc[i])
        rows = qc_rows_for_scan(st, i)
        ref = image_contrast_of(st, st.contrasts[0]) if st.contrasts else None
        images = {c: st.load_image(c, i) for c in {r[2] for r in rows} | ({ref} if ref else set())
                  if bool(st.has_image(c)[i])}
        if not images:
            continue
        base = images.get(ref) if ref in images else next(iter(images.values()))
        if rows:  # each method over the image it ran on, with the GT of that contrast
            fig = plot_scan_qc(
                base, [(label, lab) for label, lab, _, _ in rows],
                images=[images.get(c) for _, _, c, _ in rows],
                gts=[gt_mask_for(st, mc, i) for _, _, _, mc in rows],
                spacing=st.spacing[i], title=f"{subject} · {tp} · site {sc['site'].iloc[i]}",
            )
        else:  # no method mask: the image with its ground truth, if any
            gt = gt_mask_for(st, ref or "", i)
            fig = plot_scan_qc(base, [("ground truth" if gt is not None else "image", None)],
                               gt=gt, spacing=st.spacing[i],
                               title=f"{subject} · {tp} · site {sc['site'].iloc[i]}")
        path = out / f"qc_{safe_name(subject)}_{safe_name(tp)}.{fmt}"
        save(fig, path)
        written.append(path)
    return written
