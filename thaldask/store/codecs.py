"""Codec policy of the cohort store: compression, chunking and how float maps are stored.

Integer arrays: blosc + bitshuffle. Float maps (``float_codec="auto"``): a map whose values
all have d decimals is stored as its integers value * 10**d (FixedScaleOffset, checked voxel
by voxel by :func:`thaldask.store.fastcopy.quantised_copy`), any other float map as float32
with blosc byte shuffle; ``"blosc"`` always the latter, ``"pcodec"`` pcodec. The measured
reasons are by :data:`DEFAULT_LAYOUT`.
"""

from __future__ import annotations

import itertools
import warnings

import numpy as np

from thaldask import config
from thaldask.errors import StoreError
from thaldask.store.fastcopy import MAX_DECIMALS, quantised_copy
from thaldask.store.shards import chunk_codecs, chunks_per_shard, is_sharded, scans_per_object

__all__ = [
    "DEFAULT_LAYOUT",
    "FLOAT_CODECS",
    "default_layout",
    "record_chunk_for",
    "new_array_record_chunk",
    "array_codecs",
    "spatial_chunks",
    "decimal_scale",
    "n_decimals",
    "decode_decimal",
    "decimal_places",
    "choose_decimals",
    "write_whole_chunk",
    "whole_chunk_payload",
    "encode_scan",
    "recode_as_float",
]

#: spatial chunking and compression of scan arrays, chosen by benchmarks/ingest.py (6 real
#: 256^3 label maps with synthetic int16 images and float32 R1 maps, one core; ratios to the
#: zlib-gunzip bound and to the .nii.gz size). Integer arrays: blosc lz4-5 + bitshuffle,
#: 0.90x the bound, 0.86x the size, reads near 1 GB/s (zstd is smaller but slower both
#: ways). Float arrays ("auto"): a map whose values all have d decimals
#: (``np.round(r1, 4)``) is stored as its integers value * 10**d (numcodecs FixedScaleOffset,
#: checked voxel by voxel) with blosc lz4 + byte shuffle: 0.82x, 0.66x; any other float map
#: as float32 with blosc lz4 + byte shuffle: 0.90x, 0.93x (bitshuffle is 20 % larger on
#: floats; pcodec is as small but 2-3x slower). One chunk per scan: whole-scan reads are the
#: access pattern of every stage, and 64^3 chunks multiply file counts without a gain.
#: Overridden by ``thaldask.store.{compressor, clevel, shuffle, float-codec, float-shuffle,
#: pcodec-level, spatial-chunks}`` in dask.config.
DEFAULT_LAYOUT = {
    "spatial_chunks": "scan",
    "cname": "lz4",
    "clevel": 5,
    "shuffle": "bitshuffle",
    "float_codec": "auto",
    "float_shuffle": "shuffle",
    "pcodec_level": 4,  # 0-12: level 2 is ~8 % faster and 5-11 % larger, level 8 the reverse
    # scans per chunk of the write records, digests and uncertainties: every writing task owns
    # whole chunks of them (stores without the key: 1)
    "record_chunk": 16,
    # data arrays whose records hold more than one scan per chunk store that many scans per
    # file (Zarr sharding, each scan an inner chunk): ~2 files per scan instead of one per
    # array and scan (stores without the key: unsharded, as they were written)
    "shards": True,
}
FLOAT_CODECS = ("auto", "blosc", "pcodec")

# decimal (FixedScaleOffset) and pcodec arrays use numcodecs codecs, which zarr notes are
# not part of the Zarr v3 core specification (readers need numcodecs; thaldask depends on it)
warnings.filterwarnings(
    "ignore", message="Numcodecs codecs are not in the Zarr version 3 specification"
)


def record_chunk_for(n_scans: int) -> int:
    """Scans per write-record chunk (and shard) of a new store created with ``n_scans``
    scans, when ``thaldask.store.record-chunk`` is null: 16, 32 from 2,048 scans, 64 from
    16,384. Each per-scan array costs a shard, a record chunk and a digest chunk per record
    chunk, so larger cohorts keep to about two files per scan with some 20 arrays, while a
    task (which owns whole chunks) still holds well under a percent of the cohort.

    >>> [record_chunk_for(n) for n in (28, 2047, 2048, 16383, 16384, 100_000)]
    [16, 16, 32, 32, 64, 64]
    """
    n = int(n_scans)
    return 64 if n >= 16384 else 32 if n >= 2048 else 16


