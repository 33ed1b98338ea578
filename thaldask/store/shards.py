"""Sharded per-scan arrays (Zarr v3 ``sharding_indexed``): keys, indexes, writes and reads.

A sharded scan array stores ``S`` consecutive scans per file (the shard, shape
``(S, *grid)``), each scan's data an inner chunk ``(1, *spatial_chunks)`` of it, ``S`` being
the array's write-record chunk: a task that owns a record chunk owns the shard too. A
shard file is the inner chunks' encoded bytes followed by the index: one (offset, nbytes)
pair of little-endian uint64 per inner chunk in C order (2^64-1 twice: absent) and the
crc32c of those bytes.

Writes never let zarr read-modify-write a shard per scan (that moves O(S^2) bytes): each
scan's inner chunks are encoded at once (:func:`thaldask.store.codecs.encode_scan`, the
same bytes zarr writes)
and kept until the whole shard is written by :func:`write_shard`, which copies the inner
chunks already stored (an earlier run, a partial flush) unchanged and leaves absent ones
absent, so a lost scan stays detectable. Reads of consecutive scans fetch a shard once
(:class:`ShardReader`); every read checks that the scan's inner chunks are in the index.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import uuid

import numpy as np

__all__ = [
    "EMPTY",
    "sharding_codec",
    "is_sharded",
    "scans_per_object",
    "chunks_per_shard",
    "scan_inner_chunks",
    "shard_path",
    "parse_index",
    "read_index",
    "chunk_codecs",
    "write_shard",
    "missing_inner",
    "ShardReader",
]

#: index entry of an absent inner chunk
EMPTY = np.uint64(2**64 - 1)


def sharding_codec(z):
    """The array's ``ShardingCodec`` (its only array-to-bytes codec), or None."""
    from zarr.codecs import ShardingCodec

    codecs = tuple(getattr(z.metadata, "codecs", ()))
    if len(codecs) == 1 and isinstance(codecs[0], ShardingCodec):
        return codecs[0]
    return None


def chunk_codecs(z) -> tuple:
    """The codecs of a scan's chunks: the inner chunks' of a sharded array."""
    sc = sharding_codec(z)
    return tuple(sc.codecs) if sc is not None else tuple(getattr(z.metadata, "codecs", ()))


def is_sharded(z) -> bool:
    """Whether zarr array ``z`` is sharded."""
    return sharding_codec(z) is not None


def _index_at_end(sc) -> bool:
    from zarr.codecs import BytesCodec, Crc32cCodec

    ic = tuple(sc.index_codecs)
    return (str(getattr(sc.index_location, "value", sc.index_location)) == "end" and len(ic) == 2
            and isinstance(ic[0], BytesCodec) and isinstance(ic[1], Crc32cCodec))


def scans_per_object(z) -> int:
    """Scans per stored object along the scan axis: the shard's (sharded) or chunk's."""
    sc = sharding_codec(z)
    return int(z.metadata.chunk_grid.chunk_shape[0]) if sc is not None else int(z.chunks[0])


