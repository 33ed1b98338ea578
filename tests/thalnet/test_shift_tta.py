"""thalnet's shifted ROI passes: their probabilities averaged on the input grid, their count
set by ``thaldask.thalnet.shift-tta``."""

import dask
import numpy as np
import pytest
from scipy import ndimage

from thaldask.errors import SegmenterError
from thaldask.segment import get_segmenter
from thaldask.thalnet.inference import load_thalnet, shift_offsets


@pytest.fixture(scope="module")
def model():
    return load_thalnet("cpu", shift_tta=1)


def _on_input_grid(prob, box, affine, shape):
    """Left/right probabilities of one box trilinearly resampled onto the input voxels
    (scipy: independent of the model's own torch resampling)."""
    m = np.linalg.inv(box) @ affine
    ijk = np.indices(shape).reshape(3, -1).astype(np.float64)
    vox = m[:3, :3] @ ijk + m[:3, 3:4]
    return np.stack([ndimage.map_coordinates(prob[s].numpy().astype(np.float64), vox, order=1,
                                             mode="grid-constant", cval=0.0).reshape(shape) for s in (1, 2)])


def test_offsets_are_half_voxel_shifts_centred_on_the_box():
    for n in range(1, 9):
        o = shift_offsets(n)
        assert o.shape == (n, 3)
        np.testing.assert_allclose(o.mean(0), 0, atol=1e-12)
        assert len({tuple(r) for r in np.round(o, 6)}) == n  # n distinct boxes
        steps = np.round(2 * (o - o.min(0)), 6)  # every shift a multiple of half a voxel
        np.testing.assert_allclose(steps, np.round(steps))
    for n in (2, 4, 8):  # every axis shifted in half of the boxes
        o = shift_offsets(n)
        assert ((o > o.min(0)).sum(0) == n // 2).all()
    for bad in (0, 9):
        with pytest.raises(SegmenterError, match="shift-tta"):
            shift_offsets(bad)


@pytest.mark.parametrize("n", [1, 4])
def test_shifted_passes_average_on_the_input_grid(model, small_scans, n):
    """The returned probabilities are the mean of each shifted box's probabilities
    resampled onto the input grid; the labels come from that mean."""
    img, truth, aff = small_scans["T1w"]
    model.shift_tta = n
    try:
        out = model.predict([img, None, None], aff)
    finally:
        model.shift_tta = 1
    tens, _, aff64, shape = model._inputs([img, None, None], aff)
    passes = []
    rois = model.predict_rois(tens, aff64, out["center"], shift_offsets(n), passes=passes)
    assert len(rois) == n
    # one box runs plain and mirrored; several boxes run every other one mirrored
    assert [m for m, _ in passes] == ([False, True] if n == 1 else [k % 2 == 1 for k in range(n)])
    each = [_on_input_grid(p, b, aff64, shape) for p, b in rois]
    mean = np.mean(each, axis=0)
    np.testing.assert_allclose(out["prob"], np.clip(mean, 0, 1), atol=2e-4)
    if n > 1:  # the boxes do see different things: their average is not any one of them
        spread = max(float(np.abs(e - mean).max()) for e in each)
        assert spread > 0.05, spread
    assert set(np.unique(out["labels"]).tolist()) == {0, 1, 2}
    voxel = float(abs(np.linalg.det(aff[:3, :3])))
    counts = [np.count_nonzero(out["labels"] == s) * voxel for s in (1, 2)]
    np.testing.assert_allclose(out["volume_mm3"], counts)
    np.testing.assert_allclose(out["soft_volume_mm3"], out["prob"].reshape(2, -1).sum(1) * voxel, rtol=1e-4)
    # where one side's mean probability clearly beats the rest, that side is the label
    p = out["prob"]
    bg = 1 - p.sum(0)
    for s in (1, 2):
        sure = (p[s - 1] > 0.6) & (p[s - 1] > bg + 0.2)
        assert sure.any() and (out["labels"][sure] == s).mean() > 0.99


@pytest.mark.parametrize("n", [1, 3])
def test_config_key_sets_the_number_of_shifted_passes(small_scans, n):
    """``thaldask.thalnet.shift-tta`` decides how many boxes the final pass runs: one network
    pass per box (every other one mirrored), or the plain and the mirrored input of a single
    box."""
    img, _, aff = small_scans["T1w"]
    with dask.config.set({"thaldask.thalnet.shift-tta": n}):
        seg = get_segmenter("thalnet")
        seg.load("cpu")
    assert seg.model.shift_tta == n
    batches = []
    hook = seg.model.roi_net.register_forward_hook(lambda mod, inp, out: batches.append(inp[0].shape[0]))
    try:
        pred = seg.predict(img, aff, contrast="T1w")
    finally:
        hook.remove()
    assert batches[-1] == (2 if n == 1 else n), batches  # one box: plain and mirrored
    seg.model.shift_mirror = "each"  # every box plain and mirrored
    batches.clear()
    hook = seg.model.roi_net.register_forward_hook(lambda mod, inp, out: batches.append(inp[0].shape[0]))
    try:
        seg.predict(img, aff, contrast="T1w")
    finally:
        hook.remove()
    assert batches[-1] == 2 * n, batches
    assert pred.labels.shape == img.shape
    # an option given to the segmenter wins over the configuration
    seg2 = get_segmenter("thalnet", shift_tta=2)
    seg2.load("cpu")
    assert seg2.model.shift_tta == 2
    with dask.config.set({"thaldask.thalnet.shift-tta": 0}), pytest.raises(SegmenterError, match="shift-tta"):
        load_thalnet("cpu")
