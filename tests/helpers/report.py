"""Small hand-built inputs for the report tests: a results dataset with NaNs and missing
method × contrast combinations, statistics tables, tiny label volumes for visual QC, a
cohort store with images, and a reader of the HTML page."""

from __future__ import annotations

import hashlib
from html.parser import HTMLParser

import numpy as np
import pandas as pd
import xarray as xr

from thaldask.store.create import create_store, set_clinical

METHODS = ["freesurfer-sim", "first-sim", "mindglide-sim"]
CONTRASTS = ["T1w", "FLAIR", "R1"]
SIDES = ["left", "right", "total"]
METRICS = ["dice", "jaccard", "sensitivity", "precision", "hd95_mm", "assd_mm", "volume_diff_mm3",
           "volume_diff_pct", "tp", "fp", "fn", "pred_empty", "gt_empty"]


def make_report_results(n_subjects: int = 12, rng=0) -> xr.Dataset:
    """Results dataset in the shared schema.

    GT exists at baseline for the first 8 subjects; freesurfer-sim and first-sim ran on T1w
    only, mindglide-sim on every contrast; subject 3's follow-up is missing (all NaN); one
    mindglide-sim FLAIR Dice is NaN (empty masks)."""
    rng = np.random.default_rng(rng)
    subjects = [f"sub-{i:03d}" for i in range(n_subjects)]
    tps = ["baseline", "m12"]
    shape = (n_subjects, 2, len(METHODS), len(CONTRASTS), 3)
    present = np.zeros(shape[2:4], bool)
    present[0, 0] = present[1, 0] = True
    present[2, :] = True
    bias = np.array([900.0, 600.0, 50.0])[:, None]
    gt_lr = rng.normal(7600, 700, (n_subjects, 2))
    gt = np.stack([gt_lr, gt_lr * rng.normal(1.0, 0.03, gt_lr.shape)], -1)  # (subj, tp, lr)
    gt[:, 1] *= 0.985  # one year of atrophy
    gt_tot = np.concatenate([gt, gt.sum(-1, keepdims=True)], -1)  # (subj, tp, side)
    vol = gt_tot[:, :, None, None, :] * (1 + rng.normal(0, 0.03, shape)) + bias[None, None, :, :, None] * np.array([0.5, 0.5, 1])
    vol[:, :, ~present, :] = np.nan
    vol[3, 1] = np.nan
    has_gt = np.zeros((n_subjects, 2), bool)
    has_gt[:8, 0] = True
    gt_da = np.where(has_gt[..., None], gt_tot, np.nan)
    sens = np.clip(rng.normal(0.88, 0.03, shape) + np.array([0.06, 0.04, -0.02])[:, None, None], 0, 1)
    prec = np.clip(rng.normal(0.84, 0.03, shape) + np.array([-0.06, -0.04, 0.04])[:, None, None], 0, 1)
    dice = 2 * sens * prec / (sens + prec)
    mask = has_gt[:, :, None, None, None] & present[None, None, :, :, None]
    data = {}
    for name, v in (("dice", dice), ("sensitivity", sens), ("precision", prec),
                    ("jaccard", dice / (2 - dice)), ("hd95_mm", rng.gamma(4, 0.6, shape)),
                    ("assd_mm", rng.gamma(4, 0.15, shape))):
        data[name] = np.where(mask, v, np.nan)
    data["dice"][1, 0, 2, 1, :] = np.nan
    data["volume_mm3"] = vol
    diff = vol - gt_da[:, :, None, None, :]
    data["volume_diff_mm3"] = np.where(mask, diff, np.nan)
    data["volume_diff_pct"] = np.where(mask, 100 * diff / gt_da[:, :, None, None, :], np.nan)
    dims = ("subject", "timepoint", "method", "contrast", "side")
    ds = xr.Dataset({k: (dims, v) for k, v in data.items()},
                    coords={"subject": subjects, "timepoint": tps, "method": METHODS,
                            "contrast": CONTRASTS, "side": SIDES})
    ds["gt_volume_mm3"] = (("subject", "timepoint", "side"), gt_da)
    groups = np.array(["MS", "HC", "NMOSD", "MOGAD"])[np.arange(n_subjects) % 4]
    sites = np.array(["siteA", "siteB", "siteC"])[np.arange(n_subjects) % 3]
    rep = lambda a: np.repeat(np.asarray(a, object)[:, None], 2, 1)  # noqa: E731
    ds["group"] = (("subject", "timepoint"), rep(groups))
    ds["site"] = (("subject", "timepoint"), rep(sites))
    ds["sex"] = (("subject", "timepoint"), rep(np.array(["F", "M"])[(np.arange(n_subjects) // 4 + np.arange(n_subjects)) % 2]))
    age = rng.uniform(25, 60, n_subjects)
    ds["age"] = (("subject", "timepoint"), np.stack([age, age + 1], 1))
    ds["edss"] = (("subject", "timepoint"), rng.uniform(0, 6, (n_subjects, 2)).round(1))
    ds["sdmt"] = (("subject", "timepoint"), rng.normal(50, 10, (n_subjects, 2)))
    ds["years_since_baseline"] = (("subject", "timepoint"), np.tile([0.0, 1.0], (n_subjects, 1)))
    ds["icv_mm3"] = (("subject", "timepoint"), np.repeat(rng.normal(1.5e6, 1e5, (n_subjects, 1)), 2, 1))
    ds.attrs.update(synthetic=True, created="2026-01-01T00:00:00", thaldask_version="0.1.0",
                    store="cohort.zarr")
    return ds


def make_stats() -> dict[str, pd.DataFrame]:
    """Statistics tables shaped like the stats stage's outputs (values hand-written)."""
    combos = [("freesurfer-sim", "T1w"), ("first-sim", "T1w"), ("mindglide-sim", "T1w"),
              ("mindglide-sim", "FLAIR"), ("mindglide-sim", "R1")]
    agreement = pd.DataFrame(
        [(m, c, "total", 8, 0.86 - 0.01 * i, 0.02, 900.0 - 200 * i, -100.0 - 200 * i,
          1900.0 - 200 * i, 0.05 * (i - 2), 0.01 * (i + 1), 0.8, 0.75)
         for i, (m, c) in enumerate(combos)],
        columns=["method", "contrast", "side", "n", "dice_mean", "dice_sd", "bias_mm3",
                 "loa_lower_mm3", "loa_upper_mm3", "prop_bias_slope", "prop_bias_p", "icc_a1", "ccc"])
    clinical = pd.DataFrame(
        [(m, c, o, 12, b, b - 0.3, b + 0.3, 0.04)
         for o, sign in (("edss", -1), ("sdmt", 1)) for i, (m, c) in enumerate(combos)
         for b in [sign * (0.2 + 0.05 * i)]],
        columns=["method", "contrast", "outcome", "n", "beta_std", "beta_std_ci_lower",
                 "beta_std_ci_upper", "p"])
    longitudinal = pd.DataFrame(
        [(m, c, 11, 0.7 + 0.05 * i, 0.4, 1.2 + 0.1 * i, 0.2) for i, (m, c) in enumerate(combos)],
        columns=["method", "contrast", "n", "odds_ratio", "odds_ratio_ci_lower",
                 "odds_ratio_ci_upper", "p"])
    return {"agreement": agreement, "clinical_cross": clinical, "longitudinal": longitudinal,
            "method_comparison": pd.DataFrame(columns=["metric", "p"])}


def make_scan(shape=(40, 44, 36), rng=0):
    """A blurred ellipsoid 'brain' image and 0/1/2 thalamus labels (two small ellipsoids)."""
    rng = np.random.default_rng(rng)
    x, y, z = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    img = (x**2 + y**2 + z**2 < 0.8).astype(np.float32) * 100 + rng.normal(0, 5, shape).astype(np.float32)
    lab = np.zeros(shape, np.uint8)
    # RAS: +x is the subject's right, so the left thalamus (1) sits at negative x
    lab[((x + 0.15) / 0.12) ** 2 + (y / 0.2) ** 2 + (z / 0.15) ** 2 < 1] = 1
    lab[((x - 0.15) / 0.12) ** 2 + (y / 0.2) ** 2 + (z / 0.15) ** 2 < 1] = 2
    return img, lab


# ------------------------------------------------------------------ a real cohort store
GRID = (28, 30, 22)


def ellipsoids(shape, centre_shift=(0, 0, 0), scale=1.0):
    """0/1/2 labels: left thalamus (1) at negative x (RAS), right (2) at positive x."""
    x, y, z = np.meshgrid(*[np.arange(n) - (n - 1) / 2 for n in shape], indexing="ij")
    x, y, z = x - centre_shift[0], y - centre_shift[1], z - centre_shift[2]
    lab = np.zeros(shape, np.uint8)
    r = np.array([3.0, 5.0, 3.5]) * scale
    lab[((x + 4) / r[0]) ** 2 + (y / r[1]) ** 2 + (z / r[2]) ** 2 < 1] = 1
    lab[((x - 4) / r[0]) ** 2 + (y / r[1]) ** 2 + (z / r[2]) ** 2 < 1] = 2
    return lab


def make_report_store(path, *, n_subjects=8, seed=0):
    """Cohort store through the store API: subjects × (baseline, m12), two sites, T1w and
    FLAIR images, GT on T1w at baseline for 6 subjects, 'atlas-sim' (too large) on T1w and
    'dl-sim' (shifted) on T1w and FLAIR, clinical table. Returns the store."""
    rng = np.random.default_rng(seed)
    rows = [(f"sub-{s:02d}", t, "siteA" if s % 3 else "siteB")
            for s in range(n_subjects) for t in ("baseline", "m12")]
    scans = pd.DataFrame(rows, columns=["subject", "timepoint", "site"])
    n = len(scans)
    shapes = np.array([GRID] * n)
    spacing = np.array([[1.0, 1.0, 1.0] if i % 4 else [1.0, 1.0, 1.4] for i in range(n)])
    affines = np.stack([np.diag([*sp, 1.0]) for sp in spacing])
    st = create_store(str(path), scans=scans, grid_shape=GRID,
                      scan_meta={"affine": affines, "shape": shapes, "spacing": spacing},
                      reference=["T1w"] * n, orig_axcodes=["RAS"] * n)
    for c in ("T1w", "FLAIR"):
        st.ensure_array(f"images/{c}", dtype="float32")
    x, y, z = np.meshgrid(*[np.arange(k) - (k - 1) / 2 for k in GRID], indexing="ij")
    head = ((x / 12) ** 2 + (y / 13) ** 2 + (z / 10) ** 2 < 1).astype(np.float32)
    for i in range(n):
        s = i // 2
        scale = rng.normal(1.0, 0.08) * (0.97 if i % 2 else 1.0)
        gt = ellipsoids(GRID, scale=scale)
        for c, contrast in ((0, "T1w"), (1, "FLAIR")):
            img = head * (100 - 40 * c) + 30 * (gt > 0) * (1 if c == 0 else -0.5)
            img = (img + rng.normal(0, 4, GRID)).astype(np.float32)
            st.write_scan_array(f"images/{contrast}", i, img,
                                content_sha256=hashlib.sha256(img.tobytes()).digest())
        if i % 2 == 0 and s < 6:
            st.write_mask("gt", "T1w", i, gt)
        st.write_mask("atlas-sim", "T1w", i, ellipsoids(GRID, scale=scale * 1.12))
        shift = tuple(int(v) for v in rng.integers(-1, 2, 3))
        st.write_mask("dl-sim", "T1w", i, ellipsoids(GRID, centre_shift=shift, scale=scale))
        st.write_mask("dl-sim", "FLAIR", i, ellipsoids(GRID, centre_shift=(0, 1, 0), scale=scale))
    clin = scans.copy()
    clin["group"] = np.array(["MS", "HC", "NMOSD", "MS", "MOGAD"])[np.arange(n) // 2 % 5]
    clin["age"] = np.repeat(rng.uniform(25, 60, n_subjects), 2) + np.tile([0.0, 1.0], n_subjects)
    clin["sex"] = np.repeat(np.array(["F", "M"])[(np.arange(n_subjects) // 2) % 2], 2)
    clin["edss"] = rng.uniform(0, 6, n).round(1)
    clin["sdmt"] = rng.normal(50, 10, n)
    clin["years_since_baseline"] = np.tile([0.0, 1.0], n_subjects)
    clin["icv_mm3"] = np.repeat(rng.normal(1.5e6, 1e5, n_subjects), 2)
    set_clinical(st, clin)
    st.consolidate()
    return st


# ------------------------------------------------------------------ reading the page back
class PageParser:
    """Collects <img src>, <a href> and every <table id> (header and cell texts)."""

    def __init__(self, text: str):
        self.images, self.links, self.tables = [], [], {}
        outer = self

        class _P(HTMLParser):
            def __init__(self):
                super().__init__()
                self.table = None
                self.row = None
                self.cell = None

            def handle_starttag(self, tag, attrs):
                a = dict(attrs)
                if tag == "img":
                    outer.images.append(a.get("src", ""))
                elif tag == "a" and "href" in a:
                    outer.links.append(a["href"])
                elif tag == "table" and "id" in a:
                    self.table = a["id"]
                    outer.tables[self.table] = []
                elif tag == "tr" and self.table:
                    self.row = []
                elif tag in ("td", "th") and self.row is not None:
                    self.cell = ""

            def handle_endtag(self, tag):
                if tag in ("td", "th") and self.cell is not None:
                    self.row.append(self.cell)
                    self.cell = None
                elif tag == "tr" and self.row is not None:
                    outer.tables[self.table].append(self.row)
                    self.row = None
                elif tag == "table":
                    self.table = None

            def handle_data(self, data):
                if self.cell is not None:
                    self.cell += data

        _P().feed(text)


def cell_matches(shown: str, value) -> bool:
    """Whether a displayed cell is the given table value (4 significant digits)."""
    missing = value is None or (isinstance(value, float) and np.isnan(value)) or (
        isinstance(value, str) and value == "")
    if missing:
        return shown == "–"
    if isinstance(value, (bool, np.bool_)):
        return shown == str(bool(value))
    if isinstance(value, (int, float, np.integer, np.floating)):
        if np.isinf(value):
            return shown in ("∞", "−∞")
        if shown == "–":
            return False
        return bool(np.isclose(float(shown), float(value), rtol=6e-4, atol=0))
    return shown == str(value)
