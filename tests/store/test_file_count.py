"""Files a store holds per scan, after evaluate: the tables and evaluate's caches are a few
objects whatever the cohort's size; what remains per scan is each array's share of its
shard and record-chunk files (counted here so that the count can only go down), and no
folder holds more than one entry per record chunk (160,000 scans: 10,000 entries)."""

from __future__ import annotations

import collections
import os

import pytest

from thaldask.metrics.evaluate import evaluate
from thaldask.testing import make_store

pytestmark = pytest.mark.slow

GRID = (6, 5, 4)


FIXED = ("_metrics", "_tables", "scan", "results", ".")  # a few objects each, any N


def _files(path) -> tuple[collections.Counter, int]:
    """Data files (not zarr.json) per top folder, and the most entries of a folder whose
    size may depend on the cohort (the FIXED folders are checked not to grow)."""
    c, widest = collections.Counter(), 0
    for d, ds, fs in os.walk(path):
        top = os.path.relpath(d, path).split(os.sep)[0]
        c[top] += len([f for f in fs if f != "zarr.json"])
        if top not in FIXED:
            widest = max(widest, len(ds) + len(fs))
    return c, widest


def _count(tmp_path, n_subjects, **kw):
    st, _ = make_store(tmp_path / f"s{n_subjects}.zarr", n_subjects=n_subjects, images=("T1w",), grid=GRID, **kw)
    evaluate(st.path, progress=False, csv_path="")
    arrays = [n for n, _ in st.array_members() if n.startswith(("images/", "masks/"))]
    files, widest = _files(st.path)
    return st, files, widest, len(arrays)


def test_tables_and_caches_do_not_grow_with_the_cohort_and_scans_cost_under_two_files(tmp_path):
    small, f1, _, k = _count(tmp_path, 8)
    large, f2, widest, k2 = _count(tmp_path, 160)  # 320 scans, 20 record chunks
    n1, n2 = small.n_scans, large.n_scans
    assert k == k2 == 7
    for top in FIXED:
        assert f2[top] == f1[top], (top, f1[top], f2[top])
    rc = large.record_chunk
    assert rc == 16
    # per scan: each array's data shard, write record and digests hold rc scans per file
    per_scan = {top: (f2[top] - f1[top]) / (n2 - n1) for top in f2}
    assert per_scan["images"] + per_scan["masks"] <= k / rc + 0.01
    assert per_scan["_meta"] <= 2 * k / rc + 0.01
    assert sum(f2.values()) / n2 <= 2  # everything, tables and caches included (unsharded: 7.9)
    # a folder: at most one entry per record chunk, plus a few (zarr.json, ...)
    assert widest <= -(-n2 // rc) + 3, widest


def test_unsharded_layout_still_writes_one_file_per_array_and_scan(tmp_path):
    """Stores written before sharding (no "shards" in their layout): unchanged."""
    st, files, widest, k = _count(tmp_path, 8, layout={"shards": False})
    assert not any("Sharding" in type(c).__name__ for _, z in st.array_members() for c in z.metadata.codecs)
    names = [n for n, _ in st.array_members() if n.startswith(("images/", "masks/"))]
    assert files["images"] + files["masks"] == sum(int(st.written(n).sum()) for n in names)
    assert widest == st.n_scans  # one chunk folder entry per scan
