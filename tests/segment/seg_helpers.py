"""Helpers shared by the segment tests."""

import numpy as np


def crop_around_thalami(labels, affine, size_mm=(112, 112, 96)):
    """A box of the label map around the thalami (keeps tests fast)."""
    thal = np.argwhere((labels == 10) | (labels == 49))
    c = np.rint(thal.mean(0)).astype(int)
    half = np.asarray(size_mm) // 2
    lo = np.maximum(c - half, 0)
    hi = np.minimum(c + half, labels.shape)
    crop = labels[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]
    aff = affine.copy()
    aff[:3, 3] = affine[:3, :3] @ lo + affine[:3, 3]
    return crop, aff
