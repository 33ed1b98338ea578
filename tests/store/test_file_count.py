"""Files a store holds per scan, after evaluate: the tables and evaluate's caches are a few
objects whatever the cohort's size; what remains per scan is each array's own chunks and
write records (counted here so that the count can only go down)."""

from __future__ import annotations

import collections
import os

import pytest

from thaldask.metrics.evaluate import evaluate
from thaldask.testing import make_store

pytestmark = pytest.mark.slow


def _files(path) -> collections.Counter:
    c = collections.Counter()
    for d, _, fs in os.walk(path):
        top = os.path.relpath(d, path).split(os.sep)[0]
        c[top] += len(fs)
    return c


def _count(tmp_path, n_subjects):
    st, _ = make_store(tmp_path / f"s{n_subjects}.zarr", n_subjects=n_subjects, images=("T1w",))
    evaluate(st.path, progress=False, csv_path="")
    arrays = [n for n, _ in st.array_members() if n.startswith(("images/", "masks/"))]
    return st.n_scans, _files(st.path), len(arrays)


def test_tables_and_caches_do_not_grow_with_the_cohort(tmp_path):
    n1, small, k = _count(tmp_path, 10)
    n2, large, k2 = _count(tmp_path, 40)
    assert k == k2
    for top in ("_metrics", "_tables", "scan", "results", "."):  # a few objects each, any N
        assert large[top] == small[top], (top, small[top], large[top])
    # per scan: at most one chunk per data array, and its write record and digests
    per_scan = {top: (large[top] - small[top]) / (n2 - n1) for top in large}
    assert per_scan["images"] + per_scan["masks"] <= k
    assert per_scan["_meta"] <= 2 * k + 1
    assert sum(per_scan.values()) <= 3 * k + 1
