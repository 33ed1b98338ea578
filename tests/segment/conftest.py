"""Small scans rendered from the held-out anatomy shipped with the model (no external data)."""

from __future__ import annotations

import pytest
import torch
from seg_helpers import crop_around_thalami


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def anatomy():
    from thaldask.segment.validate import load_heldout_anatomy

    return load_heldout_anatomy()


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
