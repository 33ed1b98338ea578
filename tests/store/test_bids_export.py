"""Stored segmentations as BIDS derivatives: written on each scan's original grid with a
label table, dataset description and a sidecar naming the source image; read back by
``manifest from-bids`` into a store that holds the same masks; nothing of the user's
dataset (raw files, another tool's derivatives) is touched."""

import json
import os

import nibabel as nib
import numpy as np
import pytest
from click.testing import CliRunner
from helpers.cohort import digests
from helpers.files import write_nifti
from helpers.store import box_mask, make_affine

from thaldask.cli import main
from thaldask.cohort.bids import manifest_from_bids, write_manifest
from thaldask.errors import OutputExistsError
from thaldask.store import export_masks, ingest, open_store
from thaldask.store.bids_export import export_bids

SCANS = [("sub-01", "ses-01", "RAS", (20, 16, 12)), ("sub-01", "ses-02", "LAS", (20, 16, 12)),
         ("sub-02", None, "LIA", (18, 14, 16))]


def _dataset(root):
    rng = np.random.default_rng(2)
    for sub, ses, orient, shape in SCANS:
        aff = make_affine(orient, shape)
        d = os.path.join(root, sub, *([ses] if ses else []), "anat")
        stem = sub + (f"_{ses}" if ses else "")
        write_nifti(f"{d}/{stem}_T1w.nii.gz", rng.normal(100, 10, shape).astype(np.float32), aff,
                    makedirs=True)
        write_nifti(f"{d}/{stem}_FLAIR.nii.gz", rng.normal(80, 10, shape).astype(np.float32), aff)
        if ses == "ses-01":  # a rater's manual labels (FreeSurfer ids), the user's own
            m = os.path.join(root, "derivatives", "manual", sub, ses, "anat")
            write_nifti(f"{m}/{stem}_space-T1w_dseg.nii.gz", box_mask(shape), aff, makedirs=True)
    with open(os.path.join(root, "participants.tsv"), "w") as f:
        f.write("participant_id\tsite\nsub-01\tA\nsub-02\tB\n")


def _store(tmp_path):
    root = str(tmp_path / "ds")
    _dataset(root)
    man = write_manifest(manifest_from_bids(root, labels={"manual": "freesurfer"}),
                         tmp_path / "manifest.csv")
    store = str(tmp_path / "c.zarr")
    assert (ingest(man, store, progress=False).status == "written").all()
    st = open_store(store)
    for i in range(st.n_scans):  # a method's masks on T1w and FLAIR, as a segmenter writes them
        shape = tuple(int(v) for v in st.shapes[i])
        sides = np.zeros(shape, np.uint8)
        sides[2:8, 3:12, 2:9], sides[11:17, 3:12, 2:9] = 2, 1
        st.write_mask("thal-net", "T1w", i, np.roll(sides, i, axis=1))
        st.write_mask("thal-net", "FLAIR", i, np.roll(sides, -i, axis=2))
    for c in ("T1w", "FLAIR"):  # the record an external tool's run leaves (segment.tool_stage)
        st.zarr_array(f"masks/thal-net/{c}", mode="r+").attrs.update({"thaldask_tool": {
            "tool": "samseg", "version": "0.4a0", "runtime": "apptainer", "image": "samseg.sif",
            "command": ["run_samseg", "-i", "{T1w}", "-o", "{out}", "--threads", "2"]}})
    return root, store


