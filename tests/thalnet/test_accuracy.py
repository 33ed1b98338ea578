"""thalnet on held-out anatomy (a label map never seen in training) beats a trivial baseline."""

import numpy as np
import pytest

from thaldask.segment import get_segmenter
from thaldask.thalnet.validate import (
    ThalamusResizer,
    crop_around_thalami,
    dice,
    evaluate_segmenter,
    render_scan,
    response_slope,
    volume_response,
)

pytestmark = pytest.mark.slow


def sphere_baseline(shape, affine):
    """Two 11 mm spheres 13 mm left and right of the field-of-view centre (which these test
    scans place on the thalami: a baseline that already knows where to look)."""
    ijk = np.indices(shape).reshape(3, -1).T
    xyz = ijk @ affine[:3, :3].T + affine[:3, 3]
    centre = affine @ np.append((np.asarray(shape) - 1) / 2, 1)
    out = np.zeros(len(xyz), np.uint8)
    for side, dx in ((1, -13.0), (2, 13.0)):
        out[np.linalg.norm(xyz - (centre[:3] + [dx, 0, 0]), axis=1) < 11] = side
    return out.reshape(shape)


@pytest.fixture(scope="module")
def thalnet():
    seg = get_segmenter("thalnet")
    seg.load("cpu")
    return seg


def _mean_dice(pred, truth):
    return float(np.mean([dice(pred, truth, 1), dice(pred, truth, 2)]))


@pytest.mark.parametrize("contrast", ["T1w", "FLAIR", "R1"])
def test_thalnet_heldout_1mm_beats_baseline_by_wide_margin(contrast, thalnet, small_scans):
    img, truth, aff = small_scans[contrast]
    model = _mean_dice(thalnet.predict(img, aff, contrast=contrast).labels, truth)
    base = _mean_dice(sphere_baseline(img.shape, aff), truth)
    assert model > 0.85
    assert model > base + 0.2, (model, base)


def test_thalnet_heldout_thick_slices_beats_baseline(thalnet, anatomy):
    labels, affine = crop_around_thalami(*anatomy)
    img, truth, aff = render_scan(labels, affine, "T1w", spacing=(1.0, 1.0, 1.5), rng=7)
    model = _mean_dice(thalnet.predict(img, aff, contrast="T1w").labels, truth)
    base = _mean_dice(sphere_baseline(img.shape, aff), truth)
    assert model > 0.85
    assert model > base + 0.2, (model, base)


def test_evaluate_segmenter_volume_error_matches_dice_algebra(anatomy):
    """An all-left prediction of N voxels has Dice 2T/(N+T) and volume error 100 (N-T)/T for
    true volume T; an empty one -100 % for both sides."""
    labels, affine = crop_around_thalami(*anatomy, size_mm=(80, 70, 60))
    sizes = []

    def all_left(img, aff, contrast):
        sizes.append(img.size)
        return np.ones(img.shape, np.uint8)

    rows = evaluate_segmenter(all_left, [("m", labels, affine)], contrasts=("T1w",),
                              spacings=((1.0, 1.0, 1.0),))
    left, right = rows
    n = sizes[0]
    t = left["dice"] * n / (2 - left["dice"])
    assert 500 < t < n
    assert left["volume_error"] == pytest.approx(100 * (n - t) / t, rel=1e-9)
    assert right["volume_error"] == -100 and right["dice"] == 0
    rows = evaluate_segmenter(lambda img, aff, c: np.zeros(img.shape, np.uint8), [("m", labels, affine)],
                              contrasts=("FLAIR",), spacings=((1.0, 1.0, 1.5),))
    assert [r["volume_error"] for r in rows] == [-100, -100]


def test_response_slope_is_one_for_exact_and_zero_for_fixed_size():
    rows = [dict(map="m", side=s, true_voxels=t, pred_voxels=p)
            for s in ("left", "right") for t, p in ((700, 700), (1000, 1000), (1150, 1150))]
    assert response_slope(rows) == pytest.approx(1.0)
    fixed = [dict(r, pred_voxels=900) for r in rows]
    assert response_slope(fixed) == pytest.approx(0.0)
    half = [dict(r, pred_voxels=500 + r["true_voxels"] // 2, map=r["map"] + r["side"]) for r in rows]
    assert response_slope(half) == pytest.approx(0.5)


def test_thalamus_resizer_scales_each_side_and_leaves_the_rest(anatomy):
    labels, _ = crop_around_thalami(*anatomy)
    resize = ThalamusResizer(labels, (10, 49))
    n = [np.count_nonzero(labels == c) for c in (10, 49)]
    out = resize((0.7, 1.1))
    got = [np.count_nonzero(out == c) / n[k] for k, c in enumerate((10, 49))]
    assert got == [pytest.approx(0.7, abs=0.01), pytest.approx(1.1, abs=0.02)]
    thal = np.isin(labels, (10, 49))
    grown = np.isin(out, (10, 49)) & ~thal
    rest = ~thal & ~grown
    np.testing.assert_array_equal(out[rest], labels[rest])
    exposed = out[thal & ~np.isin(out, (10, 49))]
    assert exposed.size > 0 and set(np.unique(exposed).tolist()) <= set(np.unique(labels[~thal]).tolist())
    same = resize((1.0, 1.0))
    for c in (10, 49):  # factor 1 gives back the thalamus, up to the distance map's smoothing
        a, b = labels == c, same == c
        assert 2 * np.count_nonzero(a & b) / (a.sum() + b.sum()) > 0.98


def test_thalnet_measures_planted_thalamic_atrophy(thalnet, anatomy):
    """Shrinking the held-out thalami by 30 % (the rim becomes neighbouring tissue) shows up
    as a clear loss of volume. The model card measures a slope of about 0.91 on T1w (1 would
    be all of the change; 0.74 before thalamus-size augmentation); the bounds hold it to
    well above that earlier figure."""
    labels, affine = crop_around_thalami(*anatomy)
    rows = volume_response(lambda img, aff, c: thalnet.predict(img, aff, contrast=c).labels,
                           [("heldout", labels, affine)], factors=(0.7, 1.0))
    slope = response_slope(rows)
    pred = {(r["factor"], r["side"]): r["pred_voxels"] for r in rows}
    measured = [pred[(0.7, s)] / pred[(1.0, s)] for s in ("left", "right")]
    assert slope > 0.8, (slope, rows)
    assert max(measured) < 0.8, rows  # most of the planted 30 % loss is measured
