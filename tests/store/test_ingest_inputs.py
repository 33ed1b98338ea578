"""Orientation, resampling, privacy and per-scan failures of ingest."""

import gzip
import os

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from helpers.store import box_mask, make_affine, make_cohort, write_nifti
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as hs

from thaldask.store import export_masks, ingest, open_store


@pytest.mark.parametrize("orient", ["RAS", "LAS", "LIA", "oblique"])
def test_export_orientation_roundtrip_is_bit_exact(orient, tmp_path):
    man = make_cohort(tmp_path / "in", [{"subject": "s1", "timepoint": "baseline", "orient": orient,
                                          "shape": (19, 15, 13)}])
    store = str(tmp_path / "c.zarr")
    rep = ingest(man, store, progress=False)
    assert (rep.status == "written").all(), rep.reason.tolist()
    st = open_store(store)
    assert st.reference == ["T1w"]
    # stored voxels are a RAS permutation/flip of the file's
    src = nib.load(tmp_path / "in" / "s1_baseline_T1w.nii.gz")
    assert "".join(nib.aff2axcodes(st.affines[0])) == "RAS"
    np.testing.assert_array_equal(
        np.sort(st.load_image("T1w", 0).ravel()), np.sort(src.get_fdata(dtype=np.float32).ravel())
    )
    (p,) = export_masks(store, "gt", "T1w", tmp_path / "out", labels="freesurfer")
    orig = nib.load(tmp_path / "in" / "s1_baseline_gt.nii.gz")
    out = nib.load(p)
    assert out.shape == orig.shape
    np.testing.assert_array_equal(np.asarray(out.dataobj), np.asarray(orig.dataobj))
    np.testing.assert_array_equal(out.affine, orig.affine)
    assert out.header.get_best_affine().tobytes() == orig.header.get_best_affine().tobytes()


def test_export_mgz_input_keeps_grid_and_labels(tmp_path):
    man = make_cohort(tmp_path / "in", [{"subject": "s1", "timepoint": "baseline", "orient": "LIA",
                                          "shape": (16, 14, 12), "fmt": "mgz"}])
    store = str(tmp_path / "c.zarr")
    rep = ingest(man, store, progress=False)
    assert (rep.status == "written").all(), rep.reason.tolist()
    (p,) = export_masks(store, "gt", "T1w", tmp_path / "out", labels="freesurfer")
    assert p.endswith("s1_baseline_gt_T1w.mgz")
    orig = nib.load(tmp_path / "in" / "s1_baseline_gt.mgz")
    out = nib.load(p)
    assert isinstance(out, nib.MGHImage)
    np.testing.assert_array_equal(np.asarray(out.dataobj), np.asarray(orig.dataobj))
    assert out.affine.tobytes() == orig.affine.tobytes()


def test_ingest_private_header_fields_not_stored(small_cohort, tmp_path):
    store = str(tmp_path / "c.zarr")
    ingest(small_cohort, store, progress=False)
    blob = b""
    for dirpath, _, files in os.walk(store):
        for f in files:
            with open(os.path.join(dirpath, f), "rb") as fh:
                blob += fh.read()
    import zarr

    hdr = np.asarray(zarr.open_array(store + "/scan/header")[...]).tobytes()
    assert b"John Doe" not in hdr and b"John Doe" not in blob
    st = open_store(store)
    fmt, hb = st.orig_header(0)
    h = nib.Nifti1Header(binaryblock=hb)
    for field in ("descrip", "db_name", "aux_file", "intent_name"):
        assert h[field].item() == b""