def test_export_bids_round_trips_through_manifest_from_bids(tmp_path):
    root, store = _store(tmp_path)
    before = digests(root)
    # the user's own derivatives/manual is not thaldask's: the export of every method
    # (gt goes to derivatives/manual) is refused before anything is written
    res = CliRunner().invoke(main, ["export", store, "--bids", root])
    assert res.exit_code != 0
    assert "derivatives/manual: exists and was not written by thaldask" in res.output
    assert digests(root) == before

    res = CliRunner().invoke(main, ["export", store, "--bids", root, "--method", "thal-net"])
    assert res.exit_code == 0, res.output
    assert "6 masks written" in res.output
    after = digests(root)
    assert {k: v for k, v in after.items() if k in before} == before  # nothing replaced
    new = sorted(os.path.relpath(p, root) for p in set(after) - set(before))
    base = "derivatives/thal-net"
    assert f"{base}/sub-01/ses-01/anat/sub-01_ses-01_space-T1w_desc-thalamus_dseg.nii.gz" in new
    assert f"{base}/sub-02/anat/sub-02_space-FLAIR_desc-thalamus_dseg.json" in new
    assert f"{base}/desc-thalamus_dseg.tsv" in new and f"{base}/dataset_description.json" in new
    assert all(p.startswith(base + "/") for p in new)

    desc = json.load(open(os.path.join(root, base, "dataset_description.json")))
    assert desc["DatasetType"] == "derivative" and desc["BIDSVersion"]
    tool = desc["GeneratedBy"][0]
    assert tool["Name"] == "samseg" and tool["Version"] == "0.4a0"
    assert tool["Container"] == {"Type": "apptainer", "Tag": "samseg.sif"}
    assert "run_samseg -i" in tool["Description"]
    assert desc["GeneratedBy"][1]["Name"] == "thaldask"
    side = json.load(open(os.path.join(root, base, "sub-01/ses-02/anat",
                                       "sub-01_ses-02_space-FLAIR_desc-thalamus_dseg.json")))
    assert side["Sources"] == ["bids:raw:sub-01/ses-02/anat/sub-01_ses-02_FLAIR.nii.gz"]
    assert side["thaldask"]["subject"] == "sub-01" and side["thaldask"]["timepoint"] == "ses-02"
    # on the source image's own grid
    for sub, ses, _, _ in SCANS:
        stem = sub + (f"_{ses}" if ses else "")
        d = os.path.join(sub, *([ses] if ses else []), "anat")
        src = nib.load(os.path.join(root, d, f"{stem}_T1w.nii.gz"))
        out = nib.load(os.path.join(root, base, d, f"{stem}_space-T1w_desc-thalamus_dseg.nii.gz"))
        assert out.shape == src.shape and out.get_data_dtype() == np.uint8
        np.testing.assert_allclose(out.affine, src.affine)
        assert set(np.unique(np.asarray(out.dataobj))) == {0, 1, 2}

    # read back: the same masks, contrasts and sides in a new store
    df = manifest_from_bids(root, labels={"manual": "freesurfer"})
    got = df[df.method == "thal-net"]
    assert len(got) == 6 and set(got.labels) == {"L:1;R:2"}
    assert sorted(got.contrast) == ["FLAIR"] * 3 + ["T1w"] * 3
    man2 = write_manifest(df, tmp_path / "again.csv")
    store2 = str(tmp_path / "again.zarr")
    rep = ingest(man2, store2, progress=False)
    assert (rep.status == "written").all(), rep.reason.tolist()
    a, b = open_store(store), open_store(store2)
    assert a.scans[["subject", "timepoint"]].equals(b.scans[["subject", "timepoint"]])
    for c in ("T1w", "FLAIR"):
        for i in range(a.n_scans):
            np.testing.assert_array_equal(a.load_mask("thal-net", c, i), b.load_mask("thal-net", c, i))

    # a re-export replaces its own files; a file the user put there is refused
    res = CliRunner().invoke(main, ["export", store, "--bids", root, "--method", "thal-net"])
    assert res.exit_code == 0, res.output
    mine = os.path.join(root, base, "sub-02/anat/sub-02_space-T1w_desc-thalamus_dseg.json")
    with open(mine, "w") as f:
        f.write('{"edited": "by hand"}\n')
    with pytest.raises(OutputExistsError, match="was not written by thaldask"):
        export_bids(store, root, methods=["thal-net"])
    assert open(mine).read() == '{"edited": "by hand"}\n'


def test_export_bids_into_a_new_folder_includes_ground_truth_as_manual(tmp_path):
    _, store = _store(tmp_path)
    out = tmp_path / "shared"
    paths = export_bids(store, out)
    assert len(paths) == 7  # 6 of the method, 1 manual
    df = manifest_from_bids_with_images(tmp_path, out)
    assert "gt" in set(df.method)


def manifest_from_bids_with_images(tmp_path, out):
    """manifest from-bids needs raw images beside the derivatives: link the raw folders."""
    root = tmp_path / "ds"
    for sub in ("sub-01", "sub-02"):
        os.symlink(root / sub, out / sub)
    return manifest_from_bids(out)


def test_export_masks_refuses_a_file_it_did_not_write(tmp_path):
    _, store = _store(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    theirs = out / "sub-02_baseline_thal-net_T1w.nii.gz"
    theirs.write_bytes(b"a rater's own file")
    with pytest.raises(OutputExistsError):
        export_masks(store, "thal-net", "T1w", out)
    assert theirs.read_bytes() == b"a rater's own file"
    assert sorted(os.listdir(out)) == [theirs.name]  # nothing else written either
    assert len(export_masks(store, "thal-net", "T1w", out, overwrite=True)) == 3
