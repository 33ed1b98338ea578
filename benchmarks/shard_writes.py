"""Write cost per scan into sharded and unsharded arrays, side by side (what ingest's tasks do).

Each repeat creates two fresh stores, one with ``shards`` in its layout (16 scans per shard
file) and one without (one chunk file per scan, the layout before sharding), and writes the
same scans into both the way an ingest task does: inside ``record_batch``, an int16 image and
a uint8 mask per scan with ``write_scan_array`` (the content digest computed lazily, as
ingest does). Layouts alternate within each repeat; the best CPU and wall time per scan of
each is reported, with the ratio sharded / unsharded (below 1: sharded is cheaper).

Usage::

    python benchmarks/shard_writes.py --scans 16 --grid 192 --repeat 3 --out benchmarks/shard_writes.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import tempfile
import time

import numpy as np
import pandas as pd

import thaldask
from thaldask.store.create import create_store
from thaldask.store.shards import is_sharded


def _scans(n, grid, seed=0):
    rng = np.random.default_rng(seed)
    x, y, z = np.meshgrid(*(np.linspace(-1, 1, g, dtype=np.float32) for g in grid), indexing="ij")
    out = []
    for k in range(n):
        c = rng.normal(0, 0.1, 3).astype(np.float32)
        r = (x - c[0]) ** 2 + (y - c[1]) ** 2 + (z - c[2]) ** 2
        mask = np.where(r < 0.05, np.where(x < c[0], 1, 2), 0).astype(np.uint8)
        img = (1000 * np.exp(-r) + rng.normal(0, 20, grid)).astype(np.int16)
        out.append((img, mask))
    return out


def _write(path, scans, grid, shards):
    n = len(scans)
    st = create_store(
        path, scans=pd.DataFrame({"subject": [f"s{k}" for k in range(n)], "timepoint": "b", "site": "A"}),
        grid_shape=grid, scan_meta={"affine": np.stack([np.eye(4)] * n), "shape": np.array([grid] * n),
                                    "spacing": np.ones((n, 3))},
        reference=["T1w"] * n, orig_axcodes=["RAS"] * n, layout={"shards": shards, "record_chunk": 16},
    )
    st.ensure_array("images/T1w", dtype="int16")
    st.ensure_array("masks/gt/T1w", dtype="uint8")
    assert is_sharded(st.zarr_array("images/T1w")) == shards
    c0, w0 = time.process_time(), time.perf_counter()
    with st.record_batch():
        for i, (img, mask) in enumerate(scans):
            for name, a in (("images/T1w", img), ("masks/gt/T1w", mask)):
                st.write_scan_array(name, i, a, file_sha256=hashlib.sha256(a[:1].tobytes()).digest(),
                                    content_sha256=lambda a=a: hashlib.sha256(a.tobytes()).digest())
    return time.process_time() - c0, time.perf_counter() - w0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scans", type=int, default=16)
    ap.add_argument("--grid", type=int, default=192)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--out", default="")
    args = ap.parse_args(argv)
    grid = (args.grid,) * 3
    scans = _scans(args.scans, grid)
    best = {True: [np.inf, np.inf], False: [np.inf, np.inf]}
    tmp = tempfile.mkdtemp(prefix="thaldask-shards-")
    try:
        for r in range(args.repeat):
            for shards in ((False, True) if r % 2 == 0 else (True, False)):
                path = os.path.join(tmp, f"r{r}-{shards}.zarr")
                cpu, wall = _write(path, scans, grid, shards)
                best[shards] = [min(best[shards][0], cpu), min(best[shards][1], wall)]
                shutil.rmtree(path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    n = args.scans
    res = {
        "scans": n, "grid": list(grid), "repeat": args.repeat,
        "unsharded_ms_per_scan": {"cpu": 1e3 * best[False][0] / n, "wall": 1e3 * best[False][1] / n},
        "sharded_ms_per_scan": {"cpu": 1e3 * best[True][0] / n, "wall": 1e3 * best[True][1] / n},
        "ratio_sharded_to_unsharded": {"cpu": best[True][0] / best[False][0], "wall": best[True][1] / best[False][1]},
        "thaldask": thaldask.__version__, "python": platform.python_version(), "machine": platform.machine(),
        "load_average": list(os.getloadavg()),
    }
    print(json.dumps(res, indent=1))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
