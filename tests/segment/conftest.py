"""Small scans rendered from the held-out anatomy shipped with the model (no external data)."""

from __future__ import annotations

import numpy as np
import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def anatomy():
    from thaldask.segment.validate import load_heldout_anatomy

    return load_heldout_anatomy()


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


@pytest.fixture(scope="session")
def small_scans(anatomy):
    """T1w- and FLAIR-like renders (1 mm) of a 112 x 112 x 96 mm box around the thalami."""
    from thaldask.segment.validate import render_scan

    labels, affine = crop_around_thalami(*anatomy)
    out = {}
    for k, c in enumerate(("T1w", "FLAIR", "R1")):
        img, truth, aff = render_scan(labels, affine, c, rng=k)
        out[c] = (img, truth, aff)
    return out
