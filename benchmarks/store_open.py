"""Opening a cohort store of N scans: the store format 2 (tables in columns) next to format 1
(scan and clinical tables as JSON in the root ``zarr.json``), as a ratio.

Metadata-only stores (scan table, per-scan affines, shapes and spacings, a clinical table
of 8 columns; no images) of each N. Timed per format, each the median of ``--repeat`` runs:

* ``open``: ``open_store`` + ``n_scans`` + ``grid_shape`` (what every task does);
* ``scans``: the scan table (what planning reads);
* ``clinical``: the clinical table;
* the size of the root ``zarr.json``.

Usage::

    python benchmarks/store_open.py --n 1000 10000 100000 --out benchmarks/store_open.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import zarr

import thaldask
from thaldask.store import open_store
from thaldask.store.create import create_store, set_clinical


def _store(path, n):
    rng = np.random.default_rng(0)
    scans = pd.DataFrame({"subject": [f"sub-{i // 2:06d}" for i in range(n)],
                          "timepoint": ["baseline", "m12"] * (n // 2), "site": rng.choice(["A", "B", "C"], n)})
    st = create_store(str(path), scans=scans, grid_shape=(182, 218, 182),
                      scan_meta={"affine": np.repeat(np.eye(4)[None], n, 0), "shape": np.full((n, 3), 180),
                                 "spacing": np.ones((n, 3))},
                      reference=["T1w"] * n, orig_axcodes=["LIA"] * n)
    clin = scans.copy()
    for c in ("age", "edss", "sdmt", "icv_mm3", "disease_duration"):
        clin[c] = rng.normal(40, 10, n).round(2)
    set_clinical(st, clin)
    return st


def _as_format_1(path):
    """The same store as format 1 wrote it: tables in the root attributes."""
    st = open_store(path)
    g = zarr.open_group(path, mode="r+", zarr_format=3)
    attrs = dict(g.attrs)
    s, c = st.scans, st.clinical
    attrs["scans"] = {k: [str(v) for v in s[k]] for k in ("subject", "timepoint", "site")}
    attrs["reference"], attrs["orig_axcodes"] = st.reference, st.orig_axcodes
    attrs["clinical"] = {"columns": list(c.columns), "dtypes": {k: str(c[k].dtype) for k in c.columns},
                         "data": c.astype(object).where(pd.notna(c), None).values.tolist()}
    attrs["thaldask"] = {**attrs["thaldask"], "format": 1}
    attrs.pop("n_scans")
    g.attrs.put(json.loads(json.dumps(attrs)))
    for k in ("subject", "timepoint", "site", "reference", "orig_axcodes"):
        shutil.rmtree(os.path.join(path, "scan", k))
    shutil.rmtree(os.path.join(path, "_tables"))


def _time(f, repeat):
    out = []
    for _ in range(repeat):
        t = time.perf_counter()
        f()
        out.append(time.perf_counter() - t)
    return statistics.median(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, nargs="+", default=[1000, 10000, 100000])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in a.n:
            p2, p1 = str(Path(tmp) / f"v2-{n}.zarr"), str(Path(tmp) / f"v1-{n}.zarr")
            _store(p2, n)
            shutil.copytree(p2, p1)
            _as_format_1(p1)
            for fmt, p in ((1, p1), (2, p2)):
                def opened(p=p):
                    st = open_store(p)
                    return st.n_scans, st.grid_shape
                r = {"n": n, "format": fmt,
                     "open_s": _time(opened, a.repeat),
                     "scans_s": _time(lambda p=p: open_store(p).scans, a.repeat),
                     "clinical_s": _time(lambda p=p: open_store(p).clinical, a.repeat),
                     "root_json_bytes": os.path.getsize(os.path.join(p, "zarr.json"))}
                rows.append(r)
    df = pd.DataFrame(rows)
    print(f"{'N':>8}{'format':>8}{'open (ms)':>11}{'scans (ms)':>12}{'clinical (ms)':>15}{'root zarr.json':>16}")
    for r in df.itertuples():
        print(f"{r.n:>8}{r.format:>8}{1e3 * r.open_s:>11.1f}{1e3 * r.scans_s:>12.1f}{1e3 * r.clinical_s:>15.1f}"
              f"{r.root_json_bytes:>16,}")
    print("\nratio format 1 / format 2 (open, scans, clinical):")
    for n in a.n:
        v1, v2 = (df[(df.n == n) & (df.format == f)].iloc[0] for f in (1, 2))
        print(f"{n:>8}  open {v1.open_s / v2.open_s:6.1f}x  scans {v1.scans_s / v2.scans_s:6.1f}x  "
              f"clinical {v1.clinical_s / v2.clinical_s:6.1f}x")
    if a.out:
        Path(a.out).write_text(json.dumps({"rows": rows, "repeat": a.repeat, "thaldask": thaldask.__version__,
                                           "python": platform.python_version()}, indent=1) + "\n")


if __name__ == "__main__":
    main()
