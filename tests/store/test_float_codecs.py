"""How float images (quantitative maps) are stored: fixed decimals as integers, else float32.

The decimal representation is checked against numcodecs' own FixedScaleOffset (the codec
zarr decodes with) and against float64 arithmetic; ingest is checked end to end, including
a cohort whose later scan has more decimals than the array stores.
"""

import os

import nibabel as nib
import numpy as np
import pytest

from thaldask.store import fastcopy, ingest, nifti, open_store
from thaldask.store.codecs import decimal_places
from thaldask.store.shards import chunk_codecs, scans_per_object


def _fso(d, astype):
    import numcodecs

    return numcodecs.FixedScaleOffset(offset=0, scale=10**d, dtype="<f4", astype=astype)


@pytest.mark.parametrize("d", [0, 1, 2, 3, 4, 5, 6])
def test_float32_division_gives_what_the_float64_decoder_gives(d):
    # quantised_copy checks k / 10**d in float32; numcodecs decodes in float64 then rounds
    k = np.random.default_rng(d).integers(-(1 << 24) + 1, 1 << 24, 2_000_000)
    k = np.concatenate([k, np.arange(-70000, 70000)])
    f32 = k.astype(np.float32) / np.float32(10**d)
    f64 = (k / 10**d).astype(np.float32)
    np.testing.assert_array_equal(f32.view(np.uint32), f64.view(np.uint32))


@pytest.mark.parametrize("orient", ["RAS", "LIA"])
@pytest.mark.parametrize("d,astype", [(0, "int16"), (3, "int16"), (4, "int32"), (6, "int32")])
def test_quantised_copy_is_numcodecs_encode_and_decodes_back(orient, d, astype):
    from helpers.store import make_affine

    rng = np.random.default_rng(7)
    hi = 3000 if astype == "int16" else 3_000_000
    k = rng.integers(-hi, hi, (40, 36, 48))
    vals = (k / 10**d).astype(np.float32)  # what a tool writing d decimals stores
    aff = make_affine(orient, vals.shape)
    src = np.asfortranarray(vals)  # nibabel's order, then a strided RAS view
    ras = nifti.to_ras(src, aff)[0]
    out_shape = tuple(s + 3 for s in ras.shape)
    got = fastcopy.quantised_copy(ras, out_shape, 10.0**d, astype)
    assert got is not None and got.dtype == np.dtype(astype) and got.shape == out_shape
    want = np.ascontiguousarray(ras)
    inner = got[: ras.shape[0], : ras.shape[1], : ras.shape[2]]
    np.testing.assert_array_equal(inner, _fso(d, astype).encode(want).reshape(ras.shape))
    assert not got[ras.shape[0] :].any() and not got[:, ras.shape[1] :].any()
    back = _fso(d, astype).decode(np.ascontiguousarray(inner)).reshape(ras.shape)
    np.testing.assert_array_equal(back.view(np.uint32), want.view(np.uint32))
    # the same into a reused buffer (stale content must not leak into the padding)
    buf = np.full(out_shape, 99, astype)
    np.testing.assert_array_equal(fastcopy.quantised_copy(ras, out_shape, 10.0**d, astype, out=buf), got)


def test_quantised_copy_refuses_what_integers_cannot_hold():
    vals = (np.arange(-500, 500) / 100).astype(np.float32).reshape(10, 10, 10)
    assert fastcopy.quantised_copy(vals, vals.shape, 100.0, "int16") is not None
    for bad in (
        np.nextafter(np.float32(1.25), np.float32(2)),  # one ulp off a 2-decimal value
        np.float32(1.255),  # a third decimal
        np.float32(np.nan),
        np.float32(np.inf),
        np.float32(400.0),  # 40000 > int16
    ):
        v = vals.copy()
        v[3, 4, 5] = bad
        assert fastcopy.quantised_copy(v, v.shape, 100.0, "int16") is None, bad
    # a negative zero is the value 0: stored as 0, read back as 0.0
    v = vals.copy()
    v[0, 0, 0] = np.float32(-0.0)
    k = fastcopy.quantised_copy(v, v.shape, 100.0, "int16")
    assert k[0, 0, 0] == 0 and _fso(2, "<i2").decode(k).reshape(v.shape)[0, 0, 0] == 0.0


