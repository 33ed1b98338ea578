"""A small cohort store built directly through the store API (no NIfTI files)."""

from __future__ import annotations

import numpy as np
import pandas as pd

GRID = (20, 22, 18)


def _masks(rng, shape):
    g = np.zeros(shape, np.uint8)
    lo = rng.integers(2, 5, 3)
    g[lo[0] : lo[0] + 5, lo[1] : lo[1] + 7, lo[2] : lo[2] + 6] = 1
    g[lo[0] + 6 : lo[0] + 11, lo[1] : lo[1] + 7, lo[2] : lo[2] + 6] = 2
    return g


def _shift(rng, g):
    return np.roll(g, tuple(int(v) for v in rng.integers(-1, 2, 3)), axis=(0, 1, 2))


def make_store(path, *, n_subjects=3, seed=0, grid=GRID):
    """Store with scans (subject × baseline/m12), GT on T1w (all) and FLAIR (some scans),
    method 'a' on T1w/FLAIR/R1, method 'b' on T1w for some scans, and a clinical table."""
    from thaldask.store.create import create_store, set_clinical

    rng = np.random.default_rng(seed)
    rows = [(f"sub-{s:02d}", t, "siteA" if s % 2 else "siteB") for s in range(n_subjects) for t in ("baseline", "m12")]
    scans = pd.DataFrame(rows, columns=["subject", "timepoint", "site"])
    n = len(scans)
    shapes = np.array([grid if i % 3 else (grid[0] - 2, grid[1], grid[2] - 1) for i in range(n)])
    spacing = np.array([[1.0, 1.0, 1.0] if i % 2 else [0.9, 1.1, 1.5] for i in range(n)])
    affines = np.stack([np.diag([*sp, 1.0]) for sp in spacing])
    st = create_store(
        str(path),
        scans=scans,
        grid_shape=grid,
        scan_meta={"affine": affines, "shape": shapes, "spacing": spacing},
        reference=["T1w"] * n,
        orig_axcodes=["RAS"] * n,
    )
    truth = {}
    for i in range(n):
        shp = tuple(int(v) for v in shapes[i])
        g = _masks(rng, shp)
        truth[("gt", "T1w", i)] = g
        st.write_mask("gt", "T1w", i, g)
        if i % 2 == 0:
            gf = _shift(rng, g)
            truth[("gt", "FLAIR", i)] = gf
            st.write_mask("gt", "FLAIR", i, gf)
        for c in ("T1w", "FLAIR", "R1"):
            p = _shift(rng, g)
            if i == 1 and c == "R1":
                p = np.zeros_like(p)  # an empty prediction
            truth[("a", c, i)] = p
            st.write_mask("a", c, i, p)
        if i != 2:
            p = _shift(rng, g)
            truth[("b", "T1w", i)] = p
            st.write_mask("b", "T1w", i, p)
    clin = scans[["subject", "timepoint", "site"]].copy()
    clin["group"] = ["MS" if k % 2 else "HC" for k in range(n)]
    clin["age"] = np.linspace(30, 50, n)
    clin["sex"] = ["F", "M"] * (n // 2) + ["F"] * (n % 2)
    clin["edss"] = np.linspace(0, 6, n)
    clin = clin.iloc[:-1]  # last scan has no clinical row
    set_clinical(st, clin)
    return st, truth
