"""Fixtures of the metrics tests."""

from __future__ import annotations

import pytest
from metrics_store_helper import make_store


@pytest.fixture
def small_store(tmp_path):
    st, truth = make_store(tmp_path / "cohort.zarr")
    return st, truth
