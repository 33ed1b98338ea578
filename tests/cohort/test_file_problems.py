"""One bad file is flagged on its own row (on_file_error="flag") and never stops the cohort."""

import gzip
import os

import numpy as np
import pytest
from helpers.cohort import digests, good_image, one_line, raw_nifti, set_pixdim, write_manifest

from thaldask.cohort import check_file, validate
from thaldask.errors import ManifestError, ThaldaskWarning


def _flag_one(tmp_path, name, make):
    """A manifest of a good image (row 2) and the bad one (row 3); validate with flag."""
    good_image(tmp_path / "good.nii.gz")
    make(tmp_path / name)
    man = write_manifest(
        tmp_path, ["s1,t,,image,T1w,,,good.nii.gz", f"s2,t,,image,T1w,,,{name}"]
    )
    before = digests(tmp_path)
    df = validate(man, on_file_error="flag")
    assert digests(tmp_path) == before  # validation never changes an input
    assert df["problem"].iloc[0] == "" and df["shape"].iloc[0] == (8, 8, 8)
    problem = one_line(df["problem"].iloc[1])
    assert problem.startswith(f"m.csv row 3: {name!r}: "), problem
    assert df["shape"].iloc[1] is None and df["affine"].iloc[1] is None and df["dtype"].iloc[1] is None
    # the old behaviour: everything raises at once
    with pytest.raises(ManifestError) as ei:
        validate(man)
    assert ei.value.problems == [problem]
    return problem


def test_validate_missing_file_flagged(tmp_path):
    p = _flag_one(tmp_path, "gone.nii.gz", lambda p: None)
    assert "file not found" in p and str(tmp_path / "gone.nii.gz") in p


def test_validate_empty_file_flagged(tmp_path):
    p = _flag_one(tmp_path, "empty.nii.gz", lambda p: p.write_bytes(b""))
    assert p.endswith("empty file (0 bytes)")


def test_validate_directory_flagged(tmp_path):
    p = _flag_one(tmp_path, "folder.nii.gz", lambda p: p.mkdir())
    assert p.endswith("is a folder, not an image file")


def test_validate_symlink_loop_flagged(tmp_path):
    p = _flag_one(tmp_path, "loop.nii.gz", lambda p: os.symlink(p.name, p))
    assert "symbolic link loop" in p


def test_validate_broken_symlink_flagged(tmp_path):
    p = _flag_one(tmp_path, "dangling.nii", lambda p: os.symlink("nowhere.nii", p))
    assert "broken symbolic link (points to 'nowhere.nii'" in p


def test_validate_wrong_extension_flagged(tmp_path):
    p = _flag_one(tmp_path, "scan.png", lambda p: p.write_bytes(b"\x89PNG...."))
    assert "unsupported file type; allowed: .nii, .nii.gz, .mgz, .mgh" in p


def test_validate_unreadable_header_flagged(tmp_path):
    p = _flag_one(tmp_path, "junk.nii", lambda p: p.write_bytes(b"not a nifti header " * 40))
    assert ": unreadable header (" in p


def test_validate_not_gzip_flagged(tmp_path):
    p = _flag_one(tmp_path, "plain.nii.gz", lambda p: p.write_bytes(b"plain text, no gzip" * 30))
    assert ": unreadable header (" in p


def test_validate_2d_image_flagged(tmp_path):
    p = _flag_one(tmp_path, "slice.nii", lambda p: raw_nifti(p, shape=(8, 8)))
    assert p.endswith("is 2-D (8x8); a 3-D volume is needed")


def test_validate_4d_with_several_volumes_flagged(tmp_path):
    p = _flag_one(tmp_path, "dwi.nii", lambda p: raw_nifti(p, shape=(8, 8, 8, 3)))
    assert p.endswith("is 4-D with 3 volumes (8x8x8x3); one 3-D volume is needed")


def test_validate_4d_with_one_volume_accepted(tmp_path):
    raw_nifti(tmp_path / "one.nii", shape=(8, 8, 8, 1))
    df = validate(write_manifest(tmp_path, ["s1,t,,image,T1w,,,one.nii"]), on_file_error="flag")
    assert df["problem"].tolist() == [""] and df["shape"].iloc[0] == (8, 8, 8, 1)


def test_validate_huge_declared_dims_flagged(tmp_path):
    p = _flag_one(tmp_path, "x.nii.gz", lambda p: raw_nifti(p, shape=(10000, 10000, 10000), n_data_bytes=0))
    assert p == "m.csv row 3: 'x.nii.gz': declares 10000x10000x10000 voxels (limit 2048 per axis)"


