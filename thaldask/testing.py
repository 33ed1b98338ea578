"""Helpers for tests of thaldask and of its plugins: small synthetic inputs and conformance checks.

* :func:`make_store` -- a small cohort store on disk (images, ground truth, method masks,
  clinical table) built through the store API, with the masks it wrote;
* :func:`make_results` -- a results dataset (the schema ``thaldask evaluate`` writes) with
  planted, known effects for the statistics;
* :func:`render_scans` -- T1w-, FLAIR- and R1-like scans rendered from the held-out anatomy
  shipped with the model (needs torch);
* :func:`check_prediction` and :func:`check_segmenter` -- what every segmenter must do,
  raising :class:`AssertionError` with a message saying what is wrong.

Importing this module does not import torch or pytest.

>>> import tempfile, thaldask.testing as tt
>>> st, truth = tt.make_store(tempfile.mkdtemp() + "/cohort.zarr", n_subjects=2)
>>> st.n_scans
4
"""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd
import xarray as xr

from thaldask.segment.base import Prediction, Segmenter, split_contrast
from thaldask.store.create import create_store, set_clinical

__all__ = [
    "DEFAULT_SPECS",
    "STORE_GRID",
    "check_prediction",
    "check_segmenter",
    "make_results",
    "make_store",
    "render_scans",
]

# ------------------------------------------------------------------ a small cohort store
STORE_GRID = (20, 22, 18)


def _masks(rng, shape):
    g = np.zeros(shape, np.uint8)
    lo = rng.integers(2, 5, 3)
    g[lo[0] : lo[0] + 5, lo[1] : lo[1] + 7, lo[2] : lo[2] + 6] = 1
    g[lo[0] + 6 : lo[0] + 11, lo[1] : lo[1] + 7, lo[2] : lo[2] + 6] = 2
    return g


def _shift(rng, g):
    return np.roll(g, tuple(int(v) for v in rng.integers(-1, 2, 3)), axis=(0, 1, 2))


def _image(rng, truth, contrast):
    """A box 'head' with brighter (T1w, R1) or darker (FLAIR) thalami, plus noise."""
    contrast_gain = {"T1w": 30.0, "FLAIR": -15.0, "R1": 20.0}[contrast]
    base = {"T1w": 100.0, "FLAIR": 60.0, "R1": 80.0}[contrast]
    img = np.full(truth.shape, base, np.float32) + contrast_gain * (truth > 0)
    return (img + rng.normal(0, 4, truth.shape)).astype(np.float32)


