"""thalnet on held-out anatomy (a label map never seen in training) beats a trivial baseline."""

import numpy as np
import pytest

from thaldask.segment import get_segmenter
from thaldask.segment.validate import dice, render_scan

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
    from seg_helpers import crop_around_thalami

    labels, affine = crop_around_thalami(*anatomy)
    img, truth, aff = render_scan(labels, affine, "T1w", spacing=(1.0, 1.0, 1.5), rng=7)
    model = _mean_dice(thalnet.predict(img, aff, contrast="T1w").labels, truth)
    base = _mean_dice(sphere_baseline(img.shape, aff), truth)
    assert model > 0.85
    assert model > base + 0.2, (model, base)


def test_evaluate_segmenter_volume_error_matches_dice_algebra(anatomy):
    """An all-left prediction of N voxels has Dice 2T/(N+T) and volume error 100 (N-T)/T for
    true volume T; an empty one -100 % for both sides."""
    from seg_helpers import crop_around_thalami

    from thaldask.segment.validate import evaluate_segmenter

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