def test_validate_single_slice_flagged(tmp_path):
    p = _flag_one(tmp_path, "thin.nii", lambda p: raw_nifti(p, shape=(8, 8, 1)))
    assert p.endswith("declares 8x8x1 voxels (at least 2 per axis)")


def test_validate_negative_voxel_size_flagged(tmp_path):
    p = _flag_one(tmp_path, "neg.nii", lambda p: raw_nifti(p, edit=lambda h: set_pixdim(h, 2, -1.0)))
    assert "voxel size (pixdim) is negative" in p


def test_validate_nan_voxel_size_flagged(tmp_path):
    p = _flag_one(tmp_path, "nan.nii", lambda p: raw_nifti(p, edit=lambda h: set_pixdim(h, 3, np.nan)))
    assert p.endswith("voxel size 1x1xnan mm is not finite")


def test_validate_huge_voxel_size_flagged(tmp_path):
    def edit(h):
        set_pixdim(h, 1, 25.0)
        h.set_sform(np.diag([25.0, 1, 1, 1]), code=1)
        h.set_qform(np.diag([25.0, 1, 1, 1]), code=1)

    p = _flag_one(tmp_path, "big.nii", lambda p: raw_nifti(p, edit=edit))
    assert p.endswith("voxel size 25x1x1 mm (limit 20 mm)")


def test_validate_zero_voxel_size_with_qform_only_flagged(tmp_path):
    def edit(h):
        set_pixdim(h, 1, 0.0)
        h["sform_code"] = 0

    p = _flag_one(tmp_path, "zq.nii", lambda p: raw_nifti(p, edit=edit))
    assert "voxel size (pixdim) is 0 mm but the qform needs it" in p


def test_validate_singular_affine_flagged(tmp_path):
    def edit(h):
        h["qform_code"] = 0
        h["srow_z"] = [0.0, 0.0, 0.0, 0.0]

    p = _flag_one(tmp_path, "flat.nii", lambda p: raw_nifti(p, edit=edit))
    assert "affine is singular (determinant 0)" in p


def test_validate_non_finite_affine_flagged(tmp_path):
    def edit(h):
        h["qform_code"] = 0
        h["srow_x"] = [np.nan, 0.0, 0.0, 0.0]

    p = _flag_one(tmp_path, "nanaff.nii", lambda p: raw_nifti(p, edit=edit))
    assert p.endswith("affine holds non-finite values (NaN or inf)")


def test_validate_truncated_nii_flagged(tmp_path):
    p = _flag_one(tmp_path, "cut.nii", lambda p: raw_nifti(p, n_data_bytes=100))
    assert p.endswith(
        "truncated: the header declares 8x8x8 voxels of int16 (1376 bytes with the header) "
        "but the file has 452 bytes"
    )


def test_validate_qform_sform_disagree_flagged(tmp_path):
    def edit(h):
        shifted = np.eye(4)
        shifted[0, 3] = 5.0
        h.set_sform(shifted, code=1)

    p = _flag_one(tmp_path, "qs.nii.gz", lambda p: raw_nifti(p, edit=edit))
    assert "qform and sform disagree (by 0 in rotation/zoom, 5 mm in translation" in p


def test_validate_qform_sform_tiny_difference_accepted(tmp_path):
    def edit(h):
        shifted = np.eye(4)
        shifted[0, 3] = 0.01
        h.set_sform(shifted, code=1)

    raw_nifti(tmp_path / "ok.nii", edit=edit)
    df = validate(write_manifest(tmp_path, ["s1,t,,image,T1w,,,ok.nii"]), on_file_error="flag")
    assert df["problem"].tolist() == [""]


def test_validate_zero_voxel_size_without_qform_sform_warns(tmp_path):
    def edit(h):
        set_pixdim(h, 1, 0.0)
        h["qform_code"] = 0
        h["sform_code"] = 0

    raw_nifti(tmp_path / "zero.nii", edit=edit)
    man = write_manifest(tmp_path, ["s1,t,,image,T1w,,,zero.nii"])
    df = validate(man, on_file_error="flag")
    assert df["problem"].tolist() == [""]
    w = one_line(df["warning"].iloc[0])
    assert w == (
        "m.csv row 2: 'zero.nii': voxel size (pixdim) is 0 in the header and it has no "
        "qform/sform; taken as 1 mm"
    )
    assert df["shape"].iloc[0] == (8, 8, 8)
    assert np.allclose(np.abs(np.diag(df["affine"].iloc[0]))[:3], 1.0)
    with pytest.warns(ThaldaskWarning, match="taken as 1 mm"):
        validate(man)  # raise mode: a warning is not an error


