import os

import nibabel as nib
import numpy as np
import pytest

from thaldask.errors import StoreConflictError, StoreNotFoundError
from thaldask.store import export_masks, ingest, open_store
from thaldask.store.shards import chunk_codecs, is_sharded, scans_per_object
from thaldask.store.verify import verify_store


def test_ingest_small_cohort_roundtrips_images_and_masks(small_cohort, tmp_path):
    store = str(tmp_path / "c.zarr")
    report = ingest(small_cohort, store, progress=False)
    assert (report["status"] == "written").all()
    st = open_store(store)
    assert st.n_scans == 3
    assert list(st.scans.columns) == ["subject", "timepoint", "site"]
    assert st.scans.site.tolist() == ["A", "A", "B"]
    assert st.contrasts == ["T1w"]
    assert st.methods == [("gt", "T1w")]
    assert st.has_mask("gt", "T1w").all()
    for i, f in enumerate(["sub-01_baseline_T1w.nii.gz", "sub-01_m12_T1w.nii.gz", "sub-02_baseline_T1w.nii.gz"]):
        src = nib.load(tmp_path / "in" / f)
        ras = nib.as_closest_canonical(src)
        np.testing.assert_array_equal(st.load_image("T1w", i), ras.get_fdata(dtype=np.float32))
        np.testing.assert_array_equal(st.affines[i], ras.affine)
        assert tuple(st.shapes[i]) == ras.shape
    img = st.image("T1w")
    assert img.dims == ("scan", "x", "y", "z")
    assert img.shape == (3,) + st.grid_shape
    assert img.data.chunks[0] == (1, 1, 1)
    assert img.subject.values.tolist() == ["sub-01", "sub-01", "sub-02"]
    m = st.mask("gt", "T1w")
    assert m.dtype == np.uint8
    counts = [int((m.isel(scan=i) == v).sum()) for i in range(3) for v in (1, 2)]
    assert counts == [48] * 6


def test_export_masks_restores_original_grid_bit_exactly(small_cohort, tmp_path):
    store = str(tmp_path / "c.zarr")
    ingest(small_cohort, store, progress=False)
    paths = export_masks(store, "gt", "T1w", tmp_path / "out", labels="freesurfer")
    assert [p.rsplit("/", 1)[1] for p in paths][0] == "sub-01_baseline_gt_T1w.nii.gz"
    for p in paths:
        name = p.rsplit("/", 1)[1]
        sub, tp = name.split("_")[:2]
        orig = nib.load(tmp_path / "in" / f"{sub}_{tp}_gt.nii.gz")
        out = nib.load(p)
        np.testing.assert_array_equal(np.asarray(out.dataobj), np.asarray(orig.dataobj))
        np.testing.assert_array_equal(out.affine, orig.affine)
        np.testing.assert_array_equal(out.header.get_sform(), orig.header.get_sform())
        np.testing.assert_array_equal(out.header.get_qform(), orig.header.get_qform())
        assert out.header["descrip"].item() == b""


def test_ingest_rerun_same_content_skips(small_cohort, tmp_path):
    store = str(tmp_path / "c.zarr")
    ingest(small_cohort, store, progress=False)
    again = ingest(small_cohort, store, progress=False)
    assert (again["status"] == "skipped").all()


def test_write_mask_different_content_conflicts_unless_overwrite(small_cohort, tmp_path):
    store = str(tmp_path / "c.zarr")
    ingest(small_cohort, store, progress=False)
    st = open_store(store)
    lab = st.load_mask("gt", "T1w", 0)
    prob = np.stack([(lab == 1), (lab == 2)]).astype(np.float32) * 0.8
    assert st.write_mask("model", "T1w", 0, lab, prob=prob) == "written"
    assert st.write_mask("model", "T1w", 0, lab, prob=prob) == "skipped"
    with pytest.raises(StoreConflictError):
        st.write_mask("model", "T1w", 0, np.zeros_like(lab))
    assert st.write_mask("model", "T1w", 0, np.zeros_like(lab), overwrite=True) == "written"
    st2 = open_store(store)
    assert ("model", "T1w") in st2.methods
    assert st2.has_mask("model", "T1w").tolist() == [True, False, False]
    assert st2.load_mask("model", "T1w", 0).max() == 0
    assert st2.load_prob("model", "T1w", 0) is None
    st2.write_mask("model", "T1w", 1, st2.load_mask("gt", "T1w", 1), prob=np.full((2, *st2.shapes[1]), 0.5))
    p = st2.load_prob("model", "T1w", 1)
    assert p.shape == (2, *st2.shapes[1]) and p.dtype == np.float32
    np.testing.assert_allclose(p, 0.5, atol=1 / 255)


