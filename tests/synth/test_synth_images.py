"""Contrast physics on a real template label map."""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from thaldask.synth.anatomy import make_geometry, sample_labels
from thaldask.synth.cohort import _grid
from thaldask.synth.images import draw_tissue, render_contrasts
from thaldask.synth.params import SITE_PRESETS, TISSUE, default_params

RANGES = {  # the documented R1 ranges at 3 T (s^-1)
    "white_matter": (1.0, 1.2),
    "cortex": (0.6, 0.75),
    "thalamus": (0.8, 0.95),
    "caudate_putamen": (0.7, 0.75),
    "csf": (0.2, 0.3),
}


def _render(seed):
    rng = np.random.default_rng(seed)
    geom = make_geometry(0, 1.0, rng)
    aff, shape = _grid("small", (1.0, 1.0, 1.0))
    labels = sample_labels(geom, aff, shape, pose=np.eye(4))
    tissue = draw_tissue(rng)
    imgs = render_contrasts(
        labels, (1, 1, 1), tissue, SITE_PRESETS[0], default_params()["contrasts"], rng
    )
    return labels, tissue, imgs


def _core(labels, ids, erode=1):
    m = np.isin(labels, ids)
    return ndi.binary_erosion(m, iterations=erode) if erode else m


def _rel_noise(img, region, pair):
    """Noise SD from neighbour differences, relative to the region's median."""
    x = img.astype(np.float64)
    return np.std((x[1:] - x[:-1])[pair]) / np.sqrt(2) / np.median(x[region])


def test_render_contrasts_r1_tissue_values_in_documented_ranges():
    for seed in (0, 1):
        labels, tissue, imgs = _render(seed)
        r1 = imgs["R1"]
        for name, (lo, hi) in RANGES.items():
            ids = TISSUE[name]["ids"]
            assert lo <= tissue["r1"][ids[0]] <= hi  # the subject's tissue value
            core = _core(labels, ids, erode=2 if name != "cortex" else 0)
            if name == "cortex":  # thin: compare voxels whose neighbourhood is all cortex
                core = ndi.minimum_filter(np.isin(labels, ids).astype(np.uint8), 3) > 0
            med = float(np.median(r1[core]))
            assert lo - 0.02 <= med <= hi + 0.02, (name, med)
        # noisier than T1w relative to its white matter level (neighbour differences remove
        # the smooth bias field)
        wm = _core(labels, TISSUE["white_matter"]["ids"], 2)
        pair = wm[1:] & wm[:-1]

        assert _rel_noise(r1, wm, pair) > 1.3 * _rel_noise(imgs["T1w"], wm, pair)


def test_render_contrasts_t1w_weak_thalamus_contrast_flair_nulls_csf():
    labels, tissue, imgs = _render(3)
    wm = _core(labels, TISSUE["white_matter"]["ids"], 2)
    th = _core(labels, TISSUE["thalamus"]["ids"], 2)
    csf = _core(labels, [4, 43], 1)
    t1, fl, r1 = (imgs[c].astype(float) for c in ("T1w", "FLAIR", "R1"))
    t1_ratio = np.median(t1[th]) / np.median(t1[wm])
    r1_ratio = np.median(r1[th]) / np.median(r1[wm])
    assert 0.8 < t1_ratio < 0.95  # weak thalamus / white matter contrast on T1w
    assert r1_ratio < t1_ratio  # clearer on R1
    assert np.median(t1[csf]) < 0.35 * np.median(t1[wm])
    assert np.median(fl[csf]) < 0.2 * np.median(fl[wm])  # CSF nulled on FLAIR
    assert imgs["T1w"].dtype == np.int16 and imgs["R1"].dtype == np.float32