def test_validate_truncated_gzip_warns(tmp_path):
    data = np.random.default_rng(0).integers(0, 3000, (32, 32, 32))
    full = raw_nifti(tmp_path / "whole.nii", shape=(32, 32, 32), data=data)
    packed = gzip.compress(open(full, "rb").read())
    os.unlink(full)
    (tmp_path / "cut.nii.gz").write_bytes(packed[: len(packed) * 6 // 10])
    (tmp_path / "ok.nii.gz").write_bytes(packed)
    man = write_manifest(tmp_path, ["s1,t,,image,T1w,,,cut.nii.gz", "s2,t,,image,T1w,,,ok.nii.gz"])
    df = validate(man, on_file_error="flag")
    assert df["problem"].tolist() == ["", ""]
    w = one_line(df["warning"].iloc[0])
    assert w.startswith("m.csv row 2: 'cut.nii.gz': the gzip trailer records ")
    assert w.endswith("but the header declares 65888; the file may be truncated")
    assert df["warning"].iloc[1] == ""


def test_validate_mask_of_failed_image_flagged(tmp_path):
    good_image(tmp_path / "a.nii.gz")
    good_image(tmp_path / "am.nii.gz")
    (tmp_path / "b.nii.gz").write_bytes(b"")
    good_image(tmp_path / "bm.nii.gz")
    man = write_manifest(
        tmp_path,
        [
            "s1,t,,image,T1w,,,a.nii.gz",
            "s1,t,,mask,T1w,gt,binary,am.nii.gz",
            "s2,t,,image,T1w,,,b.nii.gz",
            "s2,t,,mask,T1w,gt,binary,bm.nii.gz",
        ],
    )
    df = validate(man, on_file_error="flag")
    assert df["problem"].tolist()[:3] == ["", "", "m.csv row 4: 'b.nii.gz': empty file (0 bytes)"]
    assert one_line(df["problem"].iloc[3]) == (
        "m.csv row 5: 'bm.nii.gz': its image (row 4) failed: empty file (0 bytes)"
    )
    assert df["shape"].tolist()[:2] == [(8, 8, 8), (8, 8, 8)]
    assert df["shape"].iloc[3] is None


def test_validate_flag_still_raises_manifest_problems_at_once(tmp_path):
    (tmp_path / "bad.nii.gz").write_bytes(b"")
    man = write_manifest(
        tmp_path,
        ["s1,t,A,image,T1w,,,bad.nii.gz", "s1,t,B,image,T1w,,,bad.nii.gz", "s1,t,,mask,T1w,gt,wat,bad.nii.gz"],
    )
    with pytest.raises(ManifestError) as ei:
        validate(man, on_file_error="flag")
    probs = ei.value.problems
    assert [p.split(":")[0] for p in probs] == ["m.csv row 2", "m.csv row 3", "m.csv row 4"]
    assert not any("empty file" in p for p in probs)  # files are not opened before the manifest is fine
    assert all("\n" not in p for p in probs)


def test_validate_bad_on_file_error_rejected(tmp_path):
    with pytest.raises(ValueError, match="'raise' or 'flag'"):
        validate(write_manifest(tmp_path, ["s1,t,,image,T1w,,,a.nii"]), on_file_error="ignore")


def test_validate_reads_each_header_once(tmp_path, monkeypatch):
    import nibabel as nib

    good_image(tmp_path / "a.nii.gz")
    good_image(tmp_path / "am.nii.gz")
    calls = []
    real = nib.load
    monkeypatch.setattr(nib, "load", lambda f, *a, **k: calls.append(f) or real(f, *a, **k))
    validate(
        write_manifest(tmp_path, ["s1,t,,image,T1w,,,a.nii.gz", "s1,t,,mask,T1w,gt,binary,am.nii.gz"]),
        on_file_error="flag",
    )
    assert sorted(os.path.basename(c) for c in calls) == ["a.nii.gz", "am.nii.gz"]


def test_check_file_good_file_returns_header():
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        fc = check_file(good_image(os.path.join(d, "a.nii")))
    assert fc.problem == "" and fc.warning == "" and fc.shape == (8, 8, 8) and fc.dtype == "int16"
    assert fc.affine.shape == (4, 4)


def test_validate_flagged_frame_raises_when_revalidated_strictly(tmp_path):
    (tmp_path / "e.nii").write_bytes(b"")
    df = validate(write_manifest(tmp_path, ["s1,t,,image,T1w,,,e.nii"]), on_file_error="flag")
    assert validate(df, on_file_error="flag") is df
    with pytest.raises(ManifestError, match=r"m.csv row 2: 'e.nii': empty file \(0 bytes\)"):
        validate(df)
