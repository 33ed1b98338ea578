"""Masks whose declared label convention does not fit their labels."""

from __future__ import annotations

import nibabel as nib
import numpy as np
from helpers.store import box_mask, make_cohort

from thaldask.store import ingest, open_store


def _one_mask(tmp_path, data, labels="freesurfer", method="gt"):
    man = make_cohort(tmp_path / "in", [{"subject": "s0", "timepoint": "baseline", "shape": (20, 16, 12)}])
    root = tmp_path / "in"
    img = nib.load(root / "s0_baseline_T1w.nii.gz")
    nib.save(nib.Nifti1Image(data.astype(np.uint8), img.affine), root / "odd.nii.gz")
    lines = open(man).read().splitlines()
    if method == "gt":  # replace the cohort's own ground truth
        lines = [x for x in lines if ",mask,T1w,gt," not in x]
    lines.append(f"s0,baseline,A,mask,T1w,{method},{labels},odd.nii.gz")
    with open(man, "w") as f:
        f.write("\n".join(lines) + "\n")
    rep = ingest(man, str(tmp_path / "c.zarr"), progress=False)
    return rep[rep.path == "odd.nii.gz"].iloc[0], str(tmp_path / "c.zarr")


def test_binary_mask_declared_freesurfer_fails_its_row_and_says_binary(tmp_path):
    row, _ = _one_mask(tmp_path, box_mask((20, 16, 12), left=1, right=1), method="first")
    assert row.status == "failed"
    assert "labels found [0, 1]" in row.reason and "did you mean binary?" in row.reason


def test_ground_truth_without_a_left_label_fails(tmp_path):
    row, _ = _one_mask(tmp_path, box_mask((20, 16, 12), left=0, right=49))
    assert row.status == "failed" and "left" in row.reason and "49" in row.reason


def test_method_mask_missing_one_side_is_stored_with_a_note(tmp_path):
    row, store = _one_mask(tmp_path, box_mask((20, 16, 12), left=0, right=49), method="first")
    assert row.status == "written" and "left" in row.reason
    sides = open_store(store).load_mask("first", "T1w", 0)
    assert (sides == 2).any() and not (sides == 1).any()


def test_empty_method_mask_is_stored(tmp_path):
    row, store = _one_mask(tmp_path, np.zeros((20, 16, 12)), method="first")
    assert row.status == "written" and row.reason == "empty mask"