def new_array_record_chunk(layout: dict, n_scans: int) -> int:
    """Record chunk of an array created now in a store of ``n_scans`` scans with ``layout``
    (its creation's). A store whose chunk was sized by its cohort (``record_chunk_auto``:
    ``thaldask.store.record-chunk`` was null) gives new arrays the chunk its size now gives,
    never less, once it has grown; a configured size, and the one-scan chunks of stores made
    before the setting, are kept. Arrays already there keep theirs; tasks own whole chunks
    of the largest they write, and the sizes are powers of two, so the smaller ones nest.

    >>> new_array_record_chunk({"record_chunk": 16, "record_chunk_auto": True}, 20_000)
    64
    >>> new_array_record_chunk({"record_chunk": 16}, 20_000)
    16
    """
    created = max(1, int(layout.get("record_chunk", 1)))
    if not layout.get("record_chunk_auto"):
        return created
    return max(created, record_chunk_for(n_scans))


def default_layout(n_scans: int | None = None) -> dict:
    """Layout for new stores: dask.config ``thaldask.store.*`` over :data:`DEFAULT_LAYOUT`;
    ``n_scans`` (of a store being created) sizes the record chunk when the config leaves it
    null (:func:`record_chunk_for`)."""
    rc = config.get("store.record-chunk")
    auto = not rc
    if auto:
        rc = record_chunk_for(n_scans) if n_scans else DEFAULT_LAYOUT["record_chunk"]
    return {
        "spatial_chunks": config.get("store.spatial-chunks") or DEFAULT_LAYOUT["spatial_chunks"],
        "cname": config.get("store.compressor") or DEFAULT_LAYOUT["cname"],
        "clevel": int(config.get("store.clevel") or DEFAULT_LAYOUT["clevel"]),
        "shuffle": config.get("store.shuffle") or DEFAULT_LAYOUT["shuffle"],
        "float_codec": config.get("store.float-codec") or DEFAULT_LAYOUT["float_codec"],
        "float_shuffle": config.get("store.float-shuffle") or DEFAULT_LAYOUT["float_shuffle"],
        "pcodec_level": int(config.get("store.pcodec-level", DEFAULT_LAYOUT["pcodec_level"])),
        "record_chunk": int(rc),
        "record_chunk_auto": auto,  # sized by the cohort: a grown store's new arrays follow
        "shards": bool(config.get("store.shards", DEFAULT_LAYOUT["shards"])),
    }


def array_codecs(dtype, layout: dict | None = None, decimals: tuple[int, str] | None = None) -> dict:
    """``zarr.create_array`` codec arguments for a scan array of ``dtype``.

    ``decimals`` = (d, integer dtype): a float array whose values all have ``d`` decimals,
    stored as the integers value * 10**d (see :func:`thaldask.store.fastcopy.quantised_copy`).
    """
    from zarr.codecs import BloscCodec

    lay = {**default_layout(), **(layout or {})}
    if lay["float_codec"] not in FLOAT_CODECS:
        raise StoreError(
            "store layout: float codec (thaldask.store.float-codec) must be one of "
            f"{', '.join(map(repr, FLOAT_CODECS))}, not {lay['float_codec']!r}"
        )
    dtype = np.dtype(dtype)
    if dtype.kind == "f" and lay["float_codec"] == "pcodec":
        from zarr.codecs.numcodecs import PCodec

        return {"serializer": PCodec(level=int(lay["pcodec_level"])), "compressors": None}
    filters = None
    typesize, shuffle = dtype.itemsize, lay["shuffle"]
    if dtype.kind == "f":
        shuffle = lay.get("float_shuffle") or DEFAULT_LAYOUT["float_shuffle"]
        if decimals is not None:
            from zarr.codecs.numcodecs import FixedScaleOffset

            d, astype = int(decimals[0]), np.dtype(decimals[1])
            filters = [FixedScaleOffset(offset=0, scale=10**d, dtype=dtype.newbyteorder("<").str,
                                        astype=astype.newbyteorder("<").str)]
            typesize = astype.itemsize
    out = {
        "compressors": [
            BloscCodec(
                cname=lay["cname"],
                clevel=int(lay["clevel"]),
                shuffle=shuffle if typesize > 1 or shuffle != "shuffle" else "noshuffle",
                typesize=typesize,
            )
        ]
    }
    if filters:
        out["filters"] = filters
    return out


def decimal_scale(z) -> tuple[int, np.dtype] | None:
    """(scale, integer dtype) of an array stored as integers value * scale, else None."""
    from zarr.codecs.numcodecs import FixedScaleOffset

    codecs = chunk_codecs(z)  # a sharded array's inner chunks
    if codecs and isinstance(codecs[0], FixedScaleOffset):
        cfg = codecs[0].codec_config
        if float(cfg.get("offset", 0)) == 0:
            return int(cfg["scale"]), np.dtype(cfg["astype"])
    return None


def n_decimals(scale: int) -> int:
    """Decimal places of a decimal array's scale (10**d -> d)."""
    return len(str(int(scale))) - 1


def decode_decimal(k: np.ndarray, scale: int, dtype=np.float32) -> np.ndarray:
    """Values of stored integers ``k`` (what the FixedScaleOffset decoder computes)."""
    return (k / scale).astype(dtype)


