"""from-bids writes atomically, never replaces a file it did not write, skips undecodable
names; manifest check lists bad files one line each."""

import os

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from helpers.cohort import digests, good_image, one_line, raw_nifti, set_pixdim, write_manifest

from thaldask._shared.paths import written_by_thaldask
from thaldask.cli import main
from thaldask.cohort.bids import manifest_from_bids
from thaldask.cohort.bids import write_manifest as write_bids_manifest
from thaldask.errors import OutputExistsError, ThaldaskWarning


def _dataset(root):
    anat = root / "sub-01" / "anat"
    anat.mkdir(parents=True)
    good_image(anat / "sub-01_T1w.nii.gz")
    seg = np.zeros((8, 8, 8), np.uint8)
    seg[1, 1, 1], seg[6, 1, 1] = 10, 49
    d = root / "derivatives" / "freesurfer" / "sub-01" / "anat"
    d.mkdir(parents=True)
    nib.save(nib.Nifti1Image(seg, np.eye(4)), str(d / "sub-01_desc-aseg_dseg.nii.gz"))
    return root


def test_manifest_from_bids_non_utf8_names_warned_and_skipped(tmp_path):
    root = _dataset(tmp_path / "ds")
    img = open(root / "sub-01" / "anat" / "sub-01_T1w.nii.gz", "rb").read()
    bad_img = os.fsencode(str(root / "sub-01" / "anat")) + b"/sub-01_acq-\xff_T1w.nii.gz"
    bad_seg = os.fsencode(str(root / "derivatives" / "freesurfer" / "sub-01" / "anat")) + b"/sub-01_desc-\xe9_dseg.nii.gz"
    for p in (bad_img, bad_seg):
        with open(p, "wb") as f:
            f.write(img)
    with pytest.warns(ThaldaskWarning) as rec:
        df = manifest_from_bids(root)
    msgs = [str(w.message) for w in rec]
    assert any(m.endswith("sub-01_acq-\\xff_T1w.nii.gz: file name is not valid UTF-8; skipped (rename it)") for m in msgs)
    assert any("sub-01_desc-\\xe9_dseg.nii.gz: file name is not valid UTF-8" in m for m in msgs)
    assert all("\n" not in m for m in msgs)
    assert df["path"].map(os.path.basename).tolist() == ["sub-01_T1w.nii.gz", "sub-01_desc-aseg_dseg.nii.gz"]
    out = write_bids_manifest(df, tmp_path / "manifest.csv")  # no UnicodeEncodeError
    assert open(out).readline().startswith("subject,timepoint") and written_by_thaldask(out)


def test_write_manifest_refuses_foreign_file(tmp_path):
    df = manifest_from_bids(_dataset(tmp_path / "ds"))
    out = tmp_path / "manifest.csv"
    out.write_text("my own notes\n")
    with pytest.raises(OutputExistsError) as ei:
        write_bids_manifest(df, out)
    assert one_line(str(ei.value)).startswith(f"{out}: exists and was not written by thaldask")
    assert out.read_text() == "my own notes\n"
    write_bids_manifest(df, out, overwrite=True)
    assert out.read_text().startswith("subject,timepoint")
    write_bids_manifest(df, out)  # its own manifest is replaced without asking
    out.write_text(out.read_text() + "edited,by,hand\n")
    with pytest.raises(OutputExistsError):  # ... but not once the user edited it
        write_bids_manifest(df, out)


def test_from_bids_cli_refuses_foreign_file_unless_overwrite(tmp_path):
    root = _dataset(tmp_path / "ds")
    out = tmp_path / "manifest.csv"
    out.write_text("subject,kind\nmine,keep\n")
    before = digests(tmp_path)
    res = CliRunner().invoke(main, ["manifest", "from-bids", str(root), "--out", str(out)])
    assert res.exit_code == 2, res.output
    assert "exists and was not written by thaldask; pass --overwrite" in res.output
    assert digests(tmp_path) == before
    res = CliRunner().invoke(main, ["manifest", "from-bids", str(root), "--out", str(out), "--overwrite"])
    assert res.exit_code == 0, res.output
    assert "1 images, 1 masks, 1 scans" in res.output
    res = CliRunner().invoke(main, ["manifest", "from-bids", str(root), "--out", str(out)])
    assert res.exit_code == 0, res.output  # re-running over its own manifest is fine


