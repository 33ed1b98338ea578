"""Thalamus-size augmentation of the training label maps, and the model's volume uncertainty."""

import numpy as np
import pytest
import torch
from scipy import ndimage

from thaldask.segment import get_segmenter
from thaldask.thalnet import augment
from thaldask.thalnet.train import LabelMaps, TrainConfig, make_roi_sample
from thaldask.thalnet.validate import crop_around_thalami


@pytest.fixture(scope="module")
def maps(anatomy):
    labels, _ = crop_around_thalami(*anatomy, size_mm=(128, 128, 128))
    bank = augment.LabelBank(np.unique(labels))
    idx = torch.from_numpy(bank.encode(labels))
    center = np.argwhere(np.isin(labels, (10, 49))).mean(0)
    return LabelMaps(["heldout"], [idx], [center], [idx[::2, ::2, ::2]], [np.asarray(idx.shape) / 4], bank)


@pytest.mark.parametrize("factors", [(0.65, 1.2), (1.1, 0.8)])
def test_resized_thalami_match_the_factors_and_neighbours_fill_the_rim(maps, factors):
    bank, before = maps.bank, maps.roi[0].numpy()
    after = maps.resized_roi(0, factors).numpy()
    sides = (bank.left, bank.right)
    for side, f in zip(sides, factors, strict=True):
        ratio = np.count_nonzero(after == side) / np.count_nonzero(before == side)
        assert ratio == pytest.approx(f, rel=0.02), (side, f, ratio)
    assert after.dtype == np.uint8 and after.max() < len(bank)  # valid label indices
    thal_before, thal_after = np.isin(before, sides), np.isin(after, sides)
    # what a shrinking thalamus exposes takes labels of the structures around it
    exposed = thal_before & ~thal_after
    assert exposed.any()
    near = ndimage.binary_dilation(thal_before, iterations=3) & ~thal_before
    assert set(np.unique(after[exposed]).tolist()) <= set(np.unique(before[near]).tolist())
    # a growing thalamus takes over its neighbours' border only; far away nothing changes
    grown = thal_after & ~thal_before
    assert grown.any() and (ndimage.binary_dilation(thal_before, iterations=4) | ~grown).all()
    far = ~ndimage.binary_dilation(thal_before | thal_after, iterations=4)
    np.testing.assert_array_equal(after[far], before[far])


def test_roi_samples_vary_thalamus_size_with_valid_targets(maps):
    cfg = TrainConfig()
    gen = torch.Generator().manual_seed(1)
    ratios = []
    for _ in range(6):
        image, target = make_roi_sample(maps, 0, gen, cfg)
        assert image.shape[1:] == target.shape and set(np.unique(target.numpy())) <= {0, 1, 2}
        assert torch.isfinite(image).all() and 0 <= float(image.min()) and float(image.max()) <= 1
        n = [int((target == s).sum()) for s in (1, 2)]
        ratios.append(n[0] / max(n[1], 1))
    # left and right are resized independently: their ratio spreads out
    assert np.std(ratios) > 0.05, ratios


@pytest.mark.slow
@pytest.mark.parametrize("name", ["thalnet", "thalnet-multi"])
def test_volume_sd_is_finite_and_larger_for_a_degraded_scan(name, small_scans):
    seg = get_segmenter(name)
    seg.load("cpu")
    img, truth, aff = small_scans["T1w"]
    rng = np.random.default_rng(0)
    bad = ndimage.gaussian_filter(img, 1.5) + rng.normal(0, 0.25 * float(img.std()), img.shape)
    sds = []
    for im in (img, bad.astype(np.float32)):
        pred = seg.predict(im, aff, contrast="T1w")
        sd = np.asarray(pred.volume_sd)
        assert sd.shape == (2,) and np.isfinite(sd).all() and (sd >= 0).all()
        sds.append(sd)
    clean, degraded = sds
    assert (degraded > clean).all(), (clean, degraded)


def test_partial_volume_samples_have_class_fractions_that_keep_the_volume(maps):
    """Rendered twice as fine and averaged: the target is the share of each class per voxel
    (summing to one), and its thalamus volume is that of the same sample without partial volume."""
    cfg = TrainConfig()
    cfg.augmentation.update(pv_supersample=2, thal_resize_prob=0.0)
    image, target = make_roi_sample(maps, 0, torch.Generator().manual_seed(3), cfg, deform=False)
    assert target.shape == (3, *image.shape[1:]) and target.is_floating_point()
    torch.testing.assert_close(target.sum(0), torch.ones(image.shape[1:]))
    assert float(target.min()) >= 0 and float(target.max()) <= 1
    partial = ((target[1:] > 0) & (target[1:] < 1)).sum()
    assert partial > 100  # boundary voxels hold fractions
    cfg1 = TrainConfig()
    cfg1.augmentation.update(thal_resize_prob=0.0)
    _, hard = make_roi_sample(maps, 0, torch.Generator().manual_seed(3), cfg1, deform=False)
    for side in (1, 2):
        assert float(target[side].sum()) == pytest.approx(int((hard == side).sum()), rel=0.03)
