"""Metric kernels: hand-computed cases, brute-force and MONAI references, properties."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage
from scipy.spatial.distance import cdist

from thaldask.errors import ScanError
from thaldask.metrics.kernels import (
    METRIC_FIELDS,
    RAW_FIELDS,
    compute_pair_metrics,
    confusion_matrix,
    derive_metrics,
    pair_raw,
)


def _blob(rng, shape, label, thresh=0.5):
    field = ndimage.gaussian_filter(rng.random(shape), 1.5)
    return ((field > np.quantile(field, thresh)) * label).astype(np.uint8)


def _oracle_surface(a, b, spacing):
    """Brute force: all surface-voxel pairs with scipy cdist."""
    sa = a & ~ndimage.binary_erosion(a, border_value=0)
    sb = b & ~ndimage.binary_erosion(b, border_value=0)
    d = cdist(np.argwhere(sa) * spacing, np.argwhere(sb) * spacing)
    dab, dba = d.min(1), d.min(0)
    hd = max(np.percentile(dab, 95), np.percentile(dba, 95))
    return hd, np.concatenate([dab, dba]).mean()


def test_confusion_matrix_two_by_two_example_matches_hand_count():
    g = np.zeros((2, 2, 1), np.uint8)
    p = np.zeros((2, 2, 1), np.uint8)
    g[0, :, 0] = 1  # 2 voxels
    p[:, 0, 0] = 1  # 2 voxels, 1 shared
    p[1, 1, 0] = 2
    assert confusion_matrix(g, p).tolist() == [[0, 1, 1], [1, 1, 0], [0, 0, 0]]


def test_pair_metrics_hand_case_dice_is_point_eight():
    # MONAI's documented example: 5 GT voxels, 5 predicted, 4 shared -> Dice 0.8
    g = np.zeros((3, 3, 3), np.uint8)
    p = np.zeros((3, 3, 3), np.uint8)
    g.reshape(-1)[[0, 1, 2, 3, 4]] = 1
    p.reshape(-1)[[1, 2, 3, 4, 5]] = 1
    m = compute_pair_metrics(g, p, spacing=(1.0, 2.0, 0.5))
    assert m["left"]["dice"] == pytest.approx(0.8)
    assert m["left"]["jaccard"] == pytest.approx(4 / 6)
    assert m["left"]["sensitivity"] == pytest.approx(0.8)
    assert m["left"]["precision"] == pytest.approx(0.8)
    assert m["left"]["volume_mm3"] == pytest.approx(5.0)  # 5 voxels of 1 mm³
    assert m["total"]["dice"] == pytest.approx(0.8)
    assert math.isnan(m["right"]["dice"])  # both empty on the right
    assert m["right"]["pred_empty"] == 1.0 and m["right"]["gt_empty"] == 1.0


def test_pair_metrics_swapped_sides_total_perfect_sides_zero():
    g = np.zeros((6, 6, 6), np.uint8)
    g[1:3, 1:4, 1:4] = 1
    g[3:5, 1:4, 1:4] = 2
    p = np.where(g > 0, 3 - g, 0).astype(np.uint8)
    m = compute_pair_metrics(g, p)
    assert m["total"]["dice"] == 1.0
    assert m["left"]["dice"] == 0.0 and m["right"]["dice"] == 0.0


def test_pair_metrics_volume_anisotropic_spacing_in_mm3():
    g = np.zeros((12, 12, 12), np.uint8)
    g[0:10, 0:10, 0:10] = 2
    m = compute_pair_metrics(g, g, spacing=(1.0, 1.0, 1.0))
    assert m["right"]["volume_mm3"] == 1000.0  # nibabel's 10³ cube example
    m = compute_pair_metrics(g, g, spacing=(0.5, 1.0, 3.0))
    assert m["right"]["volume_mm3"] == 1500.0
    assert m["right"]["volume_diff_mm3"] == 0.0 and m["right"]["hd95_mm"] == 0.0


def test_pair_metrics_shifted_cube_surface_distance_hand_value():
    # a cube shifted by one voxel along z with 2 mm slices: every surface voxel is at most
    # 2 mm from the other surface; HD95 = 2 mm
    g = np.zeros((12, 12, 12), np.uint8)
    g[3:8, 3:8, 3:8] = 1
    p = np.roll(g, 1, axis=2)
    m = compute_pair_metrics(g, p, spacing=(1.0, 1.0, 2.0))
    assert m["left"]["hd95_mm"] == pytest.approx(2.0)
    assert 0 < m["left"]["assd_mm"] < 2.0


@pytest.mark.parametrize("empty", ["pred", "gt", "both"])
def test_pair_metrics_empty_masks_documented_rules_no_crash(empty):
    full = np.zeros((8, 8, 8), np.uint8)
    full[2:6, 2:6, 2:6] = 1
    none = np.zeros_like(full)
    g, p = {"pred": (full, none), "gt": (none, full), "both": (none, none)}[empty]
    m = compute_pair_metrics(g, p)["left"]
    assert math.isnan(m["hd95_mm"]) and math.isnan(m["assd_mm"])
    assert m["pred_empty"] == float(empty in ("pred", "both"))
    assert m["gt_empty"] == float(empty in ("gt", "both"))
    if empty == "both":
        assert math.isnan(m["dice"]) and math.isnan(m["jaccard"])
        assert m["volume_diff_mm3"] == 0.0
    else:
        assert m["dice"] == 0.0 and m["jaccard"] == 0.0
    assert math.isnan(m["sensitivity"]) == (empty in ("gt", "both"))
    assert math.isnan(m["precision"]) == (empty in ("pred", "both"))
    assert math.isnan(m["volume_diff_pct"]) == (empty in ("gt", "both"))


def test_pair_raw_labels_above_two_raise_scan_error():
    g = np.zeros((4, 4, 4), np.uint8)
    g[0, 0, 0] = 10
    with pytest.raises(ScanError, match="labels \\[10\\]"):
        pair_raw(g, np.zeros_like(g))


def test_pair_raw_odd_voxel_count_counts_tail():
    g = np.zeros((3, 3, 3), np.uint8)  # 27 voxels: not a multiple of 8
    g[2, 2, 2] = 1
    g[0, 0, 0] = 2
    raw = pair_raw(g, g)
    assert raw[0, RAW_FIELDS.index("tp")] == 1 and raw[1, RAW_FIELDS.index("tp")] == 1


@pytest.mark.parametrize("seed", range(6))
def test_pair_raw_random_blobs_match_bruteforce_oracle(seed):
    rng = np.random.default_rng(seed)
    shape = tuple(rng.integers(6, 14, 3))
    g = _blob(rng, shape, 1) + _blob(rng, shape, 2, 0.8) * (1 - (_blob(rng, shape, 1) > 0))
    g = np.where(g > 2, 2, g).astype(np.uint8)
    p = _blob(rng, shape, 1, 0.6)
    p[shape[0] // 2 :] *= 2
    spacing = rng.uniform(0.5, 3.0, 3)
    raw = pair_raw(g, p, spacing)
    cm = np.zeros((3, 3), np.int64)
    np.add.at(cm, (g.ravel(), p.ravel()), 1)
    assert (confusion_matrix(g, p) == cm).all()
    for s, (ga, pa) in enumerate([(g == 1, p == 1), (g == 2, p == 2), (g > 0, p > 0)]):
        assert raw[s, 0] == (ga & pa).sum()
        assert raw[s, 1] == (~ga & pa).sum()
        assert raw[s, 2] == (ga & ~pa).sum()
        if ga.any() and pa.any():
            hd, assd = _oracle_surface(ga, pa, spacing)
            assert raw[s, 5] == pytest.approx(hd, rel=1e-12)
            assert raw[s, 6] == pytest.approx(assd, rel=1e-12)


@pytest.mark.slow  # importing MONAI (and torch) takes seconds
@pytest.mark.requires_monai
@pytest.mark.filterwarnings("ignore::FutureWarning")
@pytest.mark.parametrize("seed", range(3))
def test_pair_metrics_random_blobs_match_monai(seed):
    monai_metrics = pytest.importorskip("monai.metrics")
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(100 + seed)
    shape = (20, 22, 18)
    g = np.zeros(shape, np.uint8)
    p = np.zeros(shape, np.uint8)
    inner = (slice(2, -2),) * 3  # away from the border: MONAI pads differently there
    g[inner] = _blob(rng, (16, 18, 14), 1, 0.7)
    p[inner] = _blob(rng, (16, 18, 14), 1, 0.7)
    spacing = (1.0, 1.5, 2.5)
    m = compute_pair_metrics(g, p, spacing)["left"]

    def onehot(x):
        return torch.from_numpy(np.stack([x == 0, x == 1])[None].astype(np.float32))

    yp, yg = onehot(p), onehot(g)
    dice = monai_metrics.DiceMetric(include_background=False)(yp, yg).item()
    hd = monai_metrics.HausdorffDistanceMetric(include_background=False, percentile=95)(
        yp, yg, spacing=list(spacing)
    ).item()
    asd = monai_metrics.SurfaceDistanceMetric(include_background=False, symmetric=True)(
        yp, yg, spacing=list(spacing)
    ).item()
    cmm = monai_metrics.ConfusionMatrixMetric(
        include_background=False, metric_name=["sensitivity", "precision"]
    )
    cmm(yp, yg)
    sens, prec = (t.item() for t in cmm.aggregate())
    assert m["dice"] == pytest.approx(dice, rel=1e-6)
    assert m["sensitivity"] == pytest.approx(sens, rel=1e-6)
    assert m["precision"] == pytest.approx(prec, rel=1e-6)
    assert m["hd95_mm"] == pytest.approx(hd, rel=1e-5)
    assert m["assd_mm"] == pytest.approx(asd, rel=1e-5)


masks = st.tuples(st.integers(2, 7), st.integers(2, 7), st.integers(2, 7)).flatmap(
    lambda s: st.tuples(
        st.lists(st.integers(0, 2), min_size=s[0] * s[1] * s[2], max_size=s[0] * s[1] * s[2]),
        st.lists(st.integers(0, 2), min_size=s[0] * s[1] * s[2], max_size=s[0] * s[1] * s[2]),
        st.just(s),
    )
)


@settings(max_examples=40, deadline=None)
@given(masks)
def test_pair_raw_property_self_dice_one_and_symmetry(data):
    a, b, shape = data
    g = np.array(a, np.uint8).reshape(shape)
    p = np.array(b, np.uint8).reshape(shape)
    same = derive_metrics(pair_raw(g, g), 1.0)
    dice = METRIC_FIELDS.index("dice")
    for s, lab in enumerate([g == 1, g == 2, g > 0]):
        if lab.any():
            assert same[s, dice] == 1.0
            assert same[s, METRIC_FIELDS.index("hd95_mm")] == 0.0
    ab = derive_metrics(pair_raw(g, p), 1.0)
    ba = derive_metrics(pair_raw(p, g), 1.0)
    for f in ("dice", "jaccard", "hd95_mm", "assd_mm"):
        i = METRIC_FIELDS.index(f)
        np.testing.assert_allclose(ab[:, i], ba[:, i], rtol=1e-12)
    i, j = METRIC_FIELDS.index("sensitivity"), METRIC_FIELDS.index("precision")
    np.testing.assert_allclose(ab[:, i], ba[:, j], rtol=1e-12)


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (0.9, 1.2, 3.0)])
def test_surface_distances_equal_a_distance_transform_of_the_other_surface(spacing):
    """The k-d tree distances are what scipy's Euclidean distance transform of the other
    surface gives at each surface voxel (random blobs, anisotropic voxels)."""
    from scipy import ndimage

    from thaldask.metrics.kernels import surface_distances

    rng = np.random.default_rng(3)
    face = ndimage.generate_binary_structure(3, 1)
    for _ in range(5):
        a = ndimage.gaussian_filter(rng.random((30, 28, 20)), 2) > 0.5
        b = ndimage.gaussian_filter(rng.random((30, 28, 20)), 2) > 0.5
        d_ab, d_ba = surface_distances(a, b, spacing)
        sa = a & ~ndimage.binary_erosion(a, face, border_value=0)
        sb = b & ~ndimage.binary_erosion(b, face, border_value=0)
        ref_ab = ndimage.distance_transform_edt(~sb, sampling=spacing)[sa]
        ref_ba = ndimage.distance_transform_edt(~sa, sampling=spacing)[sb]
        np.testing.assert_allclose(d_ab, ref_ab, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(d_ba, ref_ba, rtol=1e-12, atol=1e-12)
