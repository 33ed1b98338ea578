"""Builders of bad inputs for the cohort tests: raw NIfTI headers, manifests, checksums."""

import gzip
import hashlib
import os

import nibabel as nib
import numpy as np

from helpers.files import HEADER, write_nifti


def raw_nifti(path, shape=(8, 8, 8), dtype=np.int16, *, edit=None, n_data_bytes=None, data=None):
    """Write a NIfTI-1 file byte by byte so that nibabel's save cannot repair the header.

    ``edit(hdr)`` changes the header after a sane default (1 mm, qform = sform = identity);
    ``n_data_bytes`` truncates the data block.
    """
    hdr = nib.Nifti1Header()
    hdr.set_data_dtype(dtype)
    hdr.set_data_shape(shape)
    hdr.set_qform(np.eye(4), code=1)
    hdr.set_sform(np.eye(4), code=1)
    hdr["vox_offset"] = 352
    if edit is not None:
        edit(hdr)
    if data is None:
        n = int(np.prod(shape)) * np.dtype(dtype).itemsize
        blob = bytes(n if n_data_bytes is None else n_data_bytes)
    else:
        blob = np.asarray(data, dtype=dtype).tobytes(order="F")
    raw = hdr.binaryblock + b"\0" * 4 + blob
    path = str(path)
    with open(path, "wb") as f:
        f.write(gzip.compress(raw) if path.endswith(".gz") else raw)
    return path


def set_pixdim(hdr, i, value):
    p = hdr["pixdim"].copy()
    p[i] = value
    hdr["pixdim"] = p


def good_image(path, shape=(8, 8, 8), data=None):
    return write_nifti(path, np.zeros(shape, np.int16) if data is None else data)


def write_manifest(folder, rows, name="m.csv", header=HEADER):
    p = folder / name
    p.write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")
    return p


def digests(folder):
    """sha256 of every regular file under ``folder`` (links not followed)."""
    out = {}
    for dirpath, _dirs, files in os.walk(folder):
        for f in files:
            p = os.path.join(dirpath, f)
            if os.path.islink(p) or not os.path.isfile(p):
                out[p] = "link" if os.path.islink(p) else "other"
                continue
            with open(p, "rb") as fh:
                out[p] = hashlib.sha256(fh.read()).hexdigest()
    return out


def one_line(msg):
    assert "\n" not in msg and msg.strip() == msg and msg, repr(msg)
    return msg