def make_store(path, *, n_subjects=3, seed=0, grid=STORE_GRID, images=("T1w", "FLAIR", "R1"), layout=None):
    """Write a small cohort store through the store API (no NIfTI files).

    Scans are subject x (baseline, m12), two sites; scan shapes and spacings vary. Ground
    truth ``gt`` is on T1w for every scan and on FLAIR for every other scan; method ``a``
    has masks on T1w, FLAIR and R1 (scan 1's R1 mask is empty), method ``b`` on T1w for every
    scan but scan 2. The clinical table lacks the last scan.

    Parameters
    ----------
    path : str or path-like
        Where the store is created (must not exist).
    n_subjects : int
        Number of subjects (two scans each).
    seed : int
        Seed of the masks and of the images (the masks do not depend on ``images``).
    grid : tuple of 3 int
        The store's grid shape.
    images : sequence of str
        Contrasts of the images written (empty: no images).
    layout : dict, optional
        Store layout over the defaults (``{"shards": False}``: unsharded data arrays, as
        stores were written before sharding).

    Returns
    -------
    store : CohortStore
        The store, open for writing.
    truth : dict
        ``(method, contrast, scan index) -> mask`` of every mask written.
    """
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
        layout=layout,
    )
    truth = {}
    with st.record_batch():  # one process owns every chunk and shard: each written once
        _write_masks(st, rng, n, shapes, truth)
        _write_images(st, n, seed, images, truth)
    clin = scans[["subject", "timepoint", "site"]].copy()
    clin["group"] = ["MS" if k % 2 else "HC" for k in range(n)]
    clin["age"] = np.linspace(30, 50, n)
    clin["sex"] = ["F", "M"] * (n // 2) + ["F"] * (n % 2)
    clin["edss"] = np.linspace(0, 6, n)
    clin = clin.iloc[:-1]  # last scan has no clinical row
    set_clinical(st, clin)
    return st, truth


def _write_masks(st, rng, n, shapes, truth):
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


def _write_images(st, n, seed, images, truth):
    # images from their own random stream: the masks above are the same with or without them
    img_rng = np.random.default_rng([seed, 1])
    for c in images:
        st.ensure_array(f"images/{c}", dtype="float32")
        for i in range(n):
            img = _image(img_rng, truth[("gt", "T1w", i)], c)
            st.write_scan_array(f"images/{c}", i, img, content_sha256=hashlib.sha256(img.tobytes()).digest())


# ------------------------------------------------------------------ results with planted effects
DEFAULT_SPECS = {
    # (method, contrast): (bias mm³, proportional factor, noise SD mm³, dice mean)
    ("exact", "T1w"): (0.0, 0.0, 0.0, 0.95),
    ("first-sim", "T1w"): (1500.0, 0.0, 300.0, 0.85),
    ("freesurfer-sim", "T1w"): (900.0, 0.15, 300.0, 0.86),
    ("mindglide-sim", "T1w"): (100.0, 0.0, 300.0, 0.88),
    ("mindglide-sim", "R1"): (50.0, 0.0, 250.0, 0.89),
}


def _edss_step(e0, cut=5.5):
    return np.where(e0 == 0, 1.5, np.where(e0 <= cut, 1.0, 0.5))


def make_results(
    rng=0,
    *,
    n_subjects=150,
    specs=None,
    sd_u=1200.0,
    gt_noise=300.0,
    beta_sdmt=0.3,
    beta_edss=-0.25,
    atrophy_rate=-0.8,
    sd_rate=0.6,
    or_worsening=0.4,
    group_effect=800.0,
    sites=None,
    n_gt=None,
    followup=True,
    n_followups=1,
):
    """A results dataset (the schema ``thaldask evaluate`` writes) with planted, known effects.

    Generative model (volumes in mm³):

    * true thalamic volume ``vt = 15000 + 0.006 (icv - 1.5e6) - group_effect·MS + u``,
      ``u ~ N(0, sd_u)``;
    * ground truth ``gt = vt + e_g`` and each method ``vol = vt + bias + prop (vt - 15000) + e_m``
      (+ site location ``gamma_site`` and scale ``delta_site`` on ``e_m``), ``e_g``/``e_m``
      with the same SD, so proportional bias is absent unless planted;
    * SDMT ``= 50 + 10 (beta_sdmt z(u) + 0.3 z(age) + e)``, ``Var(e) = 1 - beta² - 0.09``:
      its standardised beta on the head-size-adjusted volume is ``beta_sdmt``; EDSS
      (rounded to 0.5) likewise with ``beta_edss``;
    * annualised % change ``r ~ N(atrophy_rate, sd_rate)``, follow-up
      ``vt1 = vt0 (1 + r·years/100)``; EDSS worsening drawn with
      ``logit P = alpha_w + log(or_worsening)·r`` and EDSS raised by the rule's step (cut 5.5).

    Parameters
    ----------
    rng : int or numpy.random.Generator
        Seed or generator.
    n_subjects : int
        Number of subjects.
    specs : dict, optional
        ``(method, contrast) -> (bias mm³, proportional factor, noise SD mm³, mean Dice)``;
        default :data:`DEFAULT_SPECS`.
    sd_u, gt_noise : float
        SD of the true volume between subjects and of the ground truth's error (mm³).
    beta_sdmt, beta_edss : float
        Planted standardised effects of the volume on SDMT and EDSS.
    atrophy_rate, sd_rate : float
        Mean and SD of the annualised % volume change.
    or_worsening : float
        Odds ratio of EDSS worsening per 1 %/year of atrophy.
    group_effect : float
        Volume difference of MS (mm³, smaller).
    sites : dict, optional
        ``site -> (gamma mm³, delta scale, fraction MS)``; default one site.
    n_gt : int, optional
        Only the first ``n_gt`` subjects have ground truth.
    followup : bool
        Whether there are follow-up timepoints.
    n_followups : int
        Number of follow-ups (timepoints m12, m24, ...).

    Returns
    -------
    ds : xarray.Dataset
        Dims subject, timepoint, method, contrast, side.
    truth : dict
        The planted values (``specs``, ``beta_sdmt``, ``prop_slope``, ``table``, ...).
    """
    rng = np.random.default_rng(rng)
    specs = dict(DEFAULT_SPECS if specs is None else specs)
    N = n_subjects
    sites = sites or {"site-a": (0.0, 1.0, 0.7)}
    site_names = list(sites)
    site = rng.choice(site_names, size=N)
    frac_ms = np.array([sites[s][2] for s in site])
    group = np.where(rng.random(N) < frac_ms, "MS", "HC")
    ms = (group == "MS").astype(float)
    sex = rng.choice(["F", "M"], size=N)
    age = rng.normal(45, 10, N)
    icv = rng.normal(1.5e6, 1.2e5, N)
    u = rng.normal(0, sd_u, N)
    vt0 = 15000 + 0.006 * (icv - 1.5e6) - group_effect * ms + u
    zu = u / sd_u
    za = (age - 45) / 10

    def outcome(beta):
        e = rng.normal(0, np.sqrt(1 - beta**2 - 0.09), N)
        return beta * zu + 0.3 * za + e

    sdmt0 = 50 + 10 * outcome(beta_sdmt)
    edss0 = np.clip(np.round((3 + 1.5 * outcome(beta_edss)) * 2) / 2, 0, 9.5)
    rate = rng.normal(atrophy_rate, sd_rate, N)
    T = 1 + int(n_followups) if followup else 1
    tps = ["baseline"] + [f"m{12 * k}" for k in range(1, T)]
    years = np.stack([k * (1 + rng.uniform(-0.1, 0.1, N)) for k in range(T)], axis=1)
    vt = vt0[:, None] * (1 + rate[:, None] * years / 100)
    lin = np.log(or_worsening) * (rate - atrophy_rate) - 0.8
    worse = rng.random(N) < 1 / (1 + np.exp(-lin))
    edss = np.repeat(edss0[:, None], T, axis=1)
    if T > 1:
        edss[:, -1] = np.where(worse, edss0 + _edss_step(edss0), edss0)
    sdmt = sdmt0[:, None] + np.c_[np.zeros(N), rng.normal(0, 2, (N, T - 1))]
    methods = sorted({m for m, _ in specs})
    contrasts = sorted({c for _, c in specs}, key=lambda c: (c != "T1w", c))
    M, C = len(methods), len(contrasts)
    side = ["left", "right", "total"]
    gt_tot = vt + rng.normal(0, gt_noise, (N, T))
    if n_gt is not None:
        gt_tot[n_gt:, :] = np.nan
    if T > 1:
        gt_tot[:, 1:] = np.nan  # ground truth at baseline only
    vol = np.full((N, T, M, C, 3), np.nan)
    dice = np.full((N, T, M, C, 3), np.nan)
    gamma = np.array([sites[s][0] for s in site])
    delta = np.array([sites[s][1] for s in site])
    for (m, c), (a, prop, sd, dmean) in specs.items():
        i, j = methods.index(m), contrasts.index(c)
        e = rng.normal(0, 1, (N, T)) * sd
        tot = vt + a + prop * (vt - 15000) + gamma[:, None] + delta[:, None] * e
        vol[:, :, i, j, 2] = tot
        dice[:, :, i, j, 2] = np.clip(dmean + rng.normal(0, 0.02, (N, T)), 0, 1)
    frac = 0.5 + rng.normal(0, 0.005, vol.shape[:-1])
    vol[..., 0] = vol[..., 2] * frac
    vol[..., 1] = vol[..., 2] - vol[..., 0]
    dice[..., 0] = dice[..., 2]
    dice[..., 1] = dice[..., 2]
    gt = np.stack([gt_tot * 0.5, gt_tot * 0.5, gt_tot], axis=-1)
    dims5 = ("subject", "timepoint", "method", "contrast", "side")
    dims2 = ("subject", "timepoint")
    rep = lambda x: np.repeat(np.asarray(x)[:, None], T, axis=1)  # noqa: E731
    diff = vol - gt[:, :, None, None, :]
    ds = xr.Dataset(
        {
            "volume_mm3": (dims5, vol),
            "gt_volume_mm3": (("subject", "timepoint", "side"), gt),
            "dice": (dims5, dice),
            "sensitivity": (dims5, np.clip(dice + 0.03, 0, 1)),
            "precision": (dims5, np.clip(dice - 0.03, 0, 1)),
            "volume_diff_mm3": (dims5, diff),
            "volume_diff_pct": (dims5, diff / gt[:, :, None, None, :] * 100),
            "site": (dims2, rep(site).astype(object)),
            "group": (dims2, rep(group).astype(object)),
            "sex": (dims2, rep(sex).astype(object)),
            "age": (dims2, rep(age) + years),
            "disease_duration": (dims2, rep(rng.uniform(0, 20, N)) + years),
            "edss": (dims2, edss),
            "sdmt": (dims2, sdmt),
            "years_since_baseline": (dims2, years),
            "icv_mm3": (dims2, rep(icv)),
        },
        coords={
            "subject": [f"sub-{k:03d}" for k in range(N)],
            "timepoint": tps,
            "method": methods,
            "contrast": contrasts,
            "side": side,
        },
        attrs={"synthetic": True},
    )
    var_v = sd_u**2  # variance of vt within group/icv strata is not needed for slopes below
    sv2 = np.var(vt0)  # population-ish variance of the true volume (for slope truth)
    truth = {"specs": specs, "beta_sdmt": beta_sdmt, "beta_edss": beta_edss,
             "atrophy_rate": atrophy_rate, "or_worsening": or_worsening,
             "group_effect": group_effect, "sd_u": var_v**0.5, "worse": worse}
    slopes = {}
    for key, (_, prop, sd, _) in specs.items():
        num = prop * sv2 * (1 + prop / 2) + (sd**2 - gt_noise**2) / 2
        den = sv2 * (1 + prop / 2) ** 2 + (sd**2 + gt_noise**2) / 4
        slopes[key] = num / den
    truth["prop_slope"] = slopes
    truth["table"] = pd.DataFrame({"site": site, "group": group, "rate": rate})
    return ds, truth


# ------------------------------------------------------------------ scans and segmenters
def render_scans(contrasts=("T1w", "FLAIR", "R1"), *, shape=(112, 112, 96), seed=0):
    """Scans rendered (1 mm) from the held-out anatomy shipped with the model, around the thalami.

    Needs torch (imported on call).

    Parameters
    ----------
    contrasts : sequence of str
        Contrasts to render; the k-th is rendered with seed ``seed + k``.
    shape : tuple of 3 int
        Size in mm (= voxels) of the box around the thalami.
    seed : int
        Seed of the first render.

    Returns
    -------
    dict
        ``contrast -> (image float32, truth uint8 0/1/2, affine (4, 4))``.
    """
    from thaldask.thalnet import validate  # torch

    labels, affine = validate.crop_around_thalami(*validate.load_heldout_anatomy(), size_mm=shape)
    return {c: validate.render_scan(labels, affine, c, rng=seed + k) for k, c in enumerate(contrasts)}


def check_prediction(pred: Prediction, shape) -> None:
    """Check one :class:`~thaldask.segment.Prediction` against the input grid ``shape``.

    Labels must be uint8 of ``shape`` with values in {0, 1, 2}; probabilities, if given, of
    shape ``(2, *shape)`` with values in [0, 1].

    Raises
    ------
    AssertionError
        Saying which rule is broken.
    """
    shape = tuple(int(n) for n in shape)
    assert isinstance(pred, Prediction), f"predict returned {type(pred).__name__}, not a Prediction"
    lab = np.asarray(pred.labels)
    assert lab.shape == shape, f"labels have shape {lab.shape}, not the input grid {shape}"
    assert lab.dtype == np.uint8, f"labels have dtype {lab.dtype}, not uint8"
    extra = sorted(set(np.unique(lab).tolist()) - {0, 1, 2})
    assert not extra, f"labels contain values {extra} outside {{0, 1, 2}}"
    if pred.prob is not None:
        prob = np.asarray(pred.prob)
        assert prob.shape == (2, *shape), f"probabilities have shape {prob.shape}, not {(2, *shape)}"
        ok = (prob >= 0) & (prob <= 1)
        assert ok.all(), f"{int((~ok).sum())} probabilities outside [0, 1] (or NaN)"


def check_segmenter(segmenter: Segmenter, *, shapes=((112, 112, 96),), contrast="T1w", sides=True,
                    seed=0) -> None:
    """Check that a loaded segmenter does what every segmenter must.

    For each box size in ``shapes``, scans rendered from the held-out anatomy
    (:func:`render_scans`; several channels for a contrast such as ``"T1w+R1"``) are
    segmented twice. The output must be on the input grid (:func:`check_prediction`) and the
    same both times; with ``sides``, both thalami must be found and the left one (label 1)
    must lie left of the right one in world coordinates (RAS: +x is the subject's right).

    Parameters
    ----------
    segmenter : Segmenter
        A segmenter whose ``load`` has been called.
    shapes : sequence of tuple of 3 int
        Input shapes (mm, 1 mm voxels) to try.
    contrast : str
        Contrast passed to ``predict``; ``"A+B"`` stacks renders of A and B as channels.
    sides : bool
        Also check that both sides are found and left is left (False for a model with
        random weights).
    seed : int
        Seed of the renders.

    Raises
    ------
    AssertionError
        With a message naming the segmenter, the shape and the broken rule.
    """
    parts = split_contrast(contrast)
    name = getattr(segmenter, "name", type(segmenter).__name__)
    for shape in shapes:
        scans = render_scans(tuple(dict.fromkeys(parts)), shape=tuple(shape), seed=seed)
        aff = scans[parts[0]][2]
        img = scans[parts[0]][0] if len(parts) == 1 else np.stack([scans[c][0] for c in parts])
        grid = img.shape[-3:]
        where = f"segmenter {name!r} on a {contrast} scan of shape {grid}"
        a = segmenter.predict(img, aff, contrast=contrast)
        try:
            check_prediction(a, grid)
        except AssertionError as e:
            raise AssertionError(f"{where}: {e}") from None
        b = segmenter.predict(img, aff, contrast=contrast)
        assert np.array_equal(np.asarray(a.labels), np.asarray(b.labels)), (
            f"{where}: two calls on the same scan gave different labels (not deterministic)")
        if a.prob is not None and b.prob is not None:
            assert np.array_equal(np.asarray(a.prob), np.asarray(b.prob)), (
                f"{where}: two calls on the same scan gave different probabilities (not deterministic)")
        if not sides:
            continue
        lab = np.asarray(a.labels)
        missing = [s for s, v in (("left", 1), ("right", 2)) if not (lab == v).any()]
        assert not missing, f"{where}: no {' or '.join(missing)} thalamus found"
        x = {v: (aff @ np.append(np.argwhere(lab == v).mean(0), 1))[0] for v in (1, 2)}
        assert x[1] < x[2], (
            f"{where}: label 1 (left) has its centre at x = {x[1]:.1f} mm, right of label 2 at "
            f"x = {x[2]:.1f} mm (RAS: +x is the subject's right); are the sides swapped?")
