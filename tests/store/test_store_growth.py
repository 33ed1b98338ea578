"""A store grows in place: larger scans widen its padded grid, new sites and scans are
appended, and ``--overwrite`` re-grids a scan whose reference image changed grid; nothing
else stored changes."""

import nibabel as nib
import numpy as np
import pytest
from helpers.cohort import digests
from helpers.store import box_mask, make_cohort, write_nifti

from thaldask.metrics import evaluate
from thaldask.store import ingest, open_store
from thaldask.store.create import grow_grid


def _stored(st):
    """Every written scan of every image and mask array, cropped to its true shape."""
    out = {}
    for c in st.contrasts:
        for i in np.flatnonzero(st.has_image(c)):
            out[("img", c, int(i))] = st.load_image(c, int(i))
    for m, c in st.methods:
        for i in np.flatnonzero(st.has_mask(m, c)):
            out[(m, c, int(i))] = st.load_mask(m, c, int(i))
    return out


def _same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=str(k))


def _ras(path):
    img = nib.as_closest_canonical(nib.load(str(path)))
    return np.asarray(img.dataobj)


def test_larger_scans_and_a_new_site_grow_the_store_in_place(small_cohort, tmp_path, capsys):
    store = str(tmp_path / "c.zarr")
    clin = tmp_path / "clinical.csv"
    clin.write_text("subject,timepoint,age\nsub-01,baseline,40\n")
    ingest(small_cohort, store, progress=False, clinical=str(clin))
    st = open_store(store)
    grid0, before = st.grid_shape, _stored(st)
    created = st.attrs["thaldask"]["created"]
    inputs = digests(tmp_path / "in")

    big = make_cohort(tmp_path / "big", [
        {"subject": "y", "timepoint": "baseline", "shape": (40, 16, 12), "site": "C"},
        {"subject": "z", "timepoint": "baseline", "shape": (12, 30, 20), "orient": "LIA", "site": "C"},
    ], rng=3)
    rep = ingest(big, store, progress=True)
    assert (rep.status == "written").all(), rep.reason.tolist()
    assert "padded grid grown" in capsys.readouterr().err

    st = open_store(store)
    assert st.attrs["thaldask"]["created"] == created  # the same store, not a rebuild
    assert st.n_scans == 5
    assert st.scans.site.tolist() == ["A", "A", "B", "C", "C"]
    assert all(g >= h for g, h in zip(st.grid_shape, grid0, strict=True))
    assert st.grid_shape == tuple(int(v) for v in st.shapes.max(0))
    for name, z in st.array_members():
        if name.startswith(("images/", "masks/")):
            assert tuple(z.shape) == (5,) + st.grid_shape, name
    after = _stored(st)
    _same({k: v for k, v in after.items() if k[2] < 3}, before)  # stored scans unchanged
    for k, (s, shape) in enumerate([("y", (40, 16, 12)), ("z", (12, 30, 20))]):
        i = 3 + k
        np.testing.assert_array_equal(st.load_image("T1w", i),
                                      _ras(tmp_path / "big" / f"{s}_baseline_T1w.nii.gz"))
        assert int((st.load_mask("gt", "T1w", i) > 0).sum()) == int((box_mask(shape) > 0).sum())
    # the padding that grew reads as zeros for the old scans
    full = np.asarray(st.zarr_array("images/T1w")[0])
    sx, sy, sz = (int(v) for v in st.shapes[0])
    assert not full[sx:].any() and not full[:, sy:].any() and not full[:, :, sz:].any()
    assert st.clinical is not None and list(st.clinical["age"]) == [40]  # clinical kept
    assert digests(tmp_path / "in") == inputs

    # re-running either manifest finds everything stored, also after the growth
    assert (ingest(small_cohort, store, progress=False).status == "skipped").all()
    assert (ingest(big, store, progress=False).status == "skipped").all()
    # a file re-written with identical voxels (new bytes) is the same content, not a conflict
    src = tmp_path / "in" / "sub-01_baseline_T1w.nii.gz"
    img = nib.load(str(src))
    write_nifti(str(src), np.asarray(img.dataobj), img.affine, descrip=b"re-saved")
    rep = ingest(small_cohort, store, progress=False)
    assert (rep.status == "skipped").all(), rep.reason.tolist()

    # masks written after the growth, old and new scans alike, score against ground truth
    for i in range(st.n_scans):
        st.write_mask("rater2", "T1w", i, st.load_mask("gt", "T1w", i))
    res = evaluate(store, progress=False, csv_path=str(tmp_path / "metrics.csv"))
    d = res["dice"].sel({"method": "rater2", "contrast": "T1w", "side": "total"}).values
    assert np.nanmin(d) == 1.0 and np.isfinite(d).sum() == 5