def write_whole_chunk(z, i: int, full: np.ndarray) -> bool:
    """Store ``full`` as chunk ``i`` of ``z`` when that chunk is all of scan ``i``.

    For one-chunk-per-scan arrays encoded ``bytes`` (little endian) + ``blosc``, the chunk
    is compressed here and handed to the zarr store as one value: the same bytes zarr
    would write, without the copies of its selection machinery (about half the write cost
    for a 256^3 volume). A decimal array (FixedScaleOffset first) takes ``full`` as its
    stored integers (:func:`thaldask.store.fastcopy.quantised_copy`). Returns False (nothing
    written) for any other layout, codec or data type.
    """
    from zarr.core.buffer import default_buffer_prototype
    from zarr.core.sync import sync

    payload = whole_chunk_payload(z, full)
    if payload is None:
        return False
    key = z.metadata.encode_chunk_key((int(i),) + (0,) * (z.ndim - 1))
    path = f"{z.store_path.path}/{key}" if z.store_path.path else key
    sync(z.store.set(path, default_buffer_prototype().buffer.from_bytes(payload)))
    return True


def whole_chunk_payload(z, full: np.ndarray) -> bytes | None:
    """The encoded bytes of a one-chunk-per-scan ``bytes`` + ``blosc`` chunk holding
    ``full`` (:func:`write_whole_chunk`), or None for any other layout, codec or data type."""
    import sys

    import numcodecs
    from zarr.codecs import BloscCodec, BytesCodec

    md = z.metadata
    codecs = tuple(getattr(md, "codecs", ()))
    dec = decimal_scale(z)
    if dec is not None:
        codecs, stored = codecs[1:], dec[1]
    else:
        stored = z.dtype
    if (
        getattr(md, "zarr_format", None) != 3
        or tuple(md.chunk_grid.chunk_shape) != (1,) + tuple(z.shape[1:])
        or len(codecs) != 2
        or not isinstance(codecs[0], BytesCodec)
        or not isinstance(codecs[1], BloscCodec)
        or sys.byteorder != "little"
        or full.dtype != stored
        or tuple(full.shape) != tuple(z.shape[1:])
    ):
        return None
    bc = codecs[1]
    blosc = numcodecs.Blosc(
        cname=bc.cname.value,
        clevel=int(bc.clevel),
        shuffle={"noshuffle": 0, "shuffle": 1, "bitshuffle": 2}[bc.shuffle.value],
        blocksize=int(bc.blocksize),
        typesize=int(bc.typesize),
    )
    return blosc.encode(np.ascontiguousarray(full))


def _inner_array(z):
    """An unsharded in-memory array with ``z``'s inner chunks and codecs (one scan row), and
    the dict holding its chunks."""
    from zarr.core.array import Array, AsyncArray
    from zarr.core.metadata import ArrayV3Metadata
    from zarr.storage import MemoryStore, StorePath

    md = z.metadata.to_dict()
    cfg = md["codecs"][0]["configuration"]
    md["shape"] = [1] + list(z.shape[1:])
    md["chunk_grid"] = {"name": "regular", "configuration": {"chunk_shape": list(cfg["chunk_shape"])}}
    md["codecs"] = cfg["codecs"]
    md["chunk_key_encoding"] = {"name": "default", "configuration": {"separator": "/"}}
    md.pop("storage_transformers", None)
    mem: dict = {}
    arr = Array(AsyncArray(metadata=ArrayV3Metadata.from_dict(md),
                           store_path=StorePath(MemoryStore(store_dict=mem), "")))
    return arr.with_config({"write_empty_chunks": True}), mem