def test_open_store_missing_path_raises_not_found(tmp_path):
    with pytest.raises(StoreNotFoundError):
        open_store(str(tmp_path / "nothing.zarr"))


def test_write_results_roundtrip_keeps_strings_and_nan(small_cohort, tmp_path):
    import xarray as xr

    store = str(tmp_path / "c.zarr")
    ingest(small_cohort, store, progress=False)
    st = open_store(store)
    ds = xr.Dataset(
        {"dice": (("subject", "side"), np.array([[0.9, np.nan], [0.8, 0.7]])),
         "group": (("subject",), np.array(["MS", "HC"], dtype=object))},
        coords={"subject": ["sub-01", "sub-02"], "side": ["left", "right"]},
        attrs={"synthetic": 1},
    )
    st.write_results(ds)
    st.write_results(ds.assign(dice=ds.dice * 0), name="stats")
    back = open_store(store).open_results()
    xr.testing.assert_equal(back.drop_vars("group"), ds.drop_vars("group"))
    assert back.group.values.tolist() == ["MS", "HC"]
    assert float(open_store(store).open_results("stats").dice[0, 0]) == 0.0


def test_ingest_fsspec_url_store_roundtrip(tmp_path):
    import dask
    import fsspec
    from helpers.store import make_cohort

    man = make_cohort(tmp_path / "in", [{"subject": "s1", "timepoint": "baseline", "orient": "LIA"}])
    url = f"memory://thaldask-test-{tmp_path.name}/c.zarr"
    try:
        with dask.config.set(scheduler="sync"):
            rep = ingest(man, url, progress=False)
        assert (rep.status == "written").all()
        st = open_store(url)
        assert st.methods == [("gt", "T1w")]
        assert int(st.mask("gt", "T1w").sum().compute(scheduler="sync")) == 48 * 3
        fs = fsspec.filesystem("memory")
        assert fs.exists(f"/thaldask-test-{tmp_path.name}/c.zarr/ingest_report.csv")
        (p,) = export_masks(url, "gt", "T1w", tmp_path / "out")
        assert nib.load(p).shape == (20, 16, 12)
    finally:
        fsspec.filesystem("memory").rm(f"/thaldask-test-{tmp_path.name}", recursive=True)


def test_ingest_int16_images_stored_exactly_as_int16_scaled_as_float32(tmp_path):
    from helpers.store import HEADER, box_mask, make_affine

    root = tmp_path / "in"
    root.mkdir()
    aff = make_affine("LAS", (10, 9, 8))
    rng = np.random.default_rng(1)
    t1 = rng.integers(-300, 3000, (10, 9, 8)).astype(np.int16)
    nib.save(nib.Nifti1Image(t1, aff), root / "t1.nii.gz")
    r1 = nib.Nifti1Image(rng.integers(0, 1000, (10, 9, 8)).astype(np.int16), aff)
    r1.header.set_slope_inter(0.001, 0.0)
    nib.save(r1, root / "r1.nii.gz")
    nib.save(nib.Nifti1Image(box_mask((10, 9, 8)), aff), root / "m.nii.gz")
    (root / "m.csv").write_text("\n".join([HEADER, "s,b,,image,T1w,,,t1.nii.gz", "s,b,,image,R1,,,r1.nii.gz",
                                           "s,b,,mask,T1w,gt,freesurfer,m.nii.gz"]) + "\n")
    store = str(tmp_path / "c.zarr")
    ingest(root / "m.csv", store, progress=False)
    st = open_store(store)
    assert st.zarr_array("images/T1w").dtype == np.int16 and st.zarr_array("images/R1").dtype == np.float32
    ras = nib.as_closest_canonical(nib.load(root / "t1.nii.gz"))
    np.testing.assert_array_equal(st.load_image("T1w", 0), np.asarray(ras.dataobj).astype(np.float32))
    assert st.load_image("T1w", 0).dtype == np.float32 and st.image("T1w").dtype == np.float32
    r1ras = nib.as_closest_canonical(nib.load(root / "r1.nii.gz")).get_fdata(dtype=np.float32)
    np.testing.assert_array_equal(st.load_image("R1", 0), r1ras)
    assert st.records("images/R1").scaled.tolist() == [True]