def chunks_per_shard(z) -> tuple[int, ...]:
    """Inner chunks per shard along each axis."""
    sc = sharding_codec(z)
    outer = tuple(int(v) for v in z.metadata.chunk_grid.chunk_shape)
    return tuple(o // int(c) for o, c in zip(outer, sc.chunk_shape, strict=True))


def _inner_grid(z) -> tuple[int, ...]:
    inner = sharding_codec(z).chunk_shape
    return tuple(-(-int(s) // int(c)) for s, c in zip(z.shape, inner, strict=True))


def scan_inner_chunks(z, i: int, shape=None) -> list[tuple[tuple, tuple]]:
    """(shard coordinates, position in the shard) of every inner chunk of scan ``i``.

    With the scan's true spatial ``shape``, inner chunks wholly in its zero padding are left
    out (never required: a grown grid adds such chunks, read as 0)."""
    inner = tuple(int(v) for v in sharding_codec(z).chunk_shape)
    cps = chunks_per_shard(z)
    grid = _inner_grid(z)
    spatial = len(grid) - 3
    out = []
    for rest in itertools.product(*(range(n) for n in grid[1:])):
        if shape is not None and any(
            rest[spatial - 1 + a] * inner[spatial + a] >= int(shape[a]) for a in range(3)
        ):
            continue
        coords = (int(i),) + rest
        out.append((tuple(c // n for c, n in zip(coords, cps, strict=True)),
                    tuple(c % n for c, n in zip(coords, cps, strict=True))))
    return out


def shard_path(z, shard_coords) -> str:
    """Store key of one shard of ``z``."""
    key = z.metadata.encode_chunk_key(tuple(int(c) for c in shard_coords))
    return f"{z.store_path.path}/{key}" if z.store_path.path else key


def _index_nbytes(z) -> int:
    return int(np.prod(chunks_per_shard(z))) * 16 + 4


def parse_index(z, shard: bytes) -> np.ndarray:
    """(``*chunks_per_shard``, 2) uint64 (offset, nbytes) index at the end of ``shard``.

    Raises ValueError on a truncated shard or a checksum mismatch."""
    import google_crc32c

    n = _index_nbytes(z)
    if len(shard) < n:
        raise ValueError(f"shard of {len(shard)} bytes is shorter than its index ({n} bytes)")
    raw = shard[-n:]
    if np.array(google_crc32c.value(raw[:-4]), "<u4").tobytes() != raw[-4:]:
        raise ValueError("shard index checksum mismatch")
    return np.frombuffer(raw[:-4], dtype="<u8").reshape(chunks_per_shard(z) + (2,))


def _get(z, path, byte_range=None):
    from zarr.core.buffer import default_buffer_prototype
    from zarr.core.sync import sync

    buf = sync(z.store.get(path, prototype=default_buffer_prototype(), byte_range=byte_range))
    return None if buf is None else buf.to_bytes()


def read_index(z, shard_coords) -> np.ndarray | None:
    """Index of one shard (:func:`parse_index`) read with one suffix request; None when
    the shard file is absent."""
    from zarr.abc.store import SuffixByteRequest

    if not _index_at_end(sharding_codec(z)):
        raise ValueError(f"{z.path}: shard index not at the end with crc32c: not a thaldask layout")
    raw = _get(z, shard_path(z, shard_coords), SuffixByteRequest(_index_nbytes(z)))
    return None if raw is None else parse_index(z, raw)


def write_shard(z, shard_coords, chunks: dict) -> list[tuple[int, tuple]]:
    """Write one shard of ``z`` whole: the inner chunks ``chunks`` ({position: bytes}) and
    those already stored in it, unchanged (one read of the old shard when some of its
    positions are not given; absent ones stay absent).

    Returns the inner chunks the shard lacks after the write, as (scan, position): those
    scans' data are not (all) stored; the caller decides whether they should be."""
    from zarr.core.buffer import default_buffer_prototype
    from zarr.core.sync import sync

    if not _index_at_end(sharding_codec(z)):
        raise ValueError(f"{z.path}: shard index not at the end with crc32c: not a thaldask layout")
    cps = chunks_per_shard(z)
    n = int(np.prod(cps))
    path = shard_path(z, shard_coords)
    old = old_index = None
    if len(chunks) < n:
        old = _get(z, path)
        if old is not None:
            old_index = parse_index(z, old).reshape(n, 2)
    parts, absent = _assemble(cps, chunks, old, old_index)
    if not _put_local(z, path, parts):
        sync(z.store.set(path, default_buffer_prototype().buffer.from_bytes(b"".join(parts))))
    row = int(shard_coords[0]) * cps[0]
    return [(row + pos[0], pos) for pos in absent if row + pos[0] < z.shape[0]]


def _assemble(cps, chunks: dict, old=None, old_index=None) -> tuple[list, list]:
    """The parts of a shard file (inner chunks in C order, then the index and its crc32c)
    holding ``chunks`` ({position: bytes}) and the chunks of ``old`` (bytes, with its index
    (n, 2)) not given; and the positions left absent."""
    import google_crc32c

    n = int(np.prod(cps))
    parts, off = [], 0
    index = np.full((n, 2), EMPTY, dtype="<u8")
    absent = []
    for flat in range(n):
        pos = tuple(int(v) for v in np.unravel_index(flat, cps))
        b = chunks.get(pos)
        if b is None and old_index is not None and old_index[flat, 0] != EMPTY:
            o, nb = int(old_index[flat, 0]), int(old_index[flat, 1])
            b = old[o:o + nb]
        if b is None:
            absent.append(pos)
            continue
        index[flat] = (off, len(b))
        parts.append(b)
        off += len(b)
    raw = index.tobytes()
    parts.append(raw)
    parts.append(np.array(google_crc32c.value(raw), "<u4").tobytes())
    return parts, absent


def _put_local(z, path: str, parts: list) -> bool:
    """Write ``parts`` as file ``path`` of a local store, atomically (a temporary file beside
    it, then renamed, as zarr writes), without joining them first; False for other stores."""
    from zarr.storage import LocalStore

    if not isinstance(z.store, LocalStore):
        return False
    target = os.path.join(str(z.store.root), *path.split("/"))
    os.makedirs(os.path.dirname(target), exist_ok=True)
    tmp = f"{target}.{uuid.uuid4().hex}.partial"
    try:
        with open(tmp, "xb") as f:
            f.writelines(parts)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return True


def missing_inner(z, i: int, shape=None, index_of=None) -> list[str]:
    """Inner chunks of scan ``i`` that its shard lacks (or whose shard file is absent), as
    ``"<shard key>[position]"``. ``index_of(shard coords)``: where indexes come from
    (default :func:`read_index`, one request per shard)."""
    index_of = index_of or (lambda c: read_index(z, c))
    out, seen = [], {}
    for coords, pos in scan_inner_chunks(z, i, shape):
        if coords not in seen:
            seen[coords] = index_of(coords)
        idx = seen[coords]
        if idx is None or idx[pos][0] == EMPTY:
            out.append(f"{z.metadata.encode_chunk_key(coords)}{list(pos)}"
                       + (" (shard file absent)" if idx is None else ""))
    return out


class ShardReader:
    """Reads scans of sharded arrays a shard at a time, checked and decoded from memory;
    only the shards of the latest shard row of each array are kept (compressed bytes, not
    decoded scans). Unsharded arrays are read as zarr reads them.

    ``scans``: the scans that will be read (e.g. a task's block). A shard whose scans are
    all among them is fetched whole (one request); otherwise its index (one suffix
    request) and then one range holding those scans' inner chunks (consecutive scans are
    adjacent in the file). Without ``scans`` every shard is fetched whole."""

    def __init__(self, scans=None):
        self._scans = None if scans is None else {int(s) for s in scans}
        self._mem = {}  # (store id, path) -> (in-memory array, its dict, {shard coords: index})

    def _entry(self, z):
        from zarr.core.array import Array, AsyncArray
        from zarr.storage import MemoryStore, StorePath

        key = (id(z.store), z.path)
        if key not in self._mem:
            mem: dict = {}
            arr = Array(AsyncArray(metadata=z.metadata, store_path=StorePath(MemoryStore(store_dict=mem), z.path)))
            self._mem[key] = (arr, mem, {})
        return self._mem[key]

    def _index(self, z, coords):
        from zarr.core.buffer import default_buffer_prototype

        arr, mem, shards = self._entry(z)
        if coords not in shards:
            for old in [c for c in shards if c[0] != coords[0]]:  # an earlier shard row
                del shards[old]
                mem.pop(shard_path(arr, old), None)
            index, raw = self._fetch(z, coords)
            shards[coords] = index
            if raw is not None:
                mem[shard_path(arr, coords)] = default_buffer_prototype().buffer.from_bytes(raw)
        return shards[coords]

    def _fetch(self, z, coords):
        """(index, shard bytes to decode from) of one shard; (None, None): absent."""
        from zarr.abc.store import RangeByteRequest

        cps = chunks_per_shard(z)
        row = int(coords[0]) * cps[0]
        rows = range(row, min(row + cps[0], z.shape[0]))
        if self._scans is None or all(r in self._scans for r in rows):
            raw = _get(z, shard_path(z, coords))
            return (None, None) if raw is None else (parse_index(z, raw), raw)
        index = read_index(z, coords)
        if index is None:
            return None, None
        want = [pos for pos in itertools.product(*(range(n) for n in cps))
                if row + pos[0] in self._scans and index[pos][0] != EMPTY]
        if not want:
            return index, None
        lo = min(int(index[p][0]) for p in want)
        hi = max(int(index[p][0]) + int(index[p][1]) for p in want)
        span = _get(z, shard_path(z, coords), RangeByteRequest(lo, hi))
        if span is None:  # deleted since the index was read
            return None, None
        chunks = {p: span[int(index[p][0]) - lo:int(index[p][0]) - lo + int(index[p][1])] for p in want}
        return index, b"".join(_assemble(cps, chunks)[0])

    def missing(self, z, i: int, shape=None) -> list[str]:
        """:func:`missing_inner` from whole shards fetched once."""
        return missing_inner(z, i, shape, index_of=lambda c: self._index(z, c))

    def read(self, z, i: int) -> np.ndarray:
        """``z[i]`` (call :meth:`missing` first: it fetches the shards)."""
        if not is_sharded(z) or (self._scans is not None and int(i) not in self._scans):
            return z[int(i)]
        return self._entry(z)[0][int(i)]
