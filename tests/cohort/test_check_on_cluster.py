"""A manifest's files are checked on the cluster's workers, batch by batch, with the very
same outcome per row as in this process: problems, warnings, headers, and the ingest plan
built from them (the reference header is read once, during the check)."""

import gzip

import dask
import nibabel as nib
import numpy as np
import pytest
from distributed import Client, LocalCluster, get_task_stream
from helpers.cohort import digests, good_image, one_line, raw_nifti, write_manifest

import thaldask.config
from thaldask.cohort import check_file, validate
from thaldask.store.ingest_plan import plan_ingest
from thaldask.store.nifti import header_block, header_bytes

pytestmark = pytest.mark.slow


def _cohort(tmp_path):
    rows = []
    for i in range(7):
        good_image(tmp_path / f"s{i}.nii.gz", shape=(8, 8, 6 + i))
        rows.append(f"s{i},t,,image,T1w,,,s{i}.nii.gz")
    # a FLAIR on another grid, a missing file, a truncated one, a mask of a missing image
    good_image(tmp_path / "f0.nii.gz", shape=(6, 6, 6))
    rows.append("s0,t,,image,FLAIR,,,f0.nii.gz")
    rows.append("s7,t,,image,T1w,,,gone.nii.gz")
    raw = tmp_path / "cut.nii"
    raw_nifti(raw, shape=(8, 8, 8))
    raw.write_bytes(raw.read_bytes()[:400])
    rows.append("s8,t,,image,T1w,,,cut.nii")
    with gzip.open(tmp_path / "m7.nii.gz", "wb") as f:
        f.write((tmp_path / "s1.nii.gz").read_bytes())  # doubly compressed: unreadable header
    rows.append("s7,t,,mask,T1w,gt,binary,m7.nii.gz")
    good_image(tmp_path / "m0.nii.gz", shape=(8, 8, 6), data=np.ones((8, 8, 6), np.uint8))
    rows.append("s0,t,,mask,T1w,gt,binary,m0.nii.gz")
    return write_manifest(tmp_path, rows)


def _same(a, b):
    assert list(a["problem"]) == list(b["problem"])
    assert list(a["warning"]) == list(b["warning"])
    assert list(a["shape"]) == list(b["shape"])
    assert list(a["dtype"]) == list(b["dtype"])
    for x, y in zip(a["affine"], b["affine"], strict=True):
        assert (x is None and y is None) or np.array_equal(x, y)
    assert list(a["header"]) == list(b["header"])
    kept = [h for h, k in zip(a["header"], a["kind"], strict=True) if k == "image"]
    assert all(h is None for h, k in zip(a["header"], a["kind"], strict=True) if k == "mask")
    assert sum(h is not None for h in kept) == 8  # every readable image's header, once


def test_files_checked_on_workers_match_the_checks_in_this_process(tmp_path):
    man = _cohort(tmp_path)
    before = digests(tmp_path)
    here = validate(man, on_file_error="flag")
    thaldask.config.get("cohort.files-per-check-task")
    with dask.config.set({"thaldask.cohort.files-per-check-task": 3}), LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0"
    ) as lc, Client(lc) as client:
        with get_task_stream(client) as ts:
            there = validate(man, on_file_error="flag", client=client)
        keys = {r["key"] for r in ts.data}
    assert digests(tmp_path) == before  # checking never changes an input
    # 11 files in tasks of 3: four tasks, each on a worker
    assert len([k for k in keys if "check-files" in str(k)]) == 4, keys
    _same(here, there)
    bad = [one_line(p) for p in there["problem"] if p]
    assert len(bad) == 3  # the missing, the truncated file and the unreadable mask
    assert any("gone.nii.gz" in p and "file not found" in p for p in bad)
    assert any("cut.nii" in p for p in bad)
    # the plan is the same whether the reference headers came from the check or are re-read
    good = there[there["problem"] == ""].copy()
    good.attrs.update(there.attrs)
    plan = plan_ingest(good)
    reread = plan_ingest(good.drop(columns=["header"]))
    for key, arr in plan.scan_meta.items():
        np.testing.assert_array_equal(arr, reread.scan_meta[key], err_msg=key)
    assert plan.specs == reread.specs and plan.grid_shape == reread.grid_shape == (8, 8, 12)
    assert [len(sp.entries) for sp in plan.specs] == [3, 1, 1, 1, 1, 1, 1]
    assert plan.image_dtypes == reread.image_dtypes


@pytest.mark.parametrize("suffix,cls", [(".nii.gz", nib.Nifti1Image), (".nii", nib.Nifti2Image),
                                        (".mgz", nib.MGHImage)])
def test_a_kept_header_gives_the_bytes_a_second_read_of_the_file_gives(tmp_path, suffix, cls):
    aff = np.array([[0, 0, -1.2, 90], [1.1, 0, 0, -100], [0, 1.0, 0, -80], [0, 0, 0, 1]])
    img = cls(np.arange(60, dtype=np.int16).reshape(3, 4, 5), aff)
    if cls is not nib.MGHImage:
        img.header["descrip"] = b"patient name"  # scrubbed either way
    f = str(tmp_path / f"x{suffix}")
    nib.save(img, f)
    c = check_file(f, keep_header=True)
    assert c.problem == "" and c.header is not None
    assert header_block(c.header) == header_bytes(f)
    assert b"patient" not in header_block(c.header)[1]
    assert check_file(f).header is None  # kept only when asked
