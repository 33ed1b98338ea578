"""Read NIfTI/MGH files, reorient losslessly to RAS, resample through world coordinates.

Everything here is plain numpy/nibabel on one file: decoding, orientation, grids, content
hashes. The Dask layer lives in :mod:`thaldask.store.ingest`.
"""

from __future__ import annotations

import gzip
import hashlib
import zlib
from dataclasses import dataclass

import numpy as np

from thaldask._shared.paths import is_url
from thaldask.errors import GridMismatchError, ScanError
from thaldask.store.format import FORMAT_MGH, FORMAT_NIFTI1, FORMAT_NIFTI2

__all__ = [
    "Volume",
    "load_volume",
    "read_bytes",
    "decompress",
    "header_bytes",
    "header_block",
    "scrub_header",
    "to_ras",
    "from_ras",
    "ras_affine",
    "ras_orientation",
    "ras_shape",
    "axcodes",
    "same_grid",
    "check_overlap",
    "resample_to",
    "content_hash",
]

#: header fields that can carry personal data; never copied into the store
PRIVATE_FIELDS = ("descrip", "db_name", "aux_file", "intent_name")


@dataclass
class Volume:
    """One decoded file: voxels in file order, affine, scrubbed header bytes."""

    data: np.ndarray
    affine: np.ndarray
    header: bytes  # scrubbed binary header (NIfTI) or MGH header block
    format: int
    file_sha256: bytes
    scaled: bool


def read_bytes(path: str) -> bytes:
    """Whole file as bytes (local path or fsspec URL)."""
    if is_url(path):
        import fsspec

        with fsspec.open(path, "rb") as f:
            return f.read()
    with open(path, "rb") as f:
        return f.read()


try:  # ISA-L inflates gzip about twice as fast as zlib
    from isal import igzip as _gzip
    from isal import isal_zlib as _zlib
except ImportError:  # pragma: no cover - isal is a dependency; zlib still works
    _gzip, _zlib = gzip, zlib


def decompress(raw: bytes) -> bytes:
    """gunzip if gzip-compressed (ISA-L when available); a truncated stream raises ScanError.

    A file of one gzip member (what nibabel and every NIfTI tool write) is inflated in one
    call, 30 % faster than the gzip-file reader, which still takes files of several members.
    """
    if raw[:2] != b"\x1f\x8b":
        return raw
    try:
        d = _zlib.decompressobj(wbits=31)
        out = d.decompress(raw)
        if d.eof and not d.unused_data:
            return out
        return _gzip.decompress(raw)  # several members, or truncated: the reader says which
    except (EOFError, OSError, ValueError, zlib.error, _zlib.error) as exc:
        raise ScanError(f"corrupt or truncated gzip stream ({_first_line(exc)})") from None


def _nifti_class(raw: bytes):
    import nibabel as nib

    if len(raw) >= 4:
        for order in ("<", ">"):
            n = int(np.frombuffer(raw[:4], dtype=f"{order}i4")[0])
            if n == 348:
                return nib.Nifti1Image, FORMAT_NIFTI1
            if n == 540:
                return nib.Nifti2Image, FORMAT_NIFTI2
    return None, None


def scrub_header(hdr) -> None:
    """Blank the header fields that can carry personal data (in place)."""
    for f in PRIVATE_FIELDS:
        if f in hdr:
            hdr[f] = b""


def header_bytes(file: str) -> tuple[int, bytes]:
    """(format code, scrubbed header bytes) of a NIfTI-1/NIfTI-2/MGH file's header."""
    import nibabel as nib

    return header_block(nib.load(file).header)


def header_block(header) -> tuple[int, bytes]:
    """(format code, scrubbed header bytes) of a header as nibabel loaded it, given as the
    header or as (header class name, its bytes); the header itself is not changed."""
    import nibabel as nib

    if isinstance(header, tuple):
        from nibabel.freesurfer.mghformat import MGHHeader

        cls = {"Nifti2Header": nib.Nifti2Header, "Nifti1Header": nib.Nifti1Header,
               "MGHHeader": MGHHeader}[header[0]]
        header = cls(binaryblock=header[1], check=False)
    if isinstance(header, nib.Nifti2Header):
        fmt = FORMAT_NIFTI2
    elif isinstance(header, nib.Nifti1Header):
        fmt = FORMAT_NIFTI1
    else:
        fmt = FORMAT_MGH
    hdr = header.copy()
    if fmt != FORMAT_MGH:
        scrub_header(hdr)
    return fmt, bytes(hdr.binaryblock)


