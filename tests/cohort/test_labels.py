"""Label conventions: declared conventions checked against the labels found; intensity
images refused by detection."""

import numpy as np
import pytest
from helpers.cohort import one_line

from thaldask.cohort.labels import MAX_MASK_LABELS, check_sides, detect_convention, label_values
from thaldask.errors import LabelConventionError

WHERE = "m.csv row 7: 'sub-03_dseg.nii.gz': "


def test_check_sides_binary_mask_declared_freesurfer_suggests_binary():
    with pytest.raises(LabelConventionError) as ei:
        check_sides(label_values(np.array([0, 1, 1, 0])), "freesurfer", where=WHERE)
    assert one_line(str(ei.value)) == (
        WHERE + "labels found [0, 1]; expected 10 (left) and 49 (right) for 'freesurfer'; did you mean binary?"
    )


@pytest.mark.parametrize("name", ["synthseg", "first"])
def test_check_sides_binary_mask_declared_other_10_49_conventions_refused(name):
    with pytest.raises(LabelConventionError, match=f"for '{name}'; did you mean binary"):
        check_sides([0, 1], name)


def test_check_sides_freesurfer_without_left_names_missing_side():
    mask = np.zeros((4, 4, 4), np.int16)
    mask[0, 0, 0], mask[1, 1, 1], mask[2, 2, 2] = 49, 17, 53
    with pytest.raises(LabelConventionError) as ei:
        check_sides(label_values(mask), "freesurfer", where=WHERE)
    assert one_line(str(ei.value)) == (
        WHERE + "no voxel of the left thalamus: labels found [0, 17, 49, 53]; "
        "expected 10 (left) and 49 (right) for 'freesurfer'"
    )


def test_check_sides_dbsegment_without_right_names_missing_side():
    with pytest.raises(LabelConventionError, match="no voxel of the right thalamus: labels found \\[0, 24, 26\\]"):
        check_sides([0, 24, 26], "dbsegment")


def test_check_sides_one_side_allowed_when_not_required():
    check_sides([0, 49], "freesurfer", require_both=False)


def test_check_sides_sided_mask_declared_freesurfer_suggests_l1_r2():
    with pytest.raises(LabelConventionError, match=r"did you mean 'L:1;R:2'\?"):
        check_sides([0, 1, 2], "freesurfer")


def test_check_sides_freesurfer_labels_declared_binary_suggests_freesurfer():
    with pytest.raises(LabelConventionError, match="did you mean freesurfer"):
        check_sides([0, 2, 10, 41, 49], "binary")


def test_check_sides_good_and_empty_masks_pass():
    check_sides([0, 10, 49, 17], "freesurfer")
    check_sides([0, 1], "binary")
    check_sides([0], "freesurfer")  # an empty prediction is scored, not refused
    check_sides([0, 5, 6], "mindglide:L:5;R:6")


def test_detect_convention_float_intensity_image_refused():
    img = np.random.default_rng(0).normal(100, 20, (8, 8, 8)).astype(np.float32)
    with pytest.raises(LabelConventionError) as ei:
        detect_convention(img)
    msg = one_line(str(ei.value))
    assert msg.startswith("looks like an intensity image (non-integer values such as ")
    assert msg.endswith("not a label mask")


def test_detect_convention_integer_intensity_image_refused():
    img = np.random.default_rng(0).integers(0, 4000, (8, 8, 8)).astype(np.int16)
    n = np.unique(img).size
    assert n > MAX_MASK_LABELS
    with pytest.raises(LabelConventionError) as ei:
        detect_convention(img)
    assert one_line(str(ei.value)) == (
        f"looks like an intensity image ({n} distinct values), not a label mask (at most {MAX_MASK_LABELS} labels)"
    )


def test_detect_convention_whole_brain_label_map_still_freesurfer():
    # aparc+aseg style: ~110 labels including 10/49 stays a label map, not an intensity image
    ids = np.array([0, 2, 4, 10, 11, 12, 17, 41, 49, 50, 51, 53, *range(1000, 1036), *range(2000, 2036)])
    mask = np.resize(ids, (8, 8, 8)).astype(np.int16)
    assert detect_convention(mask).name == "freesurfer"


def test_detect_convention_float_mask_with_whole_values_accepted():
    assert detect_convention(np.array([0.0, 10.0, 49.0])).name == "freesurfer"


def test_label_values_nan_refused():
    with pytest.raises(LabelConventionError, match="NaN or infinite"):
        label_values(np.array([0.0, np.nan]))


def test_to_sides_strict_checks_declared_convention():
    from thaldask.cohort import to_sides

    with pytest.raises(LabelConventionError, match=r"^x.nii: labels found \[0, 1\]; .*did you mean binary\?$"):
        to_sides(np.array([0, 1, 1]), "freesurfer", strict=True, where="x.nii: ")
    with pytest.raises(LabelConventionError, match="looks like an intensity image"):
        to_sides(np.linspace(0, 1, 27).reshape(3, 3, 3), "binary", strict=True)
    assert to_sides(np.array([0, 10, 49]), "freesurfer", strict=True).tolist() == [0, 1, 2]
    assert to_sides(np.array([0, 1, 1]), "freesurfer").tolist() == [0, 0, 0]  # not strict: as before
