"""The bad-input corpus, end to end: for every kind of bad file, `thaldask ingest` fails only
that row with a one-line reason naming the row and the file (exit code 1), the rest of the
cohort is ingested and scored, and no file outside the store changes.

Each case builds a small cohort of two good scans (image, ground truth, a method's mask)
plus one bad row. Kinds that are usable but odd (warnings) are in the second table.
"""

from __future__ import annotations

import os

import nibabel as nib
import numpy as np
import pytest
from click.testing import CliRunner
from helpers.cohort import digests, raw_nifti, set_pixdim
from helpers.files import HEADER, write_nifti
from helpers.store import box_mask

from thaldask.cli import main
from thaldask.metrics.evaluate import evaluate
from thaldask.store import open_store

SHAPE = (20, 16, 12)
AFF = np.diag([1.0, 1.0, 1.2, 1.0])


def _image(path, data=None, affine=AFF):
    rng = np.random.default_rng(0)
    return write_nifti(path, rng.integers(0, 1000, SHAPE).astype(np.int16) if data is None else data, affine)


def _mask(path, data=None, affine=AFF):
    return write_nifti(path, box_mask(SHAPE) if data is None else data, affine)


def _qform_sform_disagree(h):
    shifted = np.eye(4)
    shifted[0, 3] = 5.0
    h.set_sform(shifted, code=1)


def _singular(h):
    h["qform_code"] = 0
    h["srow_z"] = [0.0, 0.0, 0.0, 0.0]


def _nonfinite(h):
    h["qform_code"] = 0
    h["srow_x"] = [np.nan, 0.0, 0.0, 0.0]


def _big_voxels(h):
    set_pixdim(h, 1, 25.0)
    h.set_sform(np.diag([25.0, 1, 1, 1]), code=1)
    h.set_qform(np.diag([25.0, 1, 1, 1]), code=1)


def _zero_pixdim_qform(h):
    set_pixdim(h, 1, 0.0)
    h["sform_code"] = 0