def load_volume(path: str, *, kind: str = "image") -> Volume:
    """Decode one file fully.

    Voxels come back as stored in the file (integers stay integers) unless the file is
    scaled (``scl_slope``/``scl_inter``), then float32 with the scaling applied. NIfTI
    voxels are a zero-copy view of the decompressed bytes. 4D files with one volume are
    squeezed.

    Raises
    ------
    ScanError
        truncated data, wrong dimensionality, unreadable file.
    """
    import io


    raw = read_bytes(path)
    sha = hashlib.sha256(raw).digest()
    data_bytes = decompress(raw)
    cls, fmt = _nifti_class(data_bytes)
    if cls is None:
        return _load_mgh(data_bytes, sha, kind)
    try:
        hdr = cls.header_class.from_fileobj(io.BytesIO(data_bytes[:1024]))
    except Exception as exc:
        raise ScanError(f"cannot decode header ({_first_line(exc)})") from None
    full = tuple(int(n) for n in hdr.get_data_shape())
    shape = full[:3] if len(full) == 4 and full[3] == 1 else full
    if len(shape) != 3:
        raise ScanError(f"has {len(full)} dimensions {full}; a 3D volume is required")
    dtype = np.dtype(hdr.get_data_dtype())
    offset = int(hdr.get_data_offset())
    n = int(np.prod(shape))
    if len(data_bytes) < offset + n * dtype.itemsize:
        raise ScanError(
            f"truncated voxel data ({len(data_bytes) - offset} bytes, {n * dtype.itemsize} expected)"
        )
    data = np.frombuffer(data_bytes, dtype=dtype, count=n, offset=offset).reshape(shape, order="F")
    slope, inter = hdr.get_slope_inter()
    slope = 1.0 if slope is None or not np.isfinite(slope) else float(slope)
    inter = 0.0 if inter is None or not np.isfinite(inter) else float(inter)
    scaled = slope != 1.0 or inter != 0.0
    if scaled:
        data = data.astype(np.float32) * np.float32(slope) + np.float32(inter)
    elif kind == "image" and data.dtype.kind == "f" and data.dtype != np.float32:
        data = data.astype(np.float32)
    affine = np.asarray(hdr.get_best_affine(), dtype=np.float64)
    hdr = hdr.copy()
    scrub_header(hdr)
    return Volume(data, affine, bytes(hdr.binaryblock), fmt, sha, scaled)


def _first_line(exc: BaseException) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def _load_mgh(data_bytes: bytes, sha: bytes, kind: str) -> Volume:
    import nibabel as nib

    try:
        img = nib.MGHImage.from_bytes(data_bytes)
    except Exception as exc:
        raise ScanError(f"cannot decode ({_first_line(exc)})") from None
    shape = tuple(int(n) for n in img.shape)
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) != 3:
        raise ScanError(f"has {len(img.shape)} dimensions {tuple(img.shape)}; a 3D volume is required")
    try:
        data = np.asarray(img.dataobj).reshape(shape)
    except (EOFError, OSError, ValueError, zlib.error) as exc:
        raise ScanError(f"truncated or unreadable voxel data ({_first_line(exc)})") from None
    if kind == "image" and data.dtype.kind == "f" and data.dtype != np.float32:
        data = data.astype(np.float32)
    return Volume(
        data, np.asarray(img.affine, dtype=np.float64), bytes(img.header.binaryblock), FORMAT_MGH,
        sha, False,
    )


# ---------------------------------------------------------------- orientation


def ras_orientation(affine: np.ndarray) -> np.ndarray:
    """nibabel orientation array (3, 2) taking voxel axes to RAS (permutes/flips only)."""
    import nibabel.orientations as no

    return no.io_orientation(affine)


def axcodes(affine: np.ndarray, ornt: np.ndarray | None = None) -> str:
    """Orientation string of an affine, e.g. ``'LIA'`` (``ornt``: its
    :func:`ras_orientation`, when already known)."""
    import nibabel.orientations as no

    if ornt is None:
        return "".join(no.aff2axcodes(affine))
    return "".join(no.ornt2axcodes(ornt))


