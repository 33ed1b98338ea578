"""One-scan entry points: :func:`segment_image` and :func:`segment_file`."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from thaldask import config
from thaldask._shared.paths import save_image
from thaldask.errors import ScanError
from thaldask.segment.base import split_contrast
from thaldask.segment.registry import loaded_segmenter

__all__ = ["segment_image", "segment_file"]


def _read(img, affine):
    """Array + affine from a path, a nibabel image or an array."""
    if isinstance(img, (str, Path)):
        import nibabel as nib

        path = Path(img)
        if not path.exists():
            raise ScanError(f"{path}: file not found")
        try:
            nii = nib.load(str(path))
            data = np.asarray(nii.dataobj, dtype=np.float32)
        except Exception as exc:  # noqa: BLE001 - any reader failure is a bad scan
            raise ScanError(f"{path}: cannot read image ({type(exc).__name__}: {exc})") from None
        return data, nii.affine if affine is None else affine
    if hasattr(img, "dataobj") and hasattr(img, "affine"):
        return np.asarray(img.dataobj, dtype=np.float32), img.affine if affine is None else affine
    if affine is None:
        raise ScanError("an array needs its affine (voxel -> world RAS mm)")
    return np.asarray(img, dtype=np.float32), affine


def segment_image(
    img,
    affine=None,
    *,
    contrast: str = "T1w",
    device: str | None = None,
    model: str = "thalnet",
    options: dict | None = None,
    return_prob: bool = False,
):
    """Segment left and right thalamus in one scan.

    Parameters
    ----------
    img : path, nibabel image or array
        A 3D image (X, Y, Z); for a multi-channel model an array (C, X, Y, Z) or a list of
        co-registered images named by ``contrast`` (e.g. ``"T1w+R1"``).
    affine : (4, 4) array, optional
        Voxel -> world (RAS, mm); taken from the file or image when not given.
    contrast : str
        ``T1w``, ``FLAIR``, ``R1``, ... (any contrast works with ``thalnet``).
    device : ``"auto"``, ``"cpu"``, ``"cuda"`` (default: ``thaldask.segment.device``)
    model : str
        Registered segmenter; loaded once per process and cached.
    return_prob : bool
        Also return left/right probabilities (2, X, Y, Z) float32 (None if the model has none).

    Returns
    -------
    numpy.ndarray
        uint8 (X, Y, Z) on the input grid: 0 background, 1 left, 2 right thalamus;
        ``(labels, prob)`` with ``return_prob``.

    Examples
    --------
    >>> labels = segment_image("sub-01_T1w.nii.gz", contrast="T1w")  # doctest: +SKIP
    """
    parts = split_contrast(contrast)
    if isinstance(img, (list, tuple)):
        arrs = [_read(x, affine) for x in img]
        data = np.stack([a for a, _ in arrs])
        affine = arrs[0][1]
    else:
        data, affine = _read(img, affine)
    if data.ndim == 4 and data.shape[-1] == 1 and len(parts) == 1:
        data = data[..., 0]
    seg = loaded_segmenter(model, dict(options or {}), device or config.get("segment.device"))
    pred = seg.predict(data, np.asarray(affine, dtype=np.float64), contrast=contrast)
    return (pred.labels, pred.prob) if return_prob else pred.labels


def segment_file(
    inp,
    out,
    *,
    contrast: str = "T1w",
    device: str | None = None,
    model: str = "thalnet",
    options: dict | None = None,
    prob_out=None,
) -> Path:
    """Segment a NIfTI/MGZ file and write the mask (uint8, 1 left, 2 right) on its grid."""
    import nibabel as nib

    inp = Path(inp)
    data, affine = _read(inp, None)
    labels, prob = segment_image(data, affine, contrast=contrast, device=device, model=model,
                                 options=options, return_prob=True)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    hdr = nib.load(str(inp)).header
    img = nib.Nifti1Image(labels.astype(np.uint8), affine)
    try:
        img.header.set_zooms(hdr.get_zooms()[:3])
        img.header.set_qform(affine, code=1)
        img.header.set_sform(affine, code=1)
    except Exception:  # noqa: BLE001 - mgz headers differ; the affine is what matters
        pass
    img.set_data_dtype(np.uint8)
    save_image(img, out)
    if prob_out is not None:
        if prob is None:
            raise ScanError(f"segmenter {model!r} gives no probabilities; drop --prob")
        p = np.moveaxis(np.asarray(prob, dtype=np.float32), 0, -1)
        save_image(nib.Nifti1Image(p, affine), prob_out)
    return out
