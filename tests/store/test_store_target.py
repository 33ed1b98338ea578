"""Where ingest may write: a new folder, an empty one, or an existing thaldask store.

Anything else (the cohort's own folder of NIfTIs and manifest, a plain Zarr group, a
file) is refused with NotAStoreError, and every byte in it stays as it was, with or
without --overwrite.
"""

import hashlib
import os

import numpy as np
import pytest
import zarr
from click.testing import CliRunner

from thaldask.errors import NotAStoreError, StoreError
from thaldask.store import ingest, open_store
from thaldask.store.create import check_store_target, create_store, is_store


def _checksums(folder) -> dict[str, str]:
    """sha256 of every file under ``folder`` (relative path -> digest), and the folder list."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(folder):
        for d in dirnames:
            out[os.path.relpath(os.path.join(dirpath, d), folder) + "/"] = "dir"
        for f in filenames:
            p = os.path.join(dirpath, f)
            with open(p, "rb") as fh:
                out[os.path.relpath(p, folder)] = hashlib.sha256(fh.read()).hexdigest()
    return out


@pytest.mark.parametrize("overwrite", [False, True])
def test_ingest_into_the_cohort_folder_fails_and_leaves_every_file_identical(small_cohort, overwrite):
    folder = os.path.dirname(small_cohort)  # manifest.csv and the NIfTIs it lists
    before = _checksums(folder)
    assert len(before) == 7
    with pytest.raises(NotAStoreError) as info:
        ingest(small_cohort, folder, progress=False, overwrite=overwrite)
    msg = str(info.value)
    assert msg == (
        f"'{folder}' exists and is not a thaldask store (holds 7 files, e.g. manifest.csv); "
        "choose a new folder"
    )
    assert isinstance(info.value, FileExistsError) and isinstance(info.value, StoreError)
    assert _checksums(folder) == before


def test_ingest_cli_with_store_dot_in_the_cohort_folder_deletes_nothing(small_cohort, monkeypatch):
    from thaldask.cli import main

    folder = os.path.dirname(small_cohort)
    os.makedirs(os.path.join(folder, "derivatives"))
    before = _checksums(folder)
    monkeypatch.chdir(folder)
    for extra in ([], ["--overwrite"]):
        res = CliRunner().invoke(main, ["ingest", "manifest.csv", "--store", ".", "--no-progress",
                                        *extra])
        assert res.exit_code != 0
        assert "is not a thaldask store (holds 7 files and 1 folder, e.g. manifest.csv)" in (
            res.output + str(res.exception or "")
        )
        assert _checksums(folder) == before


def test_ingest_into_a_new_folder_and_into_an_empty_folder_works(small_cohort, tmp_path):
    new = str(tmp_path / "new" / "cohort.zarr")
    assert (ingest(small_cohort, new, progress=False).status == "written").all()
    empty = tmp_path / "empty"
    empty.mkdir()
    assert (ingest(small_cohort, str(empty), progress=False).status == "written").all()
    for p in (new, str(empty)):
        st = open_store(p)
        assert st.n_scans == 3 and is_store(p)
        np.testing.assert_array_equal(
            open_store(new).load_mask("gt", "T1w", 2), st.load_mask("gt", "T1w", 2)
        )


def test_reingest_into_an_existing_store_works_and_overwrite_keeps_every_scan(small_cohort, tmp_path):
    store = str(tmp_path / "c.zarr")
    ingest(small_cohort, store, progress=False)
    assert check_store_target(store) is True
    assert (ingest(small_cohort, store, progress=False).status == "skipped").all()
    rep = ingest(small_cohort, store, progress=False, overwrite=True)
    assert (rep.status == "skipped").all()
    assert open_store(store).n_scans == 3


def test_a_plain_zarr_group_or_a_file_is_not_a_store_and_stays(small_cohort, tmp_path):
    plain = tmp_path / "plain.zarr"
    zarr.open_group(str(plain), mode="w", attributes={"owner": "someone else"})
    zarr.create_array(str(plain), name="data", shape=(3,), dtype="int8")
    before = _checksums(plain)
    with pytest.raises(NotAStoreError, match="a Zarr group without thaldask's marker"):
        ingest(small_cohort, str(plain), progress=False, overwrite=True)
    assert _checksums(plain) == before
    with pytest.raises(NotAStoreError, match="is a file, not a thaldask store"):
        ingest(small_cohort, small_cohort, progress=False, overwrite=True)
    assert _checksums(os.path.dirname(small_cohort))["manifest.csv"]


def test_create_store_never_replaces_an_existing_store(small_cohort, tmp_path):
    from thaldask.errors import StoreConflictError

    store = str(tmp_path / "c.zarr")
    ingest(small_cohort, store, progress=False)
    st = open_store(store)
    kw = {"scans": st.scans, "grid_shape": st.grid_shape, "scan_meta": {},
          "reference": st.reference, "orig_axcodes": st.orig_axcodes}
    with pytest.raises(StoreConflictError, match="already a thaldask store"):
        create_store(store, **kw)
    assert open_store(store).has_mask("gt", "T1w").all()
