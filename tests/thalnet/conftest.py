"""Small scans rendered from the held-out anatomy shipped with the model (no external data)."""

from __future__ import annotations

import pytest
import torch

from thaldask.thalnet.validate import crop_around_thalami, load_heldout_anatomy, render_scan


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def anatomy():
    return load_heldout_anatomy()


@pytest.fixture(scope="session")
def small_scans(anatomy):
    """T1w-, FLAIR- and R1-like renders (1 mm) of a 112 x 112 x 96 mm box around the thalami."""
    labels, affine = crop_around_thalami(*anatomy)
    return {c: render_scan(labels, affine, c, rng=k) for k, c in enumerate(("T1w", "FLAIR", "R1"))}