def _truncated_gz(p):
    import gzip

    _image(p.with_suffix(".tmp.nii.gz"))
    raw = gzip.decompress(p.with_suffix(".tmp.nii.gz").read_bytes())
    os.remove(p.with_suffix(".tmp.nii.gz"))
    p.write_bytes(gzip.compress(raw[: len(raw) // 2])[:-20])


def _far(path):
    far = AFF.copy()
    far[:3, 3] += 500
    _mask(path, affine=far)


#: (kind, file kind, labels, make(path), words the one-line reason holds)
FAILS = [
    ("missing file", "image", "", None, "file not found"),
    ("empty file", "image", "", lambda p: p.write_bytes(b""), "empty file (0 bytes)"),
    ("a folder", "image", "", lambda p: p.mkdir(), "is a folder"),
    ("symlink loop", "image", "", lambda p: os.symlink(p.name, p), "symbolic link loop"),
    ("broken symlink", "image", "", lambda p: os.symlink("nowhere.nii.gz", p), "broken symbolic link"),
    ("wrong extension", "image", "", lambda p: p.write_bytes(b"\x89PNG...."), "unsupported file type"),
    ("junk header", "image", "", lambda p: p.write_bytes(b"not a nifti header " * 40), "unreadable header"),
    ("not gzip", "image", "", lambda p: p.write_bytes(b"plain text, no gzip" * 30), "unreadable header"),
    ("text file named .mgz", "image", "", lambda p: p.write_bytes(b"subject,timepoint\n" * 20), "unreadable header"),
    ("2-D image", "image", "", lambda p: raw_nifti(p, shape=(20, 16)), "is 2-D"),
    ("4-D, 3 volumes", "image", "", lambda p: raw_nifti(p, shape=(20, 16, 12, 3)), "one 3-D volume is needed"),
    ("10000^3 declared", "image", "", lambda p: raw_nifti(p, shape=(10000,) * 3, n_data_bytes=0),
     "declares 10000x10000x10000 voxels"),
    ("one slice", "image", "", lambda p: raw_nifti(p, shape=(20, 16, 1)), "at least 2 per axis"),
    ("negative voxel size", "image", "", lambda p: raw_nifti(p, SHAPE, edit=lambda h: set_pixdim(h, 2, -1.0)),
     "negative"),
    ("NaN voxel size", "image", "", lambda p: raw_nifti(p, SHAPE, edit=lambda h: set_pixdim(h, 3, np.nan)),
     "not finite"),
    ("25 mm voxels", "image", "", lambda p: raw_nifti(p, SHAPE, edit=_big_voxels), "limit 20 mm"),
    ("zero pixdim, qform", "image", "", lambda p: raw_nifti(p, SHAPE, edit=_zero_pixdim_qform), "qform needs it"),
    ("singular affine", "image", "", lambda p: raw_nifti(p, SHAPE, edit=_singular), "singular"),
    ("non-finite affine", "image", "", lambda p: raw_nifti(p, SHAPE, edit=_nonfinite), "non-finite"),
    ("truncated .nii", "image", "", lambda p: raw_nifti(p, SHAPE, n_data_bytes=100), "truncated"),
    ("truncated .nii.gz", "image", "", _truncated_gz, "truncated"),
    ("qform/sform disagree", "image", "", lambda p: raw_nifti(p, SHAPE, edit=_qform_sform_disagree),
     "qform and sform"),
    ("NaN-filled image", "image", "", lambda p: _image(p, np.full(SHAPE, np.nan, np.float32)), "NaN-filled"),
    ("inf-filled image", "image", "", lambda p: _image(p, np.full(SHAPE, np.inf, np.float32)), "NaN-filled"),
    ("complex image", "image", "", lambda p: _image(p, np.ones(SHAPE, np.complex64)), "holds complex64 values"),
    # masks of a good scan (method "bad")
    ("mask: missing", "mask", "freesurfer", None, "file not found"),
    ("mask: empty file", "mask", "freesurfer", lambda p: p.write_bytes(b""), "empty file (0 bytes)"),
    ("mask: a folder", "mask", "freesurfer", lambda p: p.mkdir(), "is a folder"),
    ("mask: broken symlink", "mask", "freesurfer", lambda p: os.symlink("nowhere.nii.gz", p),
     "broken symbolic link"),
    ("mask: wrong extension", "mask", "freesurfer", lambda p: p.write_bytes(b"L,R\n10,49\n"), "unsupported file type"),
    ("mask: junk header", "mask", "freesurfer", lambda p: p.write_bytes(b"junk " * 100), "unreadable header"),
    ("mask: 2-D", "mask", "freesurfer", lambda p: raw_nifti(p, shape=(20, 16), dtype=np.uint8), "is 2-D"),
    ("mask: 4-D", "mask", "freesurfer", lambda p: raw_nifti(p, shape=(20, 16, 12, 2), dtype=np.uint8),
     "one 3-D volume is needed"),
    ("mask: 10000^3 declared", "mask", "freesurfer",
     lambda p: raw_nifti(p, shape=(10000,) * 3, dtype=np.uint8, n_data_bytes=0), "declares 10000x10000x10000"),
    ("mask: singular affine", "mask", "freesurfer", lambda p: raw_nifti(p, SHAPE, np.uint8, edit=_singular),
     "singular"),
    ("mask: truncated .nii", "mask", "freesurfer", lambda p: raw_nifti(p, SHAPE, np.uint8, n_data_bytes=10),
     "truncated"),
    ("mask: non-integer values", "mask", "freesurfer",
     lambda p: _mask(p, box_mask(SHAPE).astype(np.float32) * 0.37), "non-integer"),
    ("mask: NaN values", "mask", "freesurfer", lambda p: _mask(p, np.full(SHAPE, np.nan, np.float32)),
     "non-integer"),
    ("mask: intensity image", "mask", "freesurfer",
     lambda p: _mask(p, np.random.default_rng(1).normal(500, 100, SHAPE).astype(np.float32)), "non-integer"),
    ("mask: labels above 65535", "mask", "freesurfer",
     lambda p: _mask(p, np.where(box_mask(SHAPE) > 0, 70000, 0).astype(np.int32)), "outside 0..65535"),
    ("mask: negative labels", "mask", "freesurfer",
     lambda p: _mask(p, np.where(box_mask(SHAPE) > 0, -3, 0).astype(np.int16)), "outside 0..65535"),
    ("mask: unexpected explicit labels", "mask", "L:10;R:49",
     lambda p: _mask(p, box_mask(SHAPE, left=3, right=4)), "unexpected labels"),
    ("mask: 0/1 declared freesurfer", "mask", "freesurfer", lambda p: _mask(p, box_mask(SHAPE, left=1, right=1)),
     "did you mean binary?"),
    ("mask: 0/1 declared dbsegment", "mask", "dbsegment", lambda p: _mask(p, box_mask(SHAPE, left=1, right=1)),
     "labels found [0, 1]"),
    ("mask: other shape, same affine", "mask", "freesurfer", lambda p: _mask(p, box_mask((20, 16, 11))),
     "has shape (20, 16, 11)"),
    ("mask: grid far from its image", "mask", "freesurfer", _far, "does not overlap"),
    ("mask: qform/sform disagree", "mask", "freesurfer",
     lambda p: raw_nifti(p, SHAPE, np.uint8, edit=_qform_sform_disagree), "qform and sform"),
    ("mask: NaN voxel size", "mask", "freesurfer",
     lambda p: raw_nifti(p, SHAPE, np.uint8, edit=lambda h: set_pixdim(h, 3, np.nan)), "not finite"),
    # ground truth that misses a side
    ("gt: no left label", "gt", "freesurfer", lambda p: _mask(p, box_mask(SHAPE, left=0)), "left thalamus"),
    ("gt: no right label", "gt", "freesurfer", lambda p: _mask(p, box_mask(SHAPE, right=0)), "right thalamus"),
    ("gt: 0/1 declared synthseg", "gt", "synthseg", lambda p: _mask(p, box_mask(SHAPE, left=1, right=1)),
     "did you mean binary?"),
]

#: usable but odd: stored, with a one-line warning naming the row and the file
WARNS = [
    ("image with a few NaN voxels", "image",
     lambda p: _image(p, np.where(np.arange(np.prod(SHAPE)).reshape(SHAPE) == 5, np.nan, 1.0).astype(np.float32)),
     "non-finite voxels set to 0"),
    ("all-zero image", "image", lambda p: _image(p, np.zeros(SHAPE, np.int16)), "image is all zeros"),
    ("zero pixdim, no qform/sform", "image",
     lambda p: raw_nifti(p, SHAPE, edit=lambda h: (set_pixdim(h, 1, 0.0), h.__setitem__("qform_code", 0),
                                                   h.__setitem__("sform_code", 0))), "taken as 1 mm"),
    ("method mask missing a side", "mask", lambda p: _mask(p, box_mask(SHAPE, left=0)), "left thalamus"),
]


def _cohort(folder):
    folder.mkdir()
    rows = []
    for s in ("s0", "s1"):
        _image(folder / f"{s}_T1w.nii.gz")
        _mask(folder / f"{s}_gt.nii.gz")
        _mask(folder / f"{s}_m.nii.gz")
        rows += [f"{s},baseline,A,image,T1w,,,{s}_T1w.nii.gz",
                 f"{s},baseline,A,mask,T1w,gt,freesurfer,{s}_gt.nii.gz",
                 f"{s},baseline,A,mask,T1w,m,freesurfer,{s}_m.nii.gz"]
    return rows


def _name(kind, filekind, make):
    if "extension" in kind:
        return "bad.png" if filekind == "image" else "bad.txt"
    if "mgz" in kind:
        return "bad.mgz"
    if "truncated .nii" in kind and ".nii.gz" not in kind:
        return "bad.nii"  # uncompressed: its size tells the truncation
    return "bad.nii.gz"


def _bad_row(filekind, labels, name):
    if filekind == "image":
        return f"bad,baseline,A,image,T1w,,,{name}"
    if filekind == "gt":
        return f"sg,baseline,A,mask,T1w,gt,{labels},{name}"
    return f"s0,baseline,A,mask,T1w,bad,{labels},{name}"


@pytest.fixture(scope="module")
def scheduler():
    """One Dask cluster for the whole corpus (threads in this process, a real scheduler)."""
    from distributed import LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=":0",
                      silence_logs=40) as cluster:
        yield cluster.scheduler_address


def _run(tmp_path, filekind, labels, make, kind, scheduler):
    folder = tmp_path / "cohort"
    rows = _cohort(folder)
    name = _name(kind, filekind, make)
    if filekind == "gt":  # a third scan whose ground truth is the bad file
        _image(folder / "sg_T1w.nii.gz")
        rows.append("sg,baseline,A,image,T1w,,,sg_T1w.nii.gz")
    if make is not None:
        make(folder / name)
    rows.append(_bad_row(filekind, labels, name))
    (folder / "manifest.csv").write_text("\n".join([HEADER, *rows]) + "\n")
    before = digests(folder)
    store = str(tmp_path / "c.zarr")
    res = CliRunner().invoke(main, ["ingest", str(folder / "manifest.csv"), "--store", store, "--no-progress",
                                    "--scheduler", scheduler])
    assert digests(folder) == before, "an input file changed"
    assert sorted(os.listdir(tmp_path)) == ["c.zarr", "cohort"]  # nothing else created, lock released
    return res, store, len(rows) + 1  # the bad row's number (header = row 1)


def _scored(store):
    ds = evaluate(store, progress=False, surface=False, csv_path="")
    d = ds.dice.sel({"method": "m", "contrast": "T1w", "side": "total", "timepoint": "baseline"})
    return [float(d.sel(subject=s)) for s in ("s0", "s1")]


@pytest.mark.slow
@pytest.mark.parametrize("kind,filekind,labels,make,words", FAILS, ids=[k[0] for k in FAILS])
def test_bad_file_fails_only_its_row(tmp_path, scheduler, kind, filekind, labels, make, words):
    res, store, row = _run(tmp_path, filekind, labels, make, kind, scheduler)
    assert res.exit_code == 1, res.output
    lines = [x for x in res.output.splitlines() if x.startswith("thaldask: row")]
    assert len(lines) == 1, res.output
    assert lines[0].startswith(f"thaldask: row {row}: bad."), lines[0]
    assert words in lines[0], lines[0]
    st = open_store(store)
    subjects = list(st.scans.subject)
    assert subjects[:2] == ["s0", "s1"]
    assert st.has_image("T1w")[:2].all() and st.has_mask("gt", "T1w")[:2].all()
    if "bad" in subjects:  # found only when its data were decoded: a slot without an image
        assert not st.has_image("T1w")[subjects.index("bad")]
    if filekind == "mask":
        assert ("bad", "T1w") not in st.methods or not st.has_mask("bad", "T1w").any()
    assert _scored(store) == [1.0, 1.0]  # the rest of the cohort is scored


@pytest.mark.slow
@pytest.mark.parametrize("kind,filekind,make,words", WARNS, ids=[k[0] for k in WARNS])
def test_odd_file_is_stored_with_a_one_line_warning(tmp_path, scheduler, kind, filekind, make, words):
    res, store, row = _run(tmp_path, filekind, "freesurfer", make, kind, scheduler)
    assert res.exit_code == 0, res.output
    warn = [x for x in res.output.splitlines() if x.startswith("thaldask: warning:")]
    assert any(f"row {row}: 'bad." in x and words in x for x in warn), res.output
    assert _scored(store) == [1.0, 1.0]


def test_corpus_has_at_least_fifty_kinds():
    assert len({k[0] for k in FAILS} | {k[0] for k in WARNS}) >= 50


def test_write_nifti_round_trip_sanity(tmp_path):
    p = _mask(tmp_path / "m.nii.gz")
    assert set(np.unique(np.asarray(nib.load(p).dataobj))) == {0, 10, 49}
