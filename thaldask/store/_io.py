"""Read NIfTI/MGH files, reorient losslessly to RAS, resample through world coordinates.

Everything here is plain numpy/nibabel on one file; the Dask layer lives in ingest.py.
"""

from __future__ import annotations

import gzip
import hashlib
import threading
import zlib
from dataclasses import dataclass

import numpy as np

from thaldask.errors import GridMismatchError, ScanError

#: header fields that can carry personal data; never copied into the store
PRIVATE_FIELDS = ("descrip", "db_name", "aux_file", "intent_name")

FORMAT_NIFTI1, FORMAT_NIFTI2, FORMAT_MGH = 1, 2, 3
HEADER_BYTES = 1024  # room for a NIfTI-2 header (540 bytes) or an MGH header (284 bytes)


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
    if "://" in path:
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


def axcodes(affine: np.ndarray) -> str:
    """Orientation string of an affine, e.g. ``'LIA'``."""
    import nibabel.orientations as no

    return "".join(no.aff2axcodes(affine))


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


# ---------------------------------------------------------------- resampling


def same_grid(aff_a, shape_a, aff_b, shape_b, atol: float = 1e-4) -> bool:
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


def fast_sides(data: np.ndarray, conv, *, allowed: set | None = None) -> np.ndarray:
    """Integer mask -> uint8 0/1/2 (binary: 0/1), keeping the input's memory order.

    Same result as :func:`thaldask.cohort.labels.to_sides` for labels in 0..65535. With
    ``allowed``, a label outside it raises LabelConventionError naming the labels found.
    """
    from thaldask.errors import LabelConventionError

    if allowed is not None:
        if allowed == {0, 1}:
            ok = not bool(((data < 0) | (data > 1)).any()) if data.dtype.kind == "i" else not bool((data > 1).any())
        else:
            hit = np.zeros_like(data, dtype=bool)
            for a in allowed:
                hit |= data == a
            ok = bool(hit.all())
        if not ok:
            found = np.unique(data)
            unexpected = sorted(set(found.tolist()) - set(allowed))
            raise LabelConventionError(
                f"mask holds unexpected labels {unexpected[:8]} for convention {conv.spec!r} "
                f"(allowed {sorted(allowed)})"
            )

    def any_of(ids):
        m = np.zeros_like(data, dtype=bool) if len(ids) != 1 else None
        if m is None:
            return data == ids[0]
        for v in ids:
            m |= data == v
        return m

    if conv.binary:
        hit = any_of(conv.ids) if conv.ids else data != 0
        return hit.view(np.uint8)
    out = any_of(conv.left).view(np.uint8)
    right = any_of(conv.right).view(np.uint8)
    np.add(out, right, out=out)  # left + 2 * right, without temporaries
    np.add(out, right, out=out)
    return out


_scratch = threading.local()


def scratch(shape, dtype) -> np.ndarray:
    """An uninitialised array reused by the calling thread (one per shape and type).

    Ingest copies every scan into a fresh 256^3 array; reusing one spares the page faults
    of new memory (about a third of the copy). The caller must be done with the previous
    array of the same shape and type before asking again.
    """
    key = (tuple(int(v) for v in shape), np.dtype(dtype).str)
    pool = _scratch.__dict__.setdefault("pool", {})
    if key not in pool:
        if len(pool) >= 4:
            pool.clear()
        pool[key] = np.empty(key[0], key[1])
    return pool[key]


def _target(src_shape, out_shape, dtype, out):
    """``out`` (or a new array) ready to take ``src_shape`` in its corner, zeros elsewhere."""
    if out is None:
        return np.empty(out_shape, dtype) if out_shape == src_shape else np.zeros(out_shape, dtype)
    if tuple(out.shape) != out_shape or out.dtype != dtype:
        raise ValueError(f"out is {out.dtype}{out.shape}, expected {dtype}{out_shape}")
    if out_shape != src_shape:
        out.fill(0)
    return out


def c_copy(src: np.ndarray, out_shape=None, dtype=None, *, out=None) -> np.ndarray:
    """C-ordered copy of ``src`` (any strides) in the corner of a zero array of ``out_shape``.

    Reoriented NIfTI voxels are usually Fortran-ordered views; numpy's plain copy of such a
    view walks memory with large strides. For 3D arrays whose fastest source axis is not the
    last one, the copy goes one plane at a time across the third axis: each plane (a 2D
    transpose, 128 kB for 256^2 int16) stays in cache, 4-5x faster than numpy's copy for
    256^3 volumes. ``out``: write there (see :func:`scratch`).
    """
    dtype = np.dtype(dtype or src.dtype)
    out_shape = tuple(int(v) for v in (out_shape or src.shape))
    out = _target(src.shape, out_shape, dtype, out)
    view = out[tuple(slice(0, n) for n in src.shape)]
    fast = int(np.argmin(np.abs(src.strides)))
    last = src.ndim - 1
    if src.ndim != 3 or fast == last or src.size < 1 << 16:
        view[...] = src
        return out
    other = 3 - fast - last
    idx = [slice(None)] * 3
    for k in range(src.shape[other]):
        idx[other] = k
        plane = tuple(idx)
        view[plane] = src[plane]
    return out


