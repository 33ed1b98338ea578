import os

import numpy as np
from helpers.files import write_nifti

from thaldask.cohort import validate
from thaldask.cohort.bids import manifest_from_bids, write_manifest


def _bids(root):
    img = np.zeros((6, 5, 4), np.float32)
    for ses in ("01", "02"):
        a = f"{root}/sub-01/ses-{ses}/anat"
        write_nifti(f"{a}/sub-01_ses-{ses}_T1w.nii.gz", img, makedirs=True)
        write_nifti(f"{a}/sub-01_ses-{ses}_FLAIR.nii.gz", img, makedirs=True)
        write_nifti(f"{a}/sub-01_ses-{ses}_R1map.nii.gz", img, makedirs=True)
    seg = np.zeros((6, 5, 4), np.uint8)
    seg[1, 1, 1], seg[4, 1, 1] = 10, 49
    d = f"{root}/derivatives/freesurfer/sub-01/ses-01/anat"
    write_nifti(f"{d}/sub-01_ses-01_space-T1w_desc-aseg_dseg.nii.gz", seg, makedirs=True)
    m = f"{root}/derivatives/manual/sub-01/ses-01/anat"
    write_nifti(f"{m}/sub-01_ses-01_space-FLAIR_desc-thalamus_dseg.nii.gz", (seg > 0).astype(np.uint8), makedirs=True)
    with open(f"{root}/derivatives/manual/desc-thalamus_dseg.tsv", "w") as f:
        f.write("index\tname\n1\tthalamus\n")
    o = f"{root}/derivatives/mindglide/sub-01/ses-02/anat"
    write_nifti(f"{o}/sub-01_ses-02_space-R1_dseg.nii.gz", seg.copy(), makedirs=True)
    with open(f"{root}/derivatives/mindglide/sub-01_ses-02_space-R1_dseg.tsv", "w") as f:
        pass
    with open(f"{root}/participants.tsv", "w") as f:
        f.write("participant_id\tsite\nsub-01\tBerlin\n")


def test_manifest_from_bids_finds_raw_and_derivatives(tmp_path):
    root = str(tmp_path / "ds")
    _bids(root)
    df = manifest_from_bids(root)
    img = df[df.kind == "image"]
    assert sorted(set(img.contrast)) == ["FLAIR", "R1", "T1w"]
    assert set(img.timepoint) == {"ses-01", "ses-02"}
    assert set(df.site) == {"Berlin"}
    masks = df[df.kind == "mask"].set_index("method")
    assert masks.loc["freesurfer", "contrast"] == "T1w" and masks.loc["freesurfer", "labels"] == "freesurfer"
    assert masks.loc["gt", "contrast"] == "FLAIR" and masks.loc["gt", "labels"] == "1"
    assert masks.loc["mindglide", "contrast"] == "R1"
    assert masks.loc["mindglide", "labels"] == "freesurfer"  # detected from its values 10/49
    out = write_manifest(df, tmp_path / "m" / "manifest.csv")
    v = validate(out)
    assert len(v) == len(df)
    assert not os.path.isabs(open(out).read().splitlines()[1].split(",")[-1])


def test_manifest_from_bids_cli_writes_file(tmp_path):
    from click.testing import CliRunner

    from thaldask.cli import main

    root = str(tmp_path / "ds")
    _bids(root)
    out = tmp_path / "manifest.csv"
    res = CliRunner().invoke(main, ["manifest", "from-bids", root, "--out", str(out), "--labels", "manual=binary"])
    assert res.exit_code == 0, res.output
    assert "6 images, 3 masks, 2 scans" in res.output
    assert "binary" in out.read_text()