def test_write_manifest_interrupted_leaves_old_file_intact(tmp_path, monkeypatch):
    df = manifest_from_bids(_dataset(tmp_path / "ds"))
    out = tmp_path / "m" / "manifest.csv"
    write_bids_manifest(df, out)
    old = out.read_bytes()

    def half_then_fail(self, f, **kwargs):
        f.write("subject,timepoint,site,kind,con")
        raise KeyboardInterrupt

    monkeypatch.setattr(pd.DataFrame, "to_csv", half_then_fail)
    with pytest.raises(KeyboardInterrupt):
        write_bids_manifest(df, out)
    assert out.read_bytes() == old
    # no temporary file left behind (the ledger records what thaldask wrote)
    assert sorted(os.listdir(out.parent)) == [".thaldask-outputs.json", "manifest.csv"]


def test_manifest_written_by_from_bids_reads_back(tmp_path):
    from thaldask.cohort import validate

    df = manifest_from_bids(_dataset(tmp_path / "ds"))
    out = write_bids_manifest(df, tmp_path / "manifest.csv")
    v = validate(out, on_file_error="flag")
    assert v["row"].tolist() == [2, 3]  # the header is row 1
    assert v["problem"].tolist() == ["", ""]


def test_manifest_check_cli_lists_file_problems_and_warnings(tmp_path):
    good_image(tmp_path / "a.nii.gz")
    raw_nifti(tmp_path / "huge.nii", shape=(10000, 10000, 10000), n_data_bytes=0)

    def zero(h):
        set_pixdim(h, 1, 0.0)
        h["qform_code"] = 0
        h["sform_code"] = 0

    raw_nifti(tmp_path / "zero.nii", edit=zero)
    man = write_manifest(
        tmp_path,
        ["s1,t,,image,T1w,,,a.nii.gz", "s2,t,,image,T1w,,,huge.nii", "s3,t,,image,T1w,,,zero.nii"],
    )
    before = digests(tmp_path)
    res = CliRunner().invoke(main, ["manifest", "check", str(man)])
    assert res.exit_code == 2, res.output
    lines = res.output.splitlines()
    assert "thaldask: error: m.csv row 3: 'huge.nii': declares 10000x10000x10000 voxels (limit 2048 per axis)" in lines
    assert any(
        ln.startswith("thaldask: warning: m.csv row 4: 'zero.nii': voxel size (pixdim) is 0") for ln in lines
    )
    assert lines[-1] == f"{man}: 3 files, 3 scans: 1 file(s) with problems"
    assert digests(tmp_path) == before


def test_manifest_check_cli_warning_only_exits_zero(tmp_path):
    def zero(h):
        set_pixdim(h, 2, 0.0)
        h["qform_code"] = 0
        h["sform_code"] = 0

    raw_nifti(tmp_path / "zero.nii", edit=zero)
    man = write_manifest(tmp_path, ["s1,t,,image,T1w,,,zero.nii"])
    res = CliRunner().invoke(main, ["manifest", "check", str(man)])
    assert res.exit_code == 0, res.output
    assert "thaldask: warning: m.csv row 2: 'zero.nii': voxel size (pixdim) is 0" in res.output
    assert res.output.splitlines()[-1].endswith("1 files, 1 scans: ok")


def test_manifest_check_cli_field_count_error_is_one_line(tmp_path):
    man = tmp_path / "manifest.csv"
    man.write_text("subject,timepoint,site,kind,contrast,method,labels,path\ns1,t,,image,T1w,,,a,b.nii\n")
    res = CliRunner().invoke(main, ["manifest", "check", str(man)])
    assert res.exit_code == 2
    assert res.output.strip() == (
        "thaldask: error: manifest.csv row 2: 9 fields but the header has 8 (an unquoted comma?)"
    )
