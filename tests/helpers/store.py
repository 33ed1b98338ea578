"""Tiny synthetic NIfTI cohorts for store tests (a few kB each)."""

from __future__ import annotations

import os

import nibabel as nib
import numpy as np

from helpers.files import HEADER, write_nifti

__all__ = ["HEADER", "ORIENTATIONS", "box_mask", "make_affine", "make_cohort", "oblique_affine",
           "small_cohort_files", "write_nifti"]


def box_mask(shape, *, left=10, right=49, dtype=np.uint8):
    """Two boxes labelled left/right (in voxel order of the file)."""
    m = np.zeros(shape, dtype)
    cx = shape[0] // 2
    m[cx - 5 : cx - 1, 3:7, 3:6] = left
    m[cx + 1 : cx + 5, 3:7, 3:6] = right
    return m


ORIENTATIONS = {
    "RAS": np.diag([1.0, 1.0, 1.0, 1.0]),
    "LAS": np.array([[-1.0, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]),
    # LIA: i -> Left, j -> Inferior, k -> Anterior (FreeSurfer conformed)
    "LIA": np.array([[-1.0, 0, 0, 0], [0, 0, 1, 0], [0, -1, 0, 0], [0, 0, 0, 1]]),
}


def oblique_affine():
    a = np.deg2rad(12.0)
    rot = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    aff = np.eye(4)
    aff[:3, :3] = rot @ np.diag([0.9, 1.1, 1.3])
    aff[:3, 3] = [-8.0, -11.0, -7.5]
    return aff


def make_affine(orient: str, shape, spacing=(1.0, 1.0, 1.2)):
    if orient == "oblique":
        return oblique_affine()
    aff = ORIENTATIONS[orient].copy()
    aff[:3, :3] = aff[:3, :3] @ np.diag(spacing)
    # centre the grid roughly on the origin
    centre = aff[:3, :3] @ ((np.asarray(shape) - 1) / 2.0)
    aff[:3, 3] = -centre
    return aff


def make_cohort(root, specs, *, rng=0, extra_rows=()):
    """Write scans and a manifest; ``specs`` = list of dicts with subject, timepoint,
    orient, shape (and optional site, fmt 'nii'/'nii.gz'/'mgz'). Returns manifest path."""
    rng = np.random.default_rng(rng)
    os.makedirs(root, exist_ok=True)
    rows = [HEADER]
    for sp in specs:
        shape = tuple(sp.get("shape", (20, 16, 12)))
        aff = sp.get("affine", make_affine(sp.get("orient", "RAS"), shape))
        img = rng.normal(100, 10, shape).astype(np.float32)
        mask = box_mask(shape)
        s, t, site = sp["subject"], sp["timepoint"], sp.get("site", "A")
        ext = sp.get("fmt", "nii.gz")
        fi, fm = f"{s}_{t}_T1w.{ext}", f"{s}_{t}_gt.{ext}"
        if ext == "mgz":
            nib.save(nib.MGHImage(img, aff), os.path.join(root, fi))
            nib.save(nib.MGHImage(mask.astype(np.int32), aff), os.path.join(root, fm))
        else:
            write_nifti(os.path.join(root, fi), img, aff, descrip=b"patient John Doe 1970-01-01")
            write_nifti(os.path.join(root, fm), mask, aff, descrip=b"rater Jane")
        rows.append(f"{s},{t},{site},image,T1w,,,{fi}")
        rows.append(f"{s},{t},{site},mask,T1w,gt,freesurfer,{fm}")
    rows.extend(extra_rows)
    p = os.path.join(root, "manifest.csv")
    with open(p, "w") as f:
        f.write("\n".join(rows) + "\n")
    return p


def small_cohort_files(tmp_path):
    specs = [
        {"subject": "sub-01", "timepoint": "baseline", "orient": "RAS", "shape": (20, 16, 12)},
        {"subject": "sub-01", "timepoint": "m12", "orient": "LAS", "shape": (20, 16, 12)},
        {"subject": "sub-02", "timepoint": "baseline", "orient": "LIA", "shape": (18, 14, 16), "site": "B"},
    ]
    return make_cohort(tmp_path / "in", specs)


def lose_chunk(store, name, scan):
    """Lose scan ``scan``'s data from array ``name`` of the test's own store: its chunk
    file, or in a sharded array its inner chunk from the shard's index (the other scans of
    the shard stay readable). Returns the key :func:`~thaldask.store.verify.missing_chunks`
    reports."""
    import google_crc32c

    from thaldask.store import open_store
    from thaldask.store.shards import EMPTY, is_sharded, parse_index, scans_per_object

    z = open_store(store).zarr_array(name)
    if not is_sharded(z):
        key = z.metadata.encode_chunk_key((scan, 0, 0, 0))
        path = os.path.join(store, name, key)
        assert os.path.isfile(path)
        os.remove(path)
        return key
    rows = scans_per_object(z)
    key = z.metadata.encode_chunk_key((scan // rows, 0, 0, 0))
    path = os.path.join(store, name, key)
    with open(path, "rb") as f:
        raw = f.read()
    index = parse_index(z, raw).copy()
    assert index[scan % rows, 0, 0, 0, 0] != EMPTY
    index[scan % rows, 0, 0, 0] = EMPTY
    body = index.astype("<u8").tobytes()
    with open(path, "wb") as f:  # the same shard without that scan's chunk
        f.write(raw[: len(raw) - len(body) - 4] + body + np.array(google_crc32c.value(body), "<u4").tobytes())
    return f"{key}[{scan % rows}, 0, 0, 0]"


def data_file_stamps(store) -> dict:
    """Modification times of every image and mask data file (chunks, shards) of a store."""
    out = {}
    for top in ("images", "masks", "probs"):
        for d, _, fs in os.walk(os.path.join(store, top)):
            for f in fs:
                if f != "zarr.json":
                    out[os.path.join(d, f)] = os.stat(os.path.join(d, f)).st_mtime_ns
    return out


def corrupt_chunk(store, name, scan):
    """Overwrite scan ``scan``'s encoded chunk of array ``name`` with bytes no codec decodes
    (its chunk file, or in a sharded array its bytes inside the shard, index kept)."""
    from thaldask.store import open_store
    from thaldask.store.shards import is_sharded, parse_index, scans_per_object

    z = open_store(store).zarr_array(name)
    if not is_sharded(z):
        path = os.path.join(store, name, z.metadata.encode_chunk_key((scan, 0, 0, 0)))
        assert os.path.isfile(path)
        with open(path, "wb") as f:
            f.write(b"not zstd")
        return
    rows = scans_per_object(z)
    path = os.path.join(store, name, z.metadata.encode_chunk_key((scan // rows, 0, 0, 0)))
    with open(path, "rb") as f:
        raw = bytearray(f.read())
    off, nb = (int(v) for v in parse_index(z, bytes(raw))[scan % rows, 0, 0, 0])
    raw[off:off + nb] = b"\x07" * nb
    with open(path, "wb") as f:
        f.write(bytes(raw))
