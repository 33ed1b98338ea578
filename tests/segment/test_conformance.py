"""Every segmenter: output on the input grid, uint8, labels 0/1/2, deterministic, left is left."""

import numpy as np
import pytest

from thaldask.segment import get_segmenter, list_segmenters

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


def _check(pred, shape):
    assert pred.labels.shape == shape
    assert pred.labels.dtype == np.uint8
    assert set(np.unique(pred.labels)) <= {0, 1, 2}
    if pred.prob is not None:
        assert pred.prob.shape == (2, *shape)
        assert np.all((pred.prob >= 0) & (pred.prob <= 1))


@pytest.mark.parametrize("name", CHEAP)
def test_segmenter_small_scan_conforms_and_is_deterministic(name, loaded, small_scans):
    img, _, aff = small_scans["T1w"]
    seg = loaded(name)
    a = seg.predict(img, aff, contrast="T1w")
    b = seg.predict(img, aff, contrast="T1w")
    _check(a, img.shape)
    assert np.array_equal(a.labels, b.labels)
    assert (a.labels == 1).any() and (a.labels == 2).any()


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
    _check(out, flipped.shape)
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
    _check(pred, imgs.shape[1:])
    pred2 = seg.predict(imgs[[0, 2]], aff, contrast="T1w+R1")
    _check(pred2, imgs.shape[1:])


@pytest.mark.slow
@pytest.mark.requires_mindglide
def test_mindglide_random_weights_conforms(loaded, small_scans):
    img, _, aff = small_scans["T1w"]
    img = img[:64, :64, :64]
    seg = loaded("mindglide")
    a = seg.predict(img, aff, contrast="T1w")
    _check(a, img.shape)
    assert np.array_equal(a.labels, seg.predict(img, aff, contrast="T1w").labels)


def test_list_segmenters_all_known_are_covered():
    assert set(list_segmenters()) >= set(CHEAP) | {"mindglide"}