def to_ras(data: np.ndarray, affine: np.ndarray, ornt: np.ndarray | None = None):
    """Reorient voxels to RAS by axis permutes and flips only (lossless).

    Returns (data in RAS order, RAS affine, ornt used).
    """
    import nibabel.orientations as no

    ornt = ras_orientation(affine) if ornt is None else ornt
    out = no.apply_orientation(data, ornt)
    new_aff = affine @ no.inv_ornt_aff(ornt, data.shape)
    return out, new_aff, ornt


def from_ras(data: np.ndarray, ornt: np.ndarray) -> np.ndarray:
    """Inverse of :func:`to_ras` for voxels: back to the file's original axis order."""
    import nibabel.orientations as no

    ident = np.array([[0, 1], [1, 1], [2, 1]], dtype=float)
    back = no.ornt_transform(ident, ornt)
    return np.ascontiguousarray(no.apply_orientation(data, back))


def ras_shape(shape, ornt) -> tuple[int, int, int]:
    """Shape after :func:`to_ras`."""
    out = [0, 0, 0]
    for i, (ax, _) in enumerate(np.asarray(ornt)):
        out[int(ax)] = int(shape[i])
    return tuple(out)


def ras_affine(affine: np.ndarray, shape, ornt: np.ndarray | None = None) -> np.ndarray:
    """Affine of the RAS grid :func:`to_ras` gives for voxels of ``shape`` on ``affine``
    (``ornt``: its :func:`ras_orientation`, when already known)."""
    import nibabel.orientations as no

    return affine @ no.inv_ornt_aff(ras_orientation(affine) if ornt is None else ornt, shape)


# ---------------------------------------------------------------- resampling


def same_grid(aff_a, shape_a, aff_b, shape_b, atol: float = 1e-4) -> bool:
    """Same shape and (within ``atol``) the same affine."""
    return tuple(shape_a) == tuple(shape_b) and np.allclose(aff_a, aff_b, atol=atol)


def resample_to(
    data: np.ndarray,
    src_affine: np.ndarray,
    dst_affine: np.ndarray,
    dst_shape,
    *,
    order: int,
) -> np.ndarray:
    """Resample ``data`` (on ``src_affine``) onto a target grid through world coordinates.

    ``order=0`` nearest neighbour (masks), ``order=1`` linear (images); outside is 0.
    """
    from scipy import ndimage

    m = np.linalg.inv(src_affine) @ dst_affine  # target voxel -> source voxel
    out_dtype = data.dtype if order == 0 else np.float32
    return ndimage.affine_transform(
        data,
        m[:3, :3],
        offset=m[:3, 3],
        output_shape=tuple(int(s) for s in dst_shape),
        order=order,
        mode="constant",
        cval=0,
        output=out_dtype,
        prefilter=False,
    )


def check_overlap(
    sides: np.ndarray, src_affine: np.ndarray, src_shape, dst_affine: np.ndarray, dst_shape
) -> None:
    """Raise GridMismatchError if a mask's labelled voxels (or, if empty, its field of view)
    fall entirely outside the target grid."""
    inv = np.linalg.inv(dst_affine) @ src_affine
    idx = np.argwhere(sides > 0)
    if idx.size:
        pts = idx.astype(np.float64)
    else:
        s = np.asarray(src_shape) - 1
        pts = np.array([[i, j, k] for i in (0, s[0]) for j in (0, s[1]) for k in (0, s[2])], float)
    v = pts @ inv[:3, :3].T + inv[:3, 3]
    hi = np.asarray(dst_shape) - 0.5
    inside = np.all((v >= -0.5) & (v < hi), axis=1)
    if idx.size:
        if not inside.any():
            raise GridMismatchError(
                "does not overlap its image: no labelled voxel falls inside the image grid"
            )
        return
    lo_b, hi_b = v.min(0), v.max(0)
    if np.any(hi_b < -0.5) or np.any(lo_b > hi):
        raise GridMismatchError("does not overlap its image: fields of view are disjoint")


def content_hash(data: np.ndarray, affine: np.ndarray) -> bytes:
    """sha256 of stored voxels, their dtype/shape and the grid affine."""
    h = hashlib.sha256()
    h.update(str((data.dtype.str, data.shape)).encode())
    h.update(np.ascontiguousarray(affine, dtype=np.float64).tobytes())
    h.update(memoryview(np.ascontiguousarray(data)).cast("B"))
    return h.digest()