def _conformed_mask(tmp_path, image_aff, image_shape, *, shift=(0.0, 0.0, 0.0)):
    """FreeSurfer-like 256^3 LIA 1 mm aseg with thalamus boxes at the image's box world coords."""
    conf = np.array([[-1.0, 0, 0, 128], [0, 0, 1, -128], [0, -1, 0, 128], [0, 0, 0, 1]])
    conf[:3, 3] += shift
    m_img = box_mask(image_shape)
    aseg = np.zeros((256, 256, 256), np.int32)
    aseg[...] = 0
    # paint each labelled image voxel's world position into the conformed grid
    idx = np.argwhere(m_img > 0)
    world = idx @ image_aff[:3, :3].T + image_aff[:3, 3]
    v = np.rint((world - conf[:3, 3]) @ np.linalg.inv(conf[:3, :3]).T).astype(int)
    ok = np.all((v >= 0) & (v < 256), axis=1)
    aseg[tuple(v[ok].T)] = m_img[tuple(idx[ok].T)]
    aseg[0:3, 0:3, 0:3] = 2  # other structures are allowed in an aseg
    p = tmp_path / "in" / "aseg.mgz"
    nib.save(nib.MGHImage(aseg, conf), p)
    return p


def test_ingest_conformed_aseg_resampled_nearest_onto_image_grid(tmp_path):
    shape = (20, 16, 12)
    aff = np.diag([1.0, 1.0, 1.0, 1.0])
    aff[:3, 3] = [-10, -8, -6]  # voxel centres on the conformed grid's: no rounding ties
    man = make_cohort(tmp_path / "in", [{"subject": "s1", "timepoint": "baseline", "shape": shape,
                                          "affine": aff}])
    aff = nib.load(tmp_path / "in" / "s1_baseline_T1w.nii.gz").affine
    _conformed_mask(tmp_path, aff, shape)
    with open(man, "a") as f:
        f.write("s1,baseline,A,mask,T1w,freesurfer,freesurfer,aseg.mgz\n")
    store = str(tmp_path / "c.zarr")
    rep = ingest(man, store, progress=False)
    row = rep[rep.method == "freesurfer"].iloc[0]
    assert row.status == "written" and bool(row.resampled), row.reason
    st = open_store(store)
    np.testing.assert_array_equal(st.load_mask("freesurfer", "T1w", 0), st.load_mask("gt", "T1w", 0))
    rec = st.records("masks/freesurfer/T1w").iloc[0]
    assert rec.resampled and rec.source_shape == (256, 256, 256)
    assert not st.records("masks/gt/T1w").iloc[0].resampled


