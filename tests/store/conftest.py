"""Fixtures of the store tests."""

import pytest
from helpers.store import small_cohort_files


@pytest.fixture
def small_cohort(tmp_path):
    """Three scans (RAS, LAS, LIA; two shapes, two sites) with T1w and a gt mask."""
    return small_cohort_files(tmp_path)