def test_decimal_places_finds_the_fewest_and_rejects_full_precision():
    rng = np.random.default_rng(1)
    x = rng.uniform(0.2, 3.0, (80, 80, 80))
    assert decimal_places(np.round(x, 4).astype(np.float32)) == 4
    assert decimal_places(np.round(x, 1).astype(np.float32)) == 1
    assert decimal_places(np.round(x * 1000).astype(np.float32)) == 0  # e.g. T1 in ms
    assert decimal_places(x.astype(np.float32)) is None
    assert decimal_places(x) is None  # float64 is never stored this way
    # one full-precision voxel outside the sample: the full check finds it, a sample not
    y = np.round(x, 2).astype(np.float32)
    y[0, 0, 1] = np.float32(1 / 3)
    assert decimal_places(y) is None
    assert decimal_places(y, sample=1000) == 2


def _r1_maps(root, n, *, decimals, shape=(30, 28, 26), orient="LIA", rng=0, site=None):
    """R1-like maps (s^-1) as mapping tools write them; returns (manifest, values)."""
    from helpers.store import HEADER, make_affine

    rng = np.random.default_rng(rng)
    os.makedirs(root, exist_ok=True)
    rows, vals = [HEADER], []
    for k in range(n):
        r1 = rng.uniform(0.3, 2.5, shape)
        r1[:3] = 0  # background
        d = decimals[k] if isinstance(decimals, list) else decimals
        r1 = (np.round(r1, d) if d is not None else r1).astype(np.float32)
        nib.save(nib.Nifti1Image(r1, make_affine(orient, shape)), os.path.join(root, f"s{k}.nii.gz"))
        rows.append(f"s{k},b,{site or 'A'},image,R1,,,s{k}.nii.gz")
        vals.append(r1)
    man = os.path.join(root, "m.csv")
    with open(man, "w") as f:
        f.write("\n".join(rows) + "\n")
    return man


def _ras(path):
    return np.asarray(nib.as_closest_canonical(nib.load(path)).dataobj)


def _codec_names(st, name="images/R1"):
    return [type(c).__name__ for c in chunk_codecs(st.zarr_array(name))]


def _store_bytes(path):
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)


def test_maps_with_fixed_decimals_are_stored_as_integers_and_read_back_exactly(tmp_path):
    import zarr

    man = _r1_maps(tmp_path / "in", 3, decimals=4)
    store = str(tmp_path / "c.zarr")
    rep = ingest(man, store, progress=False)
    assert rep.status.tolist() == ["written"] * 3
    st = open_store(store)
    assert _codec_names(st) == ["FixedScaleOffset", "BytesCodec", "BloscCodec"]
    # up to 2.5 s^-1 is k = 25000: int16 would leave under 1.5x headroom for other scans
    assert st.decimal_scale("images/R1") == (10000, np.dtype("int32"))
    view = st.image("R1")
    external = zarr.open_array(os.path.join(store, "images", "R1"), mode="r")
    for i in range(3):
        want = _ras(tmp_path / "in" / f"s{i}.nii.gz")
        sx, sy, sz = want.shape
        np.testing.assert_array_equal(st.load_image("R1", i).view(np.uint32), want.view(np.uint32))
        np.testing.assert_array_equal(view[i, :sx, :sy, :sz].values.view(np.uint32), want.view(np.uint32))
        np.testing.assert_array_equal(external[i, :sx, :sy, :sz], want)  # any zarr reader
    # the same manifest again: nothing rewritten; the stored values hash as before
    again = ingest(man, store, progress=False)
    assert again.status.tolist() == ["skipped"] * 3
    # smaller than the same maps stored as float32 (and than their .nii.gz files)
    import dask

    with dask.config.set({"thaldask.store.float-codec": "blosc"}):
        ingest(man, str(tmp_path / "f.zarr"), progress=False)
    assert _codec_names(open_store(str(tmp_path / "f.zarr"))) == ["BytesCodec", "BloscCodec"]
    chunks = lambda s: _store_bytes(os.path.join(s, "images", "R1", "c"))  # noqa: E731
    assert chunks(store) < 0.8 * chunks(str(tmp_path / "f.zarr"))


