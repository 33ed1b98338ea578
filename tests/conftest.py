"""Fixtures shared by several test directories, built on :mod:`thaldask.testing`.

Being the top-level conftest, its folder (``tests/``) is put on ``sys.path`` by pytest's
default (prepend) import mode, so test modules import the shared helpers as ``helpers``.
"""

from __future__ import annotations

import sys

import pytest

from thaldask.testing import make_store, render_scans


def _one_torch_thread():
    torch = sys.modules.get("torch")
    if torch is not None and torch.get_num_threads() != 1:
        torch.set_num_threads(1)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    """Torch on one thread wherever it is in use (the machine's cores are shared); torch is
    not imported for tests that do not need it."""
    _one_torch_thread()


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_call(item):
    _one_torch_thread()  # torch imported by a fixture of this test


@pytest.fixture(scope="session")
def anatomy():
    """The held-out label map shipped with the model: (labels, affine)."""
    from thaldask.thalnet.validate import load_heldout_anatomy  # torch

    _one_torch_thread()
    return load_heldout_anatomy()


@pytest.fixture(scope="session")
def small_scans(anatomy):
    """T1w-, FLAIR- and R1-like renders (1 mm) of a 112 x 112 x 96 mm box around the thalami:
    contrast -> (image, truth, affine)."""
    _one_torch_thread()
    return render_scans(("T1w", "FLAIR", "R1"), shape=(112, 112, 96), seed=0)


@pytest.fixture
def small_store(tmp_path):
    """A small cohort store (:func:`thaldask.testing.make_store`) and the masks it holds."""
    return make_store(tmp_path / "cohort.zarr")