@pytest.mark.parametrize("float_codec", ["auto", "pcodec", "blosc"])
def test_float_maps_stored_bit_exactly_with_the_configured_codec(tmp_path, float_codec):
    import dask
    from helpers.store import HEADER, make_affine

    root = tmp_path / "in"
    root.mkdir()
    aff = make_affine("LIA", (30, 28, 26))
    rng = np.random.default_rng(3)
    # a quantitative map as tools write them: s^-1 rounded to 4 decimals, plus full-precision
    # values, signed zeros and subnormals that a lossy or value-based codec would change
    r1 = np.round(rng.uniform(0.3, 2.5, (30, 28, 26)).astype(np.float32), 4)
    r1[:5] = rng.normal(1, 0.3, (5, 28, 26)).astype(np.float32)
    r1[6, :4, :4] = np.float32(-0.0)
    r1[7, :4, :4] = np.float32(1e-42)
    nib.save(nib.Nifti1Image(r1, aff), root / "r1.nii.gz")
    (root / "m.csv").write_text("\n".join([HEADER, "s,b,,image,R1,,,r1.nii.gz"]) + "\n")
    store = str(tmp_path / "c.zarr")
    with dask.config.set({"thaldask.store.float-codec": float_codec}):
        ingest(root / "m.csv", store, progress=False)
    st = open_store(store)
    codecs = [type(c).__name__ for c in chunk_codecs(st.zarr_array("images/R1"))]
    assert ("PCodec" in codecs) == (float_codec == "pcodec"), codecs
    assert st.layout["float_codec"] == float_codec
    want = np.asarray(nib.as_closest_canonical(nib.load(root / "r1.nii.gz")).dataobj)
    got = st.load_image("R1", 0)
    np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))


def test_cohort_store_pickles_as_its_path(small_cohort, tmp_path):
    import pickle

    store = str(tmp_path / "c.zarr")
    ingest(small_cohort, store, progress=False)
    st = open_store(store)
    blob = pickle.dumps(st)
    assert len(blob) < 1000
    assert pickle.loads(blob).n_scans == 3
    # lazy views ship only (path, array name) to workers, never data or store objects
    view = st.image("T1w")
    graph = pickle.dumps(dict(view.data.__dask_graph__()))
    assert len(graph) < 5000
    back = pickle.loads(graph)
    import dask

    chunk = dask.get(back, (view.data.name, 2, 0, 0, 0))[0]
    sx, sy, sz = st.shapes[2]
    np.testing.assert_array_equal(chunk[:sx, :sy, :sz], st.load_image("T1w", 2))


@pytest.mark.parametrize("record_chunk,batch", [(1, False), (4, False), (4, True)],
                         ids=["one-per-chunk", "sharded", "sharded-batch"])
