import os

import numpy as np
import pytest
from helpers.files import HEADER, write_nifti

from thaldask.cohort import read_manifest, scan_table, validate
from thaldask.errors import ManifestError


def _img(path, shape=(6, 5, 4)):
    write_nifti(path, np.zeros(shape, np.float32))


def _write(tmp_path, rows, sep=","):
    p = tmp_path / ("m.tsv" if sep == "\t" else "m.csv")
    p.write_text("\n".join([HEADER.replace(",", sep)] + [r.replace(",", sep) for r in rows]) + "\n")
    return p


def test_validate_good_manifest_returns_headers(tmp_path):
    _img(tmp_path / "a.nii.gz")
    _img(tmp_path / "am.nii.gz")
    p = _write(tmp_path, ["s1,baseline,X,image,T1w,,,a.nii.gz", "s1,baseline,X,mask,T1w,gt,binary,am.nii.gz"], sep="\t")
    df = validate(p)
    assert df["row"].tolist() == [2, 3]
    assert df["shape"].tolist() == [(6, 5, 4), (6, 5, 4)]
    assert os.path.isabs(df["file"][0])
    assert scan_table(df).to_dict("records") == [{"subject": "s1", "timepoint": "baseline", "site": "X"}]


def test_validate_many_problems_reported_at_once_with_rows(tmp_path):
    _img(tmp_path / "a.nii.gz")
    (tmp_path / "broken.nii.gz").write_bytes(b"not a nifti at all")
    p = _write(
        tmp_path,
        [
            "s1,baseline,X,image,T1w,,,a.nii.gz",            # 2 ok
            "s1,baseline,X,image,T1w,,,a.nii.gz",            # 3 duplicate of 2
            "s2,baseline,X,image,T1w,,,missing.nii.gz",      # 4 missing file
            "s1,baseline,X,mask,T1w,gt,nonsense,a.nii.gz",   # 5 unknown labels
            "s1,baseline,X,mask,FLAIR,gt,binary,a.nii.gz",   # 6 mask without image
            "s3,baseline,X,image,T1w,,,broken.nii.gz",       # 7 unreadable header
            "s4,baseline,X,scan,T1w,,,a.nii.gz",             # 8 bad kind
            "s5,baseline,X,image,T1w,,,a.txt",               # 9 unsupported type
        ],
    )
    with pytest.raises(ManifestError) as ei:
        validate(p)
    probs = ei.value.problems
    assert len(probs) == 7
    text = "\n".join(probs)
    for row, words in [(3, "duplicate of row 2"), (4, "file not found"), (5, "unknown label convention"),
                       (6, "mask without an image"), (7, "unreadable header"), (8, "kind 'scan'"),
                       (9, "unsupported file type")]:
        assert any(pr.startswith(f"m.csv row {row}:") and words in pr for pr in probs), (row, text)


def test_read_manifest_missing_column_raises(tmp_path):
    p = tmp_path / "m.csv"
    p.write_text("subject,kind,path\ns1,image,a.nii\n")
    with pytest.raises(ManifestError, match="timepoint"):
        read_manifest(p)


def test_validate_mindglide_without_ids_rejected_with_ids_accepted(tmp_path):
    _img(tmp_path / "a.nii.gz")
    p = _write(tmp_path, ["s1,t,,image,T1w,,,a.nii.gz", "s1,t,,mask,T1w,mindglide,mindglide,a.nii.gz"])
    with pytest.raises(ManifestError, match="explicit ids"):
        validate(p)
    p = _write(tmp_path, ["s1,t,,image,T1w,,,a.nii.gz", "s1,t,,mask,T1w,mindglide,mindglide:L:5;R:6,a.nii.gz"])
    assert len(validate(p)) == 2