def test_changed_content_in_a_decimal_array_is_a_conflict_until_overwrite(tmp_path):

    man = _r1_maps(tmp_path / "in", 2, decimals=3)
    store = str(tmp_path / "c.zarr")
    ingest(man, store, progress=False)
    f = tmp_path / "in" / "s1.nii.gz"
    img = nib.load(f)
    new = np.asarray(img.dataobj).copy()
    new[10, 10, 10] = np.float32(9.876)
    nib.save(nib.Nifti1Image(new, img.affine), f)
    rep = ingest(man, store, progress=False)
    assert rep.status.tolist() == ["skipped", "failed"]
    assert "different content" in rep.reason[1]
    rep = ingest(man, store, progress=False, overwrite=True)
    assert rep.status.tolist() == ["skipped", "written"]
    np.testing.assert_array_equal(open_store(store).load_image("R1", 1), _ras(f))


def test_a_later_scan_with_more_decimals_reencodes_the_array_as_float32(tmp_path, capsys):
    import zarr

    # the first map (which decides) has 2 decimals, a later one full precision
    man = _r1_maps(tmp_path / "in", 4, decimals=[2, 2, None, 2])
    store = str(tmp_path / "c.zarr")
    rep = ingest(man, store, progress=True)
    assert rep.status.tolist() == ["written"] * 4, rep.reason.tolist()
    assert rep.reason[2] == (
        "values beyond the 2 decimals stored for images/R1: array re-encoded as float32 first"
    )
    assert rep.reason[[0, 1, 3]].tolist() == ["", "", ""]
    err = capsys.readouterr().err
    assert "images/R1: s2 b has values beyond the 2 decimals" in err
    assert "re-encoded its 3 stored scans as float32" in err
    st = open_store(store, consolidated=True)
    assert _codec_names(st) == ["BytesCodec", "BloscCodec"]
    assert st.decimal_scale("images/R1") is None
    for i in range(4):
        want = _ras(tmp_path / "in" / f"s{i}.nii.gz")
        np.testing.assert_array_equal(st.load_image("R1", i).view(np.uint32), want.view(np.uint32))
    # the decimal chunks are gone: only the float chunks (new key encoding) remain
    adir = os.path.join(store, "images", "R1")
    assert not os.path.exists(os.path.join(adir, "c")) or not any(
        fs for _, _, fs in os.walk(os.path.join(adir, "c"))
    )
    rows = scans_per_object(st.zarr_array("images/R1"))  # scans per chunk or shard file
    assert sorted(f for f in os.listdir(adir) if f != "zarr.json") == sorted(
        {f"{i // rows}.0.0.0" for i in range(4)}
    )
    ext = zarr.open_array(adir, mode="r")
    sx, sy, sz = st.shapes[2]
    np.testing.assert_array_equal(ext[2, :sx, :sy, :sz], _ras(tmp_path / "in" / "s2.nii.gz"))
    assert ingest(man, store, progress=False).status.tolist() == ["skipped"] * 4


def test_recode_leaves_float_arrays_alone(tmp_path):
    man = _r1_maps(tmp_path / "in", 2, decimals=None)
    store = str(tmp_path / "c.zarr")
    ingest(man, store, progress=False)
    st = open_store(store)
    assert _codec_names(st) == ["BytesCodec", "BloscCodec"]
    assert chunk_codecs(st.zarr_array("images/R1"))[1].shuffle.value == "shuffle"  # bytes
    before = _store_bytes(store)
    assert st.recode_as_float("images/R1") == 0
    assert _store_bytes(store) == before


