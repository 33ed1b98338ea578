"""Kernels of ingest checked against their plain numpy/nibabel equivalents."""

import nibabel as nib
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as hs

from thaldask.cohort.labels import parse_labels, to_sides
from thaldask.errors import LabelConventionError
from thaldask.store import fastcopy, nifti


@settings(max_examples=30, deadline=None)
@given(
    seed=hs.integers(0, 2**31 - 1),
    spec=hs.sampled_from(["freesurfer", "dbsegment", "L:3;R:7", "binary", "5", "L:24,26;R:25"]),
    fortran=hs.booleans(),
)
def test_fast_sides_matches_to_sides(seed, spec, fortran):
    rng = np.random.default_rng(seed)
    data = rng.choice(np.array([0, 1, 3, 5, 7, 10, 24, 25, 26, 27, 30, 31, 49, 300]), size=(7, 6, 5)).astype(np.int16)
    if fortran:
        data = np.asfortranarray(data)
    conv = parse_labels(spec)
    np.testing.assert_array_equal(fastcopy.fast_sides(data, conv), to_sides(data, conv))


def test_fast_sides_unexpected_label_names_it():
    with pytest.raises(LabelConventionError, match=r"unexpected labels \[4\]"):
        fastcopy.fast_sides(np.array([0, 1, 2, 4]), parse_labels("L:1;R:2"), allowed={0, 1, 2})


@pytest.mark.parametrize("axcodes", ["RAS", "LIA", "PSR", "ILA"])
@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.float32])
def test_c_copy_reoriented_view_equals_numpy_copy(axcodes, dtype):
    rng = np.random.default_rng(0)
    # above c_copy's 2**16-voxel threshold, so that the plane-by-plane path runs
    data = np.asfortranarray(rng.integers(0, 100, (48, 44, 41)).astype(dtype))
    ornt = nib.orientations.axcodes2ornt(axcodes)
    aff = nib.orientations.inv_ornt_aff(ornt, data.shape)
    view, ras_aff, _ = nifti.to_ras(data, aff)
    assert "".join(nib.aff2axcodes(ras_aff)) == "RAS"
    out = fastcopy.c_copy(view, (49, 48, 48), np.float32)
    assert out.flags.c_contiguous and out.dtype == np.float32
    np.testing.assert_array_equal(out[: view.shape[0], : view.shape[1], : view.shape[2]], view)
    assert out.sum() == view.sum()
    back = nifti.from_ras(np.ascontiguousarray(view), nifti.ras_orientation(aff))
    np.testing.assert_array_equal(back, data)


def test_batches_group_small_scans_and_keep_large_ones_alone():
    from thaldask.store.ingest import batches
    from thaldask.store.ingest_plan import ScanSpec

    def spec(i, voxels):
        return ScanSpec(scan=i, subject=f"s{i}", timepoint="t", entries=(), voxels=voxels)

    small = [spec(i, 1_000) for i in range(40)]
    big = [spec(100 + i, 30_000_000) for i in range(3)]
    got = batches(small + big, voxels=24_000_000, scans=16)
    assert [len(g) for g in got] == [16, 16, 9, 1, 1]
    assert [sp.scan for g in got for sp in g] == list(range(40)) + [100, 101, 102]