def test_write_mask_concurrent_first_use_from_threads_keeps_every_scan(tmp_path, record_chunk, batch):
    """Tasks owning different record chunks (and shards: record_chunk scans per file) of
    one new array write at once: nothing is lost, written scan by scan or in a batch."""
    import contextlib
    from concurrent.futures import ThreadPoolExecutor

    import dask
    from helpers.store import make_cohort

    from thaldask._shared.compute import owned_batches

    man = make_cohort(tmp_path / "in", [{"subject": f"s{k}", "timepoint": "b", "shape": (12, 10, 8)} for k in range(10)])
    store = str(tmp_path / "c.zarr")
    from thaldask import config

    config.get("store.record-chunk")  # defaults loaded before the override (dask restores on exit)
    with dask.config.set({"thaldask.store.record-chunk": record_chunk}):
        ingest(man, store, progress=False)
    assert open_store(store).record_chunk == record_chunk

    def work(scans):  # as a worker would: from the path, the scans of whole record chunks
        st = open_store(store)
        out = []
        with st.record_batch() if batch else contextlib.nullcontext():
            out = _work(st, scans)
        return out

    def _work(st, scans):
        out = []
        for i in scans:
            lab = st.load_mask("gt", "T1w", i)
            out.append(st.write_mask("net", "T1w", i, lab, prob=np.stack([lab == 1, lab == 2]).astype(float)))
        return out

    chunk = open_store(store).write_chunk(["masks/net/T1w"])
    assert chunk == record_chunk
    groups = owned_batches(list(range(10)), lambda i: i, chunk, 1)
    assert len(groups) == -(-10 // record_chunk)
    with ThreadPoolExecutor(len(groups)) as ex:
        assert [s for r in ex.map(work, groups) for s in r] == ["written"] * 10
    st = open_store(store)
    assert st.has_mask("net", "T1w").all()
    assert st.zarr_array("_meta/masks/net/T1w/record").chunks[0] == record_chunk
    for name in ("masks/net/T1w", "probs/net/T1w"):  # the same task owns a scan's prob shard
        z = st.zarr_array(name)
        assert is_sharded(z) == (record_chunk > 1) and scans_per_object(z) == record_chunk
        files = [f for _, _, fs in os.walk(os.path.join(store, name)) for f in fs if f != "zarr.json"]
        assert len(files) == len(groups)
    assert verify_store(store).empty
    for i in range(10):
        lab = st.load_mask("gt", "T1w", i)
        np.testing.assert_array_equal(st.load_mask("net", "T1w", i), lab)
        np.testing.assert_array_equal(st.load_prob("net", "T1w", i), np.stack([lab == 1, lab == 2]).astype(np.float32))


@pytest.mark.parametrize("dtype,shuffle", [("int16", "bitshuffle"), ("uint8", "shuffle"), ("float32", "noshuffle")])
def test_whole_chunk_write_stores_the_bytes_zarr_writes(tmp_path, dtype, shuffle):
    import zarr
    from zarr.codecs import BloscCodec

    from thaldask.store.codecs import write_whole_chunk

    path = tmp_path / "s.zarr"
    zarr.open_group(path, mode="w")
    codec = BloscCodec(cname="lz4", clevel=5, shuffle=shuffle, typesize=np.dtype(dtype).itemsize)
    z = zarr.create_array(store=str(path), name="images/T1w", shape=(2, 40, 30, 20),
                          chunks=(1, 40, 30, 20), dtype=dtype, compressors=[codec], fill_value=0)
    a = np.random.default_rng(0).normal(50, 10, (40, 30, 20)).astype(dtype)
    z[0] = a
    assert write_whole_chunk(z, 1, a)
    chunk = path / "images" / "T1w" / "c"
    assert (chunk / "1/0/0/0").read_bytes() == (chunk / "0/0/0/0").read_bytes()
    np.testing.assert_array_equal(zarr.open_array(str(path / "images" / "T1w"))[1], a)
    # spatially chunked arrays and other dtypes go through zarr's own write
    z2 = zarr.create_array(store=str(path), name="images/R1", shape=(2, 40, 30, 20),
                           chunks=(1, 20, 30, 20), dtype=dtype, compressors=[codec], fill_value=0)
    assert not write_whole_chunk(z2, 1, a)
    assert not write_whole_chunk(z, 1, a.astype(np.float64))


def test_unknown_float_codec_is_a_store_error_naming_the_setting():
    from thaldask.errors import StoreError
    from thaldask.store.codecs import array_codecs

    with pytest.raises(StoreError, match=r"thaldask.store.float-codec.*'zstd'"):
        array_codecs("int16", {"float_codec": "zstd"})