def test_resampled_contrasts_are_not_stored_as_decimals(tmp_path):
    from helpers.store import HEADER, make_affine

    root = tmp_path / "in"
    root.mkdir()
    shape = (20, 18, 16)
    t1 = np.random.default_rng(0).normal(500, 30, shape).astype(np.int16)
    nib.save(nib.Nifti1Image(t1, make_affine("RAS", shape)), root / "t1.nii.gz")
    r1 = np.round(np.random.default_rng(1).uniform(0.3, 2, (10, 9, 8)), 3).astype(np.float32)
    nib.save(nib.Nifti1Image(r1, make_affine("RAS", (10, 9, 8), spacing=(2, 2, 2.4))),
             root / "r1.nii.gz")
    (root / "m.csv").write_text(
        "\n".join([HEADER, "s,b,A,image,T1w,,,t1.nii.gz", "s,b,A,image,R1,,,r1.nii.gz"]) + "\n"
    )
    store = str(tmp_path / "c.zarr")
    rep = ingest(root / "m.csv", store, progress=False)
    assert rep.status.tolist() == ["written", "written"] and rep.resampled.tolist() == [False, True]
    st = open_store(store)
    assert _codec_names(st) == ["BytesCodec", "BloscCodec"]  # interpolated: no decimals


def test_non_finite_voxels_in_a_decimal_map_become_zero_and_are_recorded(tmp_path):
    man = _r1_maps(tmp_path / "in", 2, decimals=4)
    f = tmp_path / "in" / "s0.nii.gz"
    img = nib.load(f)
    v = np.asarray(img.dataobj).copy()
    v[5, 5, 5], v[6, 6, 6] = np.nan, np.inf
    nib.save(nib.Nifti1Image(v, img.affine), f)
    store = str(tmp_path / "c.zarr")
    rep = ingest(man, store, progress=False)
    assert rep.status.tolist() == ["written", "written"]
    assert "2 non-finite voxels set to 0" in rep.reason[0]
    st = open_store(store)
    assert st.decimal_scale("images/R1") is not None
    assert st.records("images/R1").nan_replaced.tolist() == [True, False]
    want = _ras(f)
    want = np.where(np.isfinite(want), want, np.float32(0))
    np.testing.assert_array_equal(st.load_image("R1", 0), want)


def test_huge_finite_values_are_not_taken_for_non_finite(tmp_path):
    # their float32 sum overflows: the quick finiteness test must fall back to the full one
    man = _r1_maps(tmp_path / "in", 1, decimals=None)
    f = tmp_path / "in" / "s0.nii.gz"
    img = nib.load(f)
    v = np.asarray(img.dataobj).copy()
    v[10:12] = np.float32(3e38)
    nib.save(nib.Nifti1Image(v, img.affine), f)
    store = str(tmp_path / "c.zarr")
    rep = ingest(man, store, progress=False)
    assert rep.status.tolist() == ["written"] and rep.reason[0] == ""
    np.testing.assert_array_equal(open_store(store).load_image("R1", 0), _ras(f))


def test_whole_chunk_write_of_a_decimal_array_stores_the_bytes_zarr_writes(tmp_path):
    import zarr

    from thaldask.store.codecs import array_codecs, write_whole_chunk

    path = tmp_path / "s.zarr"
    zarr.open_group(path, mode="w")
    z = zarr.create_array(store=str(path), name="images/R1", shape=(2, 20, 30, 40),
                          chunks=(1, 20, 30, 40), dtype="float32", fill_value=0,
                          **array_codecs("float32", None, (3, "int16")))
    vals = (np.random.default_rng(0).integers(-9000, 9000, (20, 30, 40)) / 1000).astype(np.float32)
    z[0] = vals
    k = fastcopy.quantised_copy(vals, vals.shape, 1000.0, np.int16)
    assert write_whole_chunk(z, 1, k)
    c = path / "images" / "R1" / "c"
    assert (c / "1/0/0/0").read_bytes() == (c / "0/0/0/0").read_bytes()
    np.testing.assert_array_equal(zarr.open_array(str(path / "images" / "R1"))[1], vals)
    assert not write_whole_chunk(z, 1, vals)  # values, not stored integers: zarr's path