def test_ingest_bad_inputs_fail_only_their_rows(tmp_path):
    root = tmp_path / "in"
    specs = [{"subject": f"s{k}", "timepoint": "baseline", "shape": (14, 12, 10)} for k in range(8)]
    man = make_cohort(root, specs)
    aff = make_affine("RAS", (14, 12, 10))
    # s1: truncated image (header readable, voxels cut)
    raw = gzip.decompress((root / "s1_baseline_T1w.nii.gz").read_bytes())
    (root / "s1_baseline_T1w.nii.gz").write_bytes(gzip.compress(raw[: len(raw) // 2])[:-20])
    # s2: 4D image with 3 volumes
    write_nifti(root / "s2_baseline_T1w.nii.gz", np.ones((14, 12, 10, 3), np.float32), aff)
    # s3: NaN-filled image
    write_nifti(root / "s3_baseline_T1w.nii.gz", np.full((14, 12, 10), np.nan, np.float32), aff)
    # s4: non-integer mask
    write_nifti(root / "s4_baseline_gt.nii.gz", box_mask((14, 12, 10)).astype(np.float32) * 0.37, aff)
    # s5: mask with unexpected labels for an explicit convention
    write_nifti(root / "s5_baseline_gt.nii.gz", box_mask((14, 12, 10), left=3, right=4), aff)
    # s6: mask on the same affine but a different shape
    write_nifti(root / "s6_baseline_gt.nii.gz", box_mask((14, 12, 9)), aff)
    # s7: mask whose grid lies far away from the image
    far = aff.copy()
    far[:3, 3] += 500
    write_nifti(root / "s7_baseline_gt.nii.gz", box_mask((14, 12, 10)), far)
    text = (root / "manifest.csv").read_text().replace(
        "s5,baseline,A,mask,T1w,gt,freesurfer", "s5,baseline,A,mask,T1w,gt,L:10;R:49"
    )
    (root / "manifest.csv").write_text(text)
    store = str(tmp_path / "c.zarr")
    rep = ingest(man, store, progress=False)
    on_disk = pd.read_csv(os.path.join(store, "ingest_report.csv"), keep_default_na=False)
    assert on_disk.status.tolist() == rep.status.tolist()
    by = {(r.subject, r.kind): r for r in rep.itertuples()}
    assert by[("s0", "image")].status == "written" and by[("s0", "mask")].status == "written"
    expect = {
        ("s1", "image"): "truncated",
        ("s2", "image"): "one 3-D volume is needed",
        ("s3", "image"): "NaN-filled",
        ("s4", "mask"): "non-integer",
        ("s5", "mask"): "unexpected labels",
        ("s6", "mask"): "has shape (14, 12, 9)",
        ("s7", "mask"): "does not overlap",
    }
    for key, words in expect.items():
        r = by[key]
        assert r.status == "failed" and words in r.reason, (key, r.reason)
        assert "\n" not in r.reason
    # a failed reference image fails its scan's masks; other scans' images are fine
    assert by[("s1", "mask")].status == "failed" and "reference image" in by[("s1", "mask")].reason
    assert by[("s4", "image")].status == "written"
    st = open_store(store)
    # s2's only image failed its header checks before planning: the scan is not in the store
    assert "s2" not in set(st.scans.subject) and st.n_scans == 7
    assert st.has_image("T1w").tolist() == [True, False, False, True, True, True, True]
    assert st.has_mask("gt", "T1w").tolist() == [True] + [False] * 6


def test_ingest_partial_nan_image_zeroed_and_recorded(tmp_path):
    root = tmp_path / "in"
    man = make_cohort(root, [{"subject": "s0", "timepoint": "baseline", "shape": (14, 12, 10)}])
    aff = make_affine("RAS", (14, 12, 10))
    data = np.ones((14, 12, 10), np.float32)
    data[0] = np.nan
    write_nifti(root / "s0_baseline_T1w.nii.gz", data, aff)
    store = str(tmp_path / "c.zarr")
    rep = ingest(man, store, progress=False)
    assert rep.status.tolist() == ["written", "written"]
    assert "non-finite" in rep.reason[0]
    st = open_store(store)
    assert np.isfinite(st.load_image("T1w", 0)).all()
    assert st.records("images/T1w").nan_replaced.tolist() == [True]


def test_ingest_second_contrast_on_other_grid_resampled_linear(tmp_path):
    root = tmp_path / "in"
    shape = (16, 14, 12)
    man = make_cohort(root, [{"subject": "s0", "timepoint": "baseline", "shape": shape}])
    aff = nib.load(root / "s0_baseline_T1w.nii.gz").affine
    # FLAIR: same field of view at half resolution, constant value 7 -> linear gives 7 inside
    faff = aff.copy()
    faff[:3, :3] *= 2
    write_nifti(root / "flair.nii.gz", np.full((8, 7, 6), 7.0, np.float32), faff)
    with open(man, "a") as f:
        f.write("s0,baseline,A,image,FLAIR,,,flair.nii.gz\n")
    store = str(tmp_path / "c.zarr")
    rep = ingest(man, store, progress=False)
    assert rep.status.tolist() == ["written"] * 3 and rep.resampled.tolist() == [False, False, True]
    st = open_store(store)
    assert st.contrasts == ["FLAIR", "T1w"]
    fl = st.load_image("FLAIR", 0)
    assert fl.shape == shape
    np.testing.assert_allclose(fl[2:12, 2:10, 2:8], 7.0)


def test_ingest_new_scans_appended_old_ones_kept(small_cohort, tmp_path):
    store = str(tmp_path / "c.zarr")
    ingest(small_cohort, store, progress=False)
    before = open_store(store).load_mask("gt", "T1w", 2)
    other = make_cohort(tmp_path / "other", [{"subject": "x", "timepoint": "baseline", "orient": "LAS"}])
    rep = ingest(other, store, progress=False)
    assert (rep.status == "written").all()
    st = open_store(store)
    assert st.n_scans == 4 and st.scans.subject.tolist() == ["sub-01", "sub-01", "sub-02", "x"]
    assert st.has_mask("gt", "T1w").tolist() == [True] * 4
    assert st.image("T1w").shape[0] == 4 and st.shapes.shape == (4, 3)
    np.testing.assert_array_equal(st.load_mask("gt", "T1w", 2), before)
    assert (ingest(small_cohort, store, progress=False).status == "skipped").all()


def test_ingest_changed_reference_grid_conflicts_without_overwrite_and_keeps_the_store(
        small_cohort, tmp_path):
    from thaldask.errors import StoreConflictError

    store = str(tmp_path / "c.zarr")
    clin = tmp_path / "clinical.csv"
    clin.write_text("subject,timepoint,age\nsub-01,baseline,40\n")
    ingest(small_cohort, store, progress=False, clinical=str(clin))
    before = [open_store(store).load_image("T1w", i) for i in range(3)]
    other = make_cohort(tmp_path / "other", [{"subject": "sub-01", "timepoint": "baseline", "orient": "LIA"}])
    with pytest.raises(StoreConflictError, match="reference grid of sub-01 baseline .*--overwrite re-grids"):
        ingest(other, store, progress=False)
    st = open_store(store)
    assert st.n_scans == 3 and st.has_mask("gt", "T1w").all()
    assert st.clinical is not None and list(st.clinical["age"]) == [40]
    for i in range(3):
        np.testing.assert_array_equal(st.load_image("T1w", i), before[i])


def test_ingest_changed_file_conflicts_then_overwrites(tmp_path):
    root = tmp_path / "in"
    man = make_cohort(root, [{"subject": "s0", "timepoint": "baseline", "shape": (14, 12, 10)}])
    store = str(tmp_path / "c.zarr")
    ingest(man, store, progress=False)
    aff = nib.load(root / "s0_baseline_gt.nii.gz").affine
    before = int((open_store(store).load_mask("gt", "T1w", 0) > 0).sum())
    edited = box_mask((14, 12, 10))
    edited[:, :, 3] = 0  # a manual correction: one slice of both thalami removed
    write_nifti(root / "s0_baseline_gt.nii.gz", edited, aff)
    rep = ingest(man, store, progress=False)
    assert rep.status.tolist() == ["skipped", "failed"]
    assert rep.reason[1].startswith("StoreConflictError")
    assert int((open_store(store).load_mask("gt", "T1w", 0) > 0).sum()) == before
    rep = ingest(man, store, progress=False, overwrite=True)
    assert rep.status.tolist() == ["skipped", "written"]
    assert int((open_store(store).load_mask("gt", "T1w", 0) > 0).sum()) < before


@pytest.mark.parametrize("split", [False, True])
def test_ingest_binary_mask_split_only_when_asked(split, tmp_path):
    root = tmp_path / "in"
    shape = (20, 16, 12)
    man = make_cohort(root, [{"subject": "s0", "timepoint": "baseline", "shape": shape, "orient": "RAS"}])
    aff = nib.load(root / "s0_baseline_gt.nii.gz").affine
    write_nifti(root / "bin.nii.gz", (box_mask(shape) > 0).astype(np.uint8), aff)
    with open(man, "a") as f:
        f.write("s0,baseline,A,mask,T1w,manual,binary,bin.nii.gz\n")
    store = str(tmp_path / "c.zarr")
    rep = ingest(man, store, progress=False, split_binary=split)
    assert (rep.status == "written").all(), rep.reason.tolist()
    st = open_store(store)
    got, gt = st.load_mask("manual", "T1w", 0), st.load_mask("gt", "T1w", 0)
    if split:
        np.testing.assert_array_equal(got, gt)
    else:
        np.testing.assert_array_equal(got, (gt > 0).astype(np.uint8))
    assert st.records("masks/manual/T1w").binary.tolist() == [not split]


AXCODES = ["RAS", "LPS", "LIA", "PIR", "SAL", "ILP", "ARS", "RPI"]


@settings(max_examples=5, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(codes=hs.sampled_from(AXCODES), shape=hs.tuples(*[hs.integers(10, 15)] * 3),
       spacing=hs.tuples(*[hs.sampled_from([0.8, 1.0, 1.5])] * 3))
def test_export_any_axis_order_roundtrip_identity(codes, shape, spacing, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("rt")
    ornt = nib.orientations.axcodes2ornt(codes)
    aff = nib.orientations.inv_ornt_aff(ornt, shape)
    # voxel axes pointing along `codes`, scaled, shifted off the origin
    aff = np.linalg.inv(aff)
    aff[:3, :3] = aff[:3, :3] @ np.diag(spacing)
    aff[:3, 3] = [3.5, -7.0, 11.25]
    man = make_cohort(tmp / "in", [{"subject": "s", "timepoint": "t", "shape": shape, "affine": aff}])
    ingest(man, str(tmp / "c.zarr"), progress=False)
    st = open_store(str(tmp / "c.zarr"))
    assert "".join(nib.aff2axcodes(st.affines[0])) == "RAS"
    assert st.orig_header(0)[0] == 1 and "".join(nib.aff2axcodes(st.orig_affines[0])) == codes
    (p,) = export_masks(st, "gt", "T1w", tmp / "out", labels="freesurfer")
    orig, out = nib.load(tmp / "in" / "s_t_gt.nii.gz"), nib.load(p)
    np.testing.assert_array_equal(np.asarray(out.dataobj), np.asarray(orig.dataobj))
    assert out.affine.tobytes() == orig.affine.tobytes()


def test_store_views_build_lazily_without_computing(small_cohort, tmp_path):
    import dask

    store = str(tmp_path / "c.zarr")
    ingest(small_cohort, store, progress=False)
    calls = []

    def counting_scheduler(dsk, keys, **kwargs):
        calls.append(1)
        return dask.get(dsk, keys, **kwargs)

    with dask.config.set(scheduler=counting_scheduler):
        st = open_store(store)
        img, msk = st.image("T1w"), st.mask("gt", "T1w")
        vol = (msk > 0).sum(("x", "y", "z")) * img.mean(("x", "y", "z"))
        assert calls == []
        vol.compute()
    assert len(calls) == 1


def test_export_nifti2_and_uncompressed_inputs_roundtrip(tmp_path):
    root = tmp_path / "in"
    root.mkdir()
    shape = (12, 11, 9)
    aff = make_affine("LIA", shape)
    rng = np.random.default_rng(3)
    nib.save(nib.Nifti2Image(rng.normal(size=shape).astype(np.float32), aff), root / "t1.nii")
    nib.save(nib.Nifti2Image(box_mask(shape), aff), root / "gt.nii")
    (root / "m.csv").write_text("subject,timepoint,kind,contrast,method,labels,path\n"
                                "s,t,image,T1w,,,t1.nii\ns,t,mask,T1w,gt,freesurfer,gt.nii\n")
    rep = ingest(root / "m.csv", str(tmp_path / "c.zarr"), progress=False)
    assert (rep.status == "written").all(), rep.reason.tolist()
    (p,) = export_masks(str(tmp_path / "c.zarr"), "gt", "T1w", tmp_path / "out", labels="freesurfer")
    out, orig = nib.load(p), nib.load(root / "gt.nii")
    assert isinstance(out, nib.Nifti2Image)
    np.testing.assert_array_equal(np.asarray(out.dataobj), np.asarray(orig.dataobj))
    assert out.affine.tobytes() == orig.affine.tobytes()


def test_ingest_rewritten_file_same_voxels_skipped_by_content(tmp_path):
    root = tmp_path / "in"
    man = make_cohort(root, [{"subject": "s0", "timepoint": "baseline", "shape": (14, 12, 10)}])
    store = str(tmp_path / "c.zarr")
    ingest(man, store, progress=False)
    img = nib.load(root / "s0_baseline_gt.nii.gz")
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj), img.affine), root / "s0_baseline_gt.nii")
    (root / "manifest.csv").write_text((root / "manifest.csv").read_text().replace("gt.nii.gz", "gt.nii"))
    tok = open_store(store).content_tokens("masks/gt/T1w").copy()
    assert tok.any()
    rep = ingest(man, store, progress=False)
    assert rep.status.tolist() == ["skipped", "skipped"]
    assert rep.reason.tolist() == ["same file already stored", "same content already stored"]
    st = open_store(store)
    np.testing.assert_array_equal(st.content_tokens("masks/gt/T1w"), tok)
    st.write_mask("gt", "T1w", 0, np.zeros(tuple(st.shapes[0]), np.uint8), overwrite=True)
    assert (open_store(store).content_tokens("masks/gt/T1w") != tok).any()
    assert not open_store(store).content_tokens("masks/none/T1w").any()


def test_ingest_private_fields_and_extensions_not_stored(tmp_path):
    root = tmp_path / "in"
    man = make_cohort(root, [{"subject": "s0", "timepoint": "baseline", "shape": (10, 9, 8)}])
    img = nib.load(root / "s0_baseline_T1w.nii.gz")
    out = nib.Nifti1Image(np.asarray(img.dataobj), img.affine)
    for field, value in (("descrip", b"Jane Roe 1980"), ("db_name", b"Jane Roe"), ("aux_file", b"roe.txt"),
                         ("intent_name", b"RoeJ")):
        out.header[field] = value
    out.header.extensions.append(nib.nifti1.Nifti1Extension("comment", b"PatientName=Jane Roe"))
    nib.save(out, root / "s0_baseline_T1w.nii.gz")
    store = tmp_path / "c.zarr"
    ingest(man, str(store), progress=False)
    blob = b"".join(p.read_bytes() for p in store.rglob("*") if p.is_file())
    fmt, header = open_store(str(store)).orig_header(0)  # decoded, as export uses it
    assert fmt == 1 and len(header) == 348  # the binary header only: extensions are dropped
    for needle in (b"Jane", b"Roe", b"roe.txt"):
        assert needle not in blob and needle not in header


def test_corrupt_deflate_data_fails_its_row_and_multi_member_gzip_is_read(tmp_path):
    root = tmp_path / "in"
    man = make_cohort(root, [{"subject": f"s{k}", "timepoint": "baseline", "shape": (30, 28, 26)}
                             for k in range(3)])
    # s1: a damaged deflate block in the middle (not a truncation)
    f1 = root / "s1_baseline_T1w.nii.gz"
    raw = bytearray(f1.read_bytes())
    raw[len(raw) // 2 : len(raw) // 2 + 64] = b"\xff" * 64
    f1.write_bytes(bytes(raw))
    # s2: the same voxels as two concatenated gzip members (valid gzip, e.g. from pigz -i)
    f2 = root / "s2_baseline_T1w.nii.gz"
    plain = gzip.decompress(f2.read_bytes())
    f2.write_bytes(gzip.compress(plain[:1000]) + gzip.compress(plain[1000:]))
    store = str(tmp_path / "c.zarr")
    rep = ingest(man, store, progress=False)
    by = {(r.subject, r.kind): r for r in rep.itertuples()}
    assert by[("s1", "image")].status == "failed"
    assert "corrupt or truncated gzip stream" in by[("s1", "image")].reason
    assert "\n" not in by[("s1", "image")].reason
    assert [by[(s, k)].status for s in ("s0", "s2") for k in ("image", "mask")] == ["written"] * 4
    want = nib.as_closest_canonical(nib.load(f2)).get_fdata(dtype=np.float32)
    np.testing.assert_array_equal(open_store(store).load_image("T1w", 2), want)