def test_an_interrupted_growth_is_completed_by_the_next_ingest(small_cohort, tmp_path):
    store = str(tmp_path / "c.zarr")
    ingest(small_cohort, store, progress=False)
    st = open_store(store)
    g = st.grid_shape
    # the planning process died after resizing one array, before the root attribute
    st.zarr_array("masks/gt/T1w", mode="r+").resize((3, g[0] + 8, g[1], g[2]))
    before = _stored(open_store(store))
    big = make_cohort(tmp_path / "big", [{"subject": "y", "timepoint": "baseline", "shape": (30, 10, 10)}])
    rep = ingest(big, store, progress=False)
    assert (rep.status == "written").all(), rep.reason.tolist()
    st = open_store(store)
    assert st.grid_shape == (max(g[0] + 8, 30), g[1], g[2])
    for name, z in st.array_members():
        if name.startswith(("images/", "masks/")):
            assert tuple(z.shape[1:]) == st.grid_shape, name
    _same({k: v for k, v in _stored(st).items() if k[2] < 3}, before)


def test_grow_grid_never_shrinks(small_cohort, tmp_path):
    store = str(tmp_path / "c.zarr")
    ingest(small_cohort, store, progress=False)
    st = open_store(store)
    g = st.grid_shape
    assert grow_grid(st, (1, 1, 1)) == g
    assert grow_grid(st, (g[0], g[1] + 2, 1)) == (g[0], g[1] + 2, g[2])
    assert open_store(store).grid_shape == (g[0], g[1] + 2, g[2])


def test_overwrite_regrids_a_scan_whose_reference_grid_changed(small_cohort, tmp_path, capsys):
    store = str(tmp_path / "c.zarr")
    clin = tmp_path / "clinical.csv"
    clin.write_text("subject,timepoint,age\nsub-01,baseline,40\n")
    ingest(small_cohort, store, progress=False, clinical=str(clin))
    # a second method's mask for every scan, as a segmenter writes it
    st = open_store(store)
    for i in range(st.n_scans):
        st.write_mask("first", "T1w", i, st.load_mask("gt", "T1w", i))
    st = open_store(store)
    keep = {k: v for k, v in _stored(st).items() if k[2] != 0}

    # sub-01 baseline re-exported by the scanner on another grid (new orientation and size)
    new = make_cohort(tmp_path / "new", [{"subject": "sub-01", "timepoint": "baseline",
                                           "orient": "LIA", "shape": (24, 18, 14)}], rng=5)
    inputs = digests(tmp_path / "new")
    rep = ingest(new, store, progress=False, overwrite=True)
    assert (rep.status == "written").all(), rep.reason.tolist()
    err = capsys.readouterr().err
    assert "reference grid of sub-01 baseline changed" in err and "masks/first/T1w" in err

    st = open_store(store)
    assert st.n_scans == 3
    assert tuple(st.orig_shapes[0]) == (24, 18, 14) and tuple(st.shapes[0]) == (24, 14, 18)
    assert "".join(nib.aff2axcodes(st.orig_affines[0])) == "LIA"
    np.testing.assert_array_equal(st.load_image("T1w", 0),
                                  _ras(tmp_path / "new" / "sub-01_baseline_T1w.nii.gz"))
    assert st.has_mask("gt", "T1w")[0]
    # the other method's mask was on the old grid: not written now, never silently wrong
    assert st.has_mask("first", "T1w").tolist() == [False, True, True]
    _same({k: v for k, v in _stored(st).items() if k[2] != 0}, keep)  # other scans untouched
    assert list(st.clinical["age"]) == [40]
    assert digests(tmp_path / "new") == inputs
    # evaluate scores the new grid, and has no 'first' row for the re-gridded scan
    res = evaluate(store, progress=False, csv_path=str(tmp_path / "m.csv"))
    first = res["dice"].sel({"method": "first", "contrast": "T1w", "side": "total"})
    assert np.isnan(first.sel(subject="sub-01", timepoint="baseline").item())
    assert first.sel(subject="sub-02", timepoint="baseline").item() == 1.0


def test_regrid_is_refused_without_overwrite_even_for_a_larger_scan(small_cohort, tmp_path):
    from thaldask.errors import StoreConflictError

    store = str(tmp_path / "c.zarr")
    ingest(small_cohort, store, progress=False)
    g = open_store(store).grid_shape
    new = make_cohort(tmp_path / "new", [{"subject": "sub-02", "timepoint": "baseline",
                                           "shape": (50, 10, 10)}])
    with pytest.raises(StoreConflictError, match="reference grid of sub-02 baseline"):
        ingest(new, store, progress=False)
    assert open_store(store).grid_shape == g  # nothing grew for a refused manifest