def encode_scan(z, i: int, full: np.ndarray, values=None, *, cache: dict | None = None) -> dict:
    """Encoded inner chunks of scan ``i`` holding ``full`` (the whole padded row, stored
    dtype), as {(shard coords, position): bytes}: exactly the bytes zarr would store, every
    chunk kept (also all-zero ones: an empty mask is stored, not absent).

    ``values``: a function giving the values zarr encodes when the fast path does not apply
    (a decimal array's ``full`` holds its stored integers). ``cache``: keeps the in-memory
    encoding array per array path."""
    key = (id(z.store), z.path)
    got = (cache if cache is not None else {}).get(key)
    if got is None:
        got = _inner_array(z)
        if cache is not None:
            cache[key] = got
    enc, mem = got
    cps = chunks_per_shard(z)
    payload = whole_chunk_payload(enc, full)  # one inner chunk per scan: encoded here
    if payload is not None:
        return {(tuple(c // n for c, n in zip((int(i),) + (0,) * (z.ndim - 1), cps, strict=True)),
                 (int(i) % cps[0],) + (0,) * (z.ndim - 1)): payload}
    mem.clear()
    enc[0] = values() if values is not None else full

    out = {}
    for rest in itertools.product(*(range(n) for n in enc.cdata_shape[1:])):
        coords = (int(i),) + rest
        buf = mem.get(enc.metadata.encode_chunk_key((0,) + rest))
        if buf is None:  # (write_empty_chunks keeps every chunk; never expected)
            continue
        out[(tuple(c // n for c, n in zip(coords, cps, strict=True)),
             tuple(c % n for c, n in zip(coords, cps, strict=True)))] = buf.to_bytes()
    mem.clear()
    return out


def spatial_chunks(grid_shape, layout: dict | None = None):
    lay = {**default_layout(), **(layout or {})}
    sc = lay.get("spatial_chunks", "scan")
    if sc in (None, "scan"):
        return tuple(int(s) for s in grid_shape)
    return tuple(min(int(c), int(s)) for c, s in zip(sc, grid_shape, strict=False))


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


def choose_decimals(data: np.ndarray) -> tuple[int, str] | None:
    """How a float image array whose first file holds ``data`` is stored under ``"auto"``.

    (decimals, integer dtype) when ``data`` (as the float32 the array will hold, non-finite
    voxels as 0) has fixed decimals and its integers value * 10**d leave headroom: int16
    when they leave 1.5x, else int32 (both exact); None stores the array as float32. Only a
    sample is checked here: each write checks every voxel.
    """
    data = data.astype(np.float32, copy=False)  # what the array will hold
    with np.errstate(over="ignore", invalid="ignore"):
        if not np.isfinite(np.sum(data, dtype=np.float32)):
            data = np.where(np.isfinite(data), data, np.float32(0))
    d = decimal_places(data, sample=1 << 20)
    if d is None:
        return None
    k = float(max(-data.min(), data.max())) * 10.0**d
    if k > (1 << 24) / 4:
        return None
    return d, "int16" if k <= np.iinfo(np.int16).max / 1.5 else "int32"


def recode_as_float(z, written, layout: dict) -> int:
    """Re-encode decimal array ``z`` (:func:`decimal_scale`) as plain float32, bit for bit.

    ``written``: indices of the scans stored in ``z``; ``layout``: the store's layout.
    Float chunks are written under the other chunk-key encoding beside the decimal ones,
    the array metadata then switches to them in one write, and the decimal chunks are
    deleted last: at every moment the array reads the same values (an interruption leaves
    unused chunk files at worst). Returns the number of scans re-encoded (0 when ``z`` is
    not a decimal array).
    """
    from zarr.core.array import Array, AsyncArray
    from zarr.core.metadata import ArrayV3Metadata
    from zarr.core.sync import sync

    if decimal_scale(z) is None:
        return 0
    lay = {**layout, "float_codec": "blosc"}
    blosc = array_codecs(z.dtype, lay)["compressors"][0]
    md = z.metadata.to_dict()
    plain = [{"name": "bytes", "configuration": {"endian": "little"}}, blosc.to_dict()]
    sharded = is_sharded(z)
    if sharded:  # the inner chunks' codecs change, the shards stay
        md["codecs"][0]["configuration"]["codecs"] = plain
    else:
        md["codecs"] = plain
    old_enc = md.get("chunk_key_encoding", {}).get("name", "default")
    md["chunk_key_encoding"] = (
        {"name": "v2", "configuration": {"separator": "."}} if old_enc == "default"
        else {"name": "default", "configuration": {"separator": "/"}}
    )
    new_md = ArrayV3Metadata.from_dict(md)
    new = Array(AsyncArray(metadata=new_md, store_path=z.store_path)).with_config({"write_empty_chunks": True})
    written = np.asarray(written)
    if sharded:  # a shard at a time: each written once
        rows = scans_per_object(z)
        for k in sorted({int(i) // rows for i in written}):
            lo, hi = k * rows, min((k + 1) * rows, z.shape[0])
            new[lo:hi] = np.asarray(z[lo:hi])
    for i in ([] if sharded else written):
        vals = np.asarray(z[int(i)])
        if not write_whole_chunk(new, int(i), vals):
            new[int(i)] = vals
    sync(new._async_array._save_metadata(new_md))
    base = f"{z.store_path.path}/" if z.store_path.path else ""
    if old_enc == "default":  # every key under c/ is an old chunk
        sync(z.store.delete_dir(base + "c"))
    else:
        rows = scans_per_object(z)
        outer = [-(-int(s) // int(c)) for s, c in zip(z.shape, z.metadata.chunk_grid.chunk_shape, strict=True)]
        for k in sorted({int(i) // rows for i in written}):
            for rest in itertools.product(*(range(n) for n in outer[1:])):
                sync(z.store.delete(base + z.metadata.encode_chunk_key((k,) + rest)))
    return int(written.size)
