"""Write stored masks back as NIfTI on each scan's original grid, affine and orientation."""

from __future__ import annotations

import os

import numpy as np

from thaldask._shared.paths import check_may_write, safe_name, save_image
from thaldask.cohort.labels import from_sides
from thaldask.errors import StoreError
from thaldask.store.cohort_store import CohortStore, open_store
from thaldask.store.format import FORMAT_MGH, FORMAT_NIFTI1, FORMAT_NIFTI2
from thaldask.store.nifti import from_ras

__all__ = ["export_masks", "to_original_image"]


def to_original_image(st: CohortStore, i: int, sides: np.ndarray):
    """A nibabel image holding ``sides`` (RAS, cropped) on scan ``i``'s original grid.

    The reference file's (scrubbed) header is reused, so the affine, qform/sform codes and
    voxel order are those of the original file, bit for bit: NIfTI-1/NIfTI-2 references give
    NIfTI images, FreeSurfer MGH references MGH images (written as ``.mgz``).
    """
    import nibabel as nib

    data = from_ras(np.asarray(sides), st.orig_ornt[i])
    shape = tuple(int(v) for v in st.orig_shapes[i])
    if data.shape != shape:  # pragma: no cover - guarded by ingest
        raise ValueError(f"scan {i}: mask shape {data.shape} does not match original {shape}")
    fmt, hb = st.orig_header(i)
    if fmt in (FORMAT_NIFTI1, FORMAT_NIFTI2):
        hcls = nib.Nifti1Header if fmt == FORMAT_NIFTI1 else nib.Nifti2Header
        icls = nib.Nifti1Image if fmt == FORMAT_NIFTI1 else nib.Nifti2Image
        hdr = hcls(binaryblock=hb, check=False)
        hdr.set_data_dtype(data.dtype)
        hdr.set_data_shape(data.shape)
        hdr["scl_slope"] = np.nan
        hdr["scl_inter"] = np.nan
        hdr["cal_min"] = 0
        hdr["cal_max"] = 0
        hdr["intent_code"] = 0
        hdr["intent_p1"] = hdr["intent_p2"] = hdr["intent_p3"] = 0
        img = icls(data, None, header=hdr)
        return img
    from nibabel.freesurfer.mghformat import MGHHeader

    hdr = MGHHeader(binaryblock=hb, check=False)
    hdr.set_data_dtype(np.uint8 if data.dtype == np.uint8 else np.int32)
    if tuple(hdr.get_data_shape()[:3]) != data.shape:  # pragma: no cover - same grid by design
        zooms = hdr.get_zooms()[:3]
        hdr.set_data_shape(data.shape)  # resets voxel sizes
        hdr.set_zooms(zooms)
    return nib.MGHImage(data.astype(hdr.get_data_dtype()), None, header=hdr)


def export_masks(
    store: str | CohortStore,
    method: str,
    contrast: str,
    out: str | os.PathLike,
    *,
    labels: str | None = None,
    scans=None,
    overwrite: bool = False,
) -> list[str]:
    """Write each stored mask of (method, contrast) as ``<subject>_<timepoint>_<method>_<contrast>.nii.gz``
    (``.mgz`` for scans whose reference image was FreeSurfer MGH).

    Parameters
    ----------
    store : path/URL or an open store
    method, contrast : which masks (``gt`` for ground truth)
    out : output folder (created)
    labels : write ids of this convention (e.g. ``freesurfer`` 10/49) instead of 0/1/2
    scans : scan indices to export (default: every scan that has the mask)
    overwrite : replace existing files thaldask did not write (else refused, before any
        file is written)

    Returns
    -------
    list of written file paths (eager).
    """

    st = store if isinstance(store, CohortStore) else open_store(store, read_only=True)
    if (method, contrast) not in st.methods:
        raise StoreError(
            f"{st.path}: no masks for method {method!r} contrast {contrast!r}; "
            f"present: {', '.join(f'{m}/{c}' for m, c in st.methods) or 'none'}"
        )
    os.makedirs(out, exist_ok=True)
    have = st.has_mask(method, contrast)
    idx = np.flatnonzero(have) if scans is None else [int(i) for i in scans if have[int(i)]]
    mgh = {int(i): st.orig_header(int(i))[0] == FORMAT_MGH for i in idx}
    targets = {}
    for i in idx:
        s = st.scans.iloc[int(i)]
        ext = ".mgz" if mgh[int(i)] else ".nii.gz"
        name = f"{safe_name(s.subject)}_{safe_name(s.timepoint)}_{safe_name(method)}_{safe_name(contrast)}{ext}"
        targets[int(i)] = os.path.join(str(out), name)
        check_may_write(targets[int(i)], overwrite=overwrite)  # all of them, before any write
    paths = []
    for i, p in targets.items():
        sides = st.load_mask(method, contrast, i)
        if labels:
            sides = from_sides(sides, labels)
        img = to_original_image(st, i, sides)
        save_image(img, p)
        paths.append(p)
    return paths