#: decimal places tried when looking for a lossless integer form of a float image
MAX_DECIMALS = 6
#: integers stored in place of such images stay below 2**24: float32 holds them exactly
_MAX_QUANTUM = 1 << 24


def quantised_copy(
    src: np.ndarray, out_shape, scale: float, dtype, *, out=None
) -> np.ndarray | None:
    """:func:`c_copy` of a float image as the integers ``k`` with ``float32(k / scale) == src``.

    The result, in the corner of a zero array of ``out_shape``, decodes back to the values
    of ``src`` through numcodecs' ``FixedScaleOffset(offset=0, scale=scale)``: bit for bit,
    except that a negative zero comes back as 0.0, the same value. None when some voxel has
    no such integer in the range of ``dtype`` (more decimals than ``scale`` resolves, out of
    range, not finite). ``scale`` is a power of ten up to
    10**MAX_DECIMALS: k / scale is then never within float64 rounding of a float32
    rounding tie, so float32 division gives what the decoder's float64 division gives.

    The copy goes one plane at a time (see :func:`c_copy`) and quantises and checks each
    plane while it is in cache: about 25 % more than the plain copy. ``out``: write there
    (see :func:`scratch`).
    """
    dtype = np.dtype(dtype)
    s32 = np.float32(scale)
    info = np.iinfo(dtype)
    lo, hi = max(info.min, -_MAX_QUANTUM + 1), min(info.max, _MAX_QUANTUM - 1)
    out_shape = tuple(int(v) for v in (out_shape or src.shape))
    out = _target(src.shape, out_shape, dtype, out)
    view = out[tuple(slice(0, n) for n in src.shape)]
    other = None  # one "plane": the whole array
    if src.ndim == 3 and src.size >= 1 << 16:
        fast = int(np.argmin(np.abs(src.strides)))
        other = 0 if fast == 2 else 3 - fast - 2  # planes across an axis that is neither
    pshape = tuple(n for d, n in enumerate(src.shape) if d != other)
    buf, k, back = (np.empty(pshape, np.float32) for _ in range(3))
    differ = np.empty(pshape, bool)
    idx = [slice(None)] * src.ndim
    with np.errstate(over="ignore", invalid="ignore"):  # such voxels are refused below
        for j in range(src.shape[other] if other is not None else 1):
            if other is not None:
                idx[other] = j
            plane = tuple(idx)
            buf[...] = src[plane]
            np.multiply(buf, s32, out=k)
            np.rint(k, out=k)
            np.divide(k, s32, out=back)
            np.not_equal(back, buf, out=differ)  # IEEE equality: -0.0 is kept as 0.0
            if differ.any() or k.min() < lo or k.max() > hi:  # NaN/inf differ as well
                return None
            view[plane] = k
    return out


def decimal_places(
    data: np.ndarray, max_decimals: int = MAX_DECIMALS, *, sample: int | None = None
) -> int | None:
    """Fewest decimal places that hold every value of a float image exactly, or None.

    A map written with a fixed number of decimals (``np.round(r1, 4)`` in float32, or a
    T1 map in whole milliseconds) is exactly ``float32(k / 10**d)`` for integers ``k``: the
    store then keeps ``k`` (see :func:`quantised_copy`), losslessly and about a third the
    size. A sample rules decimal counts out before the whole image is checked; with
    ``sample`` (a number of voxels, evenly spread) only that sample is checked.
    """
    if data.dtype != np.float32 or data.size == 0:
        return None
    flat = data.reshape(-1, order="A" if data.flags.f_contiguous else "C")
    few = np.ascontiguousarray(flat[:: max(1, flat.size // 65536)])
    many = None
    for d in range(max_decimals + 1):
        if quantised_copy(few, few.shape, 10.0**d, np.int32) is None:
            continue
        if many is None:
            many = np.ascontiguousarray(flat[:: max(1, flat.size // sample)]) if sample else data
        if quantised_copy(many, many.shape, 10.0**d, np.int32) is not None:
            return d
    return None