def test_writing_values_into_a_decimal_array_is_exact_or_refused(tmp_path):
    from thaldask.errors import StoreError

    man = _r1_maps(tmp_path / "in", 2, decimals=3)
    store = str(tmp_path / "c.zarr")
    ingest(man, store, progress=False)
    st = open_store(store)
    shape = tuple(st.shapes[1])
    fine = np.round(np.random.default_rng(5).uniform(0.3, 2, shape), 3).astype(np.float32)
    assert st.write_scan_array("images/R1", 1, fine, content_sha256=b"\1" * 32,
                               overwrite=True) == "written"
    np.testing.assert_array_equal(st.load_image("R1", 1), fine)
    odd = fine.copy()
    odd[1, 2, 3] = np.float32(0.12345)
    with pytest.raises(StoreError, match=r"images/R1 stores values with 3 decimals; scan 1"):
        st.write_scan_array("images/R1", 1, odd, content_sha256=b"\2" * 32, overwrite=True)
    np.testing.assert_array_equal(st.load_image("R1", 1), fine)  # nothing written
    assert st.has_image("R1").tolist() == [True, True]  # and still recorded as written


@pytest.mark.slow
def test_reencoding_on_a_local_cluster_with_worker_processes(tmp_path):
    from distributed import Client, LocalCluster

    man = _r1_maps(tmp_path / "in", 6, decimals=[3, 3, None, 3, 3, None])
    store = str(tmp_path / "c.zarr")
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, nanny=False,
                      dashboard_address=":0", silence_logs=40) as cluster, Client(cluster) as client:
        rep = ingest(man, store, client=client, progress=False)
        assert rep.status.tolist() == ["written"] * 6, rep.reason.tolist()
        st = open_store(store)
        assert st.decimal_scale("images/R1") is None
        means = st.image("R1").mean(("x", "y", "z")).compute().values  # on the workers
    want = [_ras(tmp_path / "in" / f"s{i}.nii.gz") for i in range(6)]
    for i in range(6):
        np.testing.assert_array_equal(st.load_image("R1", i).view(np.uint32), want[i].view(np.uint32))
    grid = np.prod(st.grid_shape)
    np.testing.assert_allclose(means, [w.astype(np.float64).sum() / grid for w in want], rtol=1e-5)


def test_float64_maps_with_fixed_decimals_are_stored_as_integers_too(tmp_path):
    from helpers.store import HEADER, make_affine

    root = tmp_path / "in"
    root.mkdir()
    shape = (30, 28, 26)
    r1 = np.round(np.random.default_rng(4).uniform(0.3, 2.0, shape), 4)  # float64, as written
    nib.save(nib.Nifti1Image(r1, make_affine("LAS", shape)), root / "r1.nii.gz")
    (root / "m.csv").write_text("\n".join([HEADER, "s,b,A,image,R1,,,r1.nii.gz"]) + "\n")
    store = str(tmp_path / "c.zarr")
    assert ingest(root / "m.csv", store, progress=False).status.tolist() == ["written"]
    st = open_store(store)
    assert st.decimal_scale("images/R1") == (10000, np.dtype("int16"))  # up to 20000
    # the store holds float32 values: the float64 ones rounded to float32, nothing else
    want = _ras(root / "r1.nii.gz").astype(np.float32)
    np.testing.assert_array_equal(st.load_image("R1", 0).view(np.uint32), want.view(np.uint32))
