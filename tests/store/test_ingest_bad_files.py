"""One bad file fails only its own row: the rest of the cohort is ingested, the padded grid
is decided by the rows that passed, and nothing in the input folder changes."""

from __future__ import annotations

import os

import nibabel as nib
import numpy as np
from click.testing import CliRunner
from helpers.cohort import digests
from helpers.files import HEADER
from helpers.store import small_cohort_files

from thaldask.cli import main
from thaldask.store import ingest, open_store


def _huge_header(path):
    """A .nii whose header declares 10000^3 voxels (and holds almost no data)."""
    hdr = nib.Nifti1Header()
    hdr.set_data_shape((10000, 10000, 10000))
    hdr.set_data_dtype(np.uint8)
    hdr.set_qform(np.eye(4), code=1)
    hdr.set_sform(np.eye(4), code=1)
    with open(path, "wb") as f:
        f.write(hdr.binaryblock + b"\0" * 4 + b"\0" * 64)


def _messy_cohort(tmp_path):
    man = small_cohort_files(tmp_path)
    folder = os.path.dirname(man)
    _huge_header(os.path.join(folder, "huge.nii"))
    open(os.path.join(folder, "empty.nii.gz"), "wb").close()
    with open(man, "a") as f:
        f.write("sub-03,baseline,A,image,T1w,,,huge.nii\n")
        f.write("sub-04,baseline,A,image,T1w,,,missing.nii.gz\n")
        f.write("sub-05,baseline,A,image,T1w,,,empty.nii.gz\n")
        f.write("sub-05,baseline,A,mask,T1w,gt,freesurfer,empty.nii.gz\n")
    return man, folder


def test_ingest_bad_files_fail_their_rows_and_the_rest_is_ingested(tmp_path):
    man, folder = _messy_cohort(tmp_path)
    before = digests(folder)
    store = str(tmp_path / "c.zarr")
    rep = ingest(man, store, progress=False)
    failed = rep[rep.status == "failed"].set_index("path")
    assert sorted(failed.index) == ["empty.nii.gz", "empty.nii.gz", "huge.nii", "missing.nii.gz"]
    assert "declares 10000x10000x10000 voxels" in failed.loc["huge.nii", "reason"]
    assert failed.loc["missing.nii.gz", "reason"].startswith("file not found")
    assert all("\n" not in r for r in rep.reason.fillna(""))
    ok = rep[rep.status != "failed"]
    assert (ok.status == "written").all() and len(ok) == 6  # 3 images + 3 gt masks
    st = open_store(store)
    assert st.n_scans == 3
    assert max(st.grid_shape) < 100  # the bad header did not decide the padded grid
    assert st.has_mask("gt", "T1w").all()
    assert digests(folder) == before
    report = open(os.path.join(store, "ingest_report.csv")).read()
    assert "huge.nii" in report and "missing.nii.gz" in report


def test_ingest_cli_bad_files_exit_1_with_one_line_per_row(tmp_path):
    man, folder = _messy_cohort(tmp_path)
    before = digests(folder)
    res = CliRunner().invoke(main, ["ingest", man, "--store", str(tmp_path / "c.zarr"), "--no-progress"])
    assert res.exit_code == 1, res.output
    lines = [x for x in res.output.splitlines() if x.startswith("thaldask: row")]
    assert len(lines) == 4
    assert any("row 8: huge.nii: declares 10000x10000x10000 voxels" in x for x in lines)
    assert "6 written, 0 skipped, 4 failed" in res.output
    assert digests(folder) == before


def test_ingest_only_bad_files_creates_no_store(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "m.csv").write_text(HEADER + "\nsub-01,baseline,A,image,T1w,,,missing.nii.gz\n")
    rep = ingest(str(folder / "m.csv"), str(tmp_path / "c.zarr"), progress=False)
    assert list(rep.status) == ["failed"]
    assert not (tmp_path / "c.zarr").exists()


def test_reingest_without_clinical_keeps_the_stored_clinical_table(tmp_path):
    man = small_cohort_files(tmp_path)
    clin = tmp_path / "clinical.csv"
    clin.write_text("subject,timepoint,age\nsub-01,baseline,40\nsub-01,m12,41\nsub-02,baseline,50\n")
    store = str(tmp_path / "c.zarr")
    ingest(man, store, progress=False, clinical=str(clin))
    ingest(man, store, progress=False)
    ingest(man, store, progress=False, overwrite=True)
    assert list(open_store(store).clinical["age"]) == [40, 41, 50]


def test_odd_but_usable_images_are_stored_with_a_warning_naming_the_file(tmp_path, capsys):
    import nibabel as nib

    man = small_cohort_files(tmp_path)
    folder = os.path.dirname(man)
    ref = nib.load(os.path.join(folder, "sub-01_baseline_T1w.nii.gz"))
    data = np.asarray(ref.dataobj).astype(np.float32)
    data[0, 0, 0] = np.nan
    nib.save(nib.Nifti1Image(data, ref.affine), os.path.join(folder, "sub-01_baseline_T1w.nii.gz"))
    zero = nib.load(os.path.join(folder, "sub-02_baseline_T1w.nii.gz"))
    nib.save(nib.Nifti1Image(np.zeros(zero.shape, np.int16), zero.affine),
             os.path.join(folder, "sub-02_baseline_T1w.nii.gz"))
    rep = ingest(man, str(tmp_path / "c.zarr"), progress=False)
    assert (rep.status == "written").all()
    err = capsys.readouterr().err.splitlines()
    assert any("row 2: 'sub-01_baseline_T1w.nii.gz': 1 non-finite voxels set to 0" in x for x in err)
    assert any("'sub-02_baseline_T1w.nii.gz': image is all zeros" in x for x in err)
