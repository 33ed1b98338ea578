"""Copy kernels of ingest: label mapping, reoriented copies, lossless float quantisation.

Plain numpy on one volume, tuned for 256^3 scans (see each function); the store's codec
policy (:mod:`thaldask.store.codecs`) decides when :func:`quantised_copy` is used.
"""

from __future__ import annotations

import threading

import numpy as np

from thaldask.errors import LabelConventionError

__all__ = ["fast_sides", "scratch", "c_copy", "quantised_copy", "MAX_DECIMALS"]


def fast_sides(data: np.ndarray, conv, *, allowed: set | None = None) -> np.ndarray:
    """Integer mask -> uint8 0/1/2 (binary: 0/1), keeping the input's memory order.

    Same result as :func:`thaldask.cohort.labels.to_sides` for labels in 0..65535. With
    ``allowed``, a label outside it raises LabelConventionError naming the labels found.
    """
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
