"""Every segmenter: output on the input grid, uint8, labels 0/1/2, deterministic, left is left."""

import numpy as np
import pytest

from thaldask.segment import Prediction, get_segmenter, list_segmenters
from thaldask.testing import check_prediction, check_segmenter

CHEAP = ["thalnet", "thalnet-multi"]


def _segmenter(name):
    if name == "mindglide":
        pytest.importorskip("mindglide")
        seg = get_segmenter("mindglide", label_ids="3", random_weights=True, sw_batch_size=1)
    else:
        seg = get_segmenter(name)
    seg.load("cpu")
    return seg


@pytest.fixture(scope="module")
def loaded():
    cache = {}

    def get(name):
        if name not in cache:
            cache[name] = _segmenter(name)
        return cache[name]

    return get


@pytest.mark.parametrize("name", CHEAP)
def test_segmenter_small_scan_conforms_and_is_deterministic(name, loaded):
    check_segmenter(loaded(name), contrast="T1w")


def test_segmenter_reoriented_input_same_world_labels(loaded, small_scans):
    """The same voxels stored LPS-flipped and axis-permuted give the same mask in the world."""
    img, _, aff = small_scans["T1w"]
    seg = loaded("thalnet")
    ref = seg.predict(img, aff, contrast="T1w").labels
    flipped = np.ascontiguousarray(np.transpose(img[::-1, ::-1, :], (2, 0, 1)))
    n = np.asarray(img.shape)
    # voxel (k, i', j') of the new array is voxel (n0-1-i', n1-1-j', k) of the old one
    m = np.zeros((4, 4))
    m[0, 1], m[0, 3] = -1, n[0] - 1
    m[1, 2], m[1, 3] = -1, n[1] - 1
    m[2, 0] = 1
    m[3, 3] = 1
    aff2 = aff @ m
    out = seg.predict(flipped, aff2, contrast="T1w")
    check_prediction(out, flipped.shape)
    back = np.transpose(out.labels, (1, 2, 0))[::-1, ::-1, :]
    agree = (back == ref)[(back > 0) | (ref > 0)].mean()
    assert agree > 0.97


def test_segmenter_left_label_lies_left_in_world(loaded, small_scans):
    img, _, aff = small_scans["FLAIR"]
    lab = loaded("thalnet").predict(img, aff, contrast="FLAIR").labels
    x = lambda side: (aff @ np.append(np.argwhere(lab == side).mean(0), 1))[0]  # noqa: E731
    assert x(1) < x(2)  # RAS: +x is the subject's right


def test_thalnet_multi_channels_conform(loaded, small_scans):
    imgs = np.stack([small_scans[c][0] for c in ("T1w", "FLAIR", "R1")])
    aff = small_scans["T1w"][2]
    seg = loaded("thalnet-multi")
    pred = seg.predict(imgs, aff, contrast="T1w+FLAIR+R1")
    check_prediction(pred, imgs.shape[1:])
    pred2 = seg.predict(imgs[[0, 2]], aff, contrast="T1w+R1")
    check_prediction(pred2, imgs.shape[1:])


@pytest.mark.slow
@pytest.mark.requires_mindglide
def test_mindglide_random_weights_conforms(loaded):
    # random weights: no sides to find
    check_segmenter(loaded("mindglide"), shapes=((64, 64, 64),), contrast="T1w", sides=False)


def test_list_segmenters_all_known_are_covered():
    assert set(list_segmenters()) >= set(CHEAP) | {"mindglide"}


class _Swapped:
    """A segmenter that finds both thalami but swaps their labels."""

    name = "swapped"

    def predict(self, image, affine, *, contrast):
        lab = np.zeros(image.shape, np.uint8)
        half = image.shape[0] // 2
        lab[half - 10 : half, 40:60, 30:50] = 2  # voxel x < centre: the subject's left (RAS)
        lab[half : half + 10, 40:60, 30:50] = 1
        return Prediction(lab)


class _Float:
    name = "float"

    def predict(self, image, affine, *, contrast):
        return Prediction(np.zeros(image.shape, np.float32))


def test_check_segmenter_reports_what_is_wrong():
    with pytest.raises(AssertionError, match="sides swapped"):
        check_segmenter(_Swapped(), shapes=((64, 64, 64),))
    with pytest.raises(AssertionError, match="'float'.*dtype float32, not uint8"):
        check_segmenter(_Float(), shapes=((64, 64, 64),), sides=False)


def test_check_prediction_rejects_bad_grid_and_probabilities():
    lab = np.zeros((4, 5, 6), np.uint8)
    check_prediction(Prediction(lab, np.zeros((2, 4, 5, 6), np.float32)), (4, 5, 6))
    with pytest.raises(AssertionError, match="not the input grid"):
        check_prediction(Prediction(lab), (4, 5, 7))
    with pytest.raises(AssertionError, match=r"outside \{0, 1, 2\}"):
        check_prediction(Prediction(lab + 3), (4, 5, 6))
    with pytest.raises(AssertionError, match=r"outside \[0, 1\]"):
        check_prediction(Prediction(lab, np.full((2, 4, 5, 6), 1.5)), (4, 5, 6))
