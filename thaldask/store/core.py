"""The cohort store: one Zarr v3 group holding every scan of a cohort on its own RAS grid.

Layout (internal; use :class:`CohortStore`)::

    zarr.json                     attrs: thaldask format, scans table, grid_shape, reference
                                  contrast and original orientation per scan, clinical table
    scan/affine (scan, 4, 4)      RAS affine of the stored grid (float64)
    scan/shape (scan, 3)          true RAS shape; data are zero-padded to grid_shape
    scan/spacing (scan, 3)        voxel size in mm
    scan/orig_affine, orig_shape, orig_ornt   the reference file's own grid and orientation
    scan/header (scan, 1024), scan/header_info (scan, 2)   scrubbed reference header bytes
    images/<contrast>             (scan, x, y, z) float32 (int16 when every file is), one
                                  scan per chunk; a float map with fixed decimals d is
                                  stored as integers value * 10**d (FixedScaleOffset codec;
                                  zarr reads it back as float32)
    masks/<method>/<contrast>     (scan, x, y, z) uint8 0 bg / 1 left / 2 right
    probs/<method>/<contrast>     (scan, 2, x, y, z) uint8, probability * 255
    _meta/<array>/record          (scan, 20) float64: flags, source shape (3), source affine (16)
    _meta/<array>/hash            (scan, 64) uint8: source-file sha256 | content sha256
                                  (the file's sha256 again while flagged FILE_DIGEST_ONLY:
                                  either way bytes 32: change exactly when the data do)
    results/<name>                xarray datasets (write_results)

Every per-scan write touches only chunks that belong to that scan, so scans can be written
by independent tasks; scan-level metadata is written once by the process that creates the
store.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import warnings
from functools import cached_property

import numpy as np
import pandas as pd

from thaldask import config
from thaldask.errors import StoreConflictError, StoreError, StoreNotFoundError

__all__ = ["CohortStore", "open_store", "FORMAT_VERSION"]

FORMAT_VERSION = 1

# record flags
WRITTEN, RESAMPLED, SCALED, HAS_PROB, NAN_REPLACED, BINARY = 1, 2, 4, 8, 16, 32
#: the content slot of the hash holds the source file's sha256 (content not hashed yet)
FILE_DIGEST_ONLY = 64
RECORD_LEN = 20
HASH_LEN = 64

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
}
FLOAT_CODECS = ("auto", "blosc", "pcodec")

# decimal (FixedScaleOffset) and pcodec arrays use numcodecs codecs, which zarr notes are
# not part of the Zarr v3 core specification (readers need numcodecs; thaldask depends on it)
warnings.filterwarnings(
    "ignore", message="Numcodecs codecs are not in the Zarr version 3 specification"
)


def default_layout() -> dict:
    """Layout for new stores: dask.config ``thaldask.store.*`` over :data:`DEFAULT_LAYOUT`."""
    return {
        "spatial_chunks": config.get("store.spatial-chunks") or DEFAULT_LAYOUT["spatial_chunks"],
        "cname": config.get("store.compressor") or DEFAULT_LAYOUT["cname"],
        "clevel": int(config.get("store.clevel") or DEFAULT_LAYOUT["clevel"]),
        "shuffle": config.get("store.shuffle") or DEFAULT_LAYOUT["shuffle"],
        "float_codec": config.get("store.float-codec") or DEFAULT_LAYOUT["float_codec"],
        "float_shuffle": config.get("store.float-shuffle") or DEFAULT_LAYOUT["float_shuffle"],
        "pcodec_level": int(config.get("store.pcodec-level", DEFAULT_LAYOUT["pcodec_level"])),
    }


def is_remote(path: str) -> bool:
    return "://" in str(path) and not str(path).startswith("file://")


def set_zarr_concurrency(n: int | None = None) -> None:
    """Lower zarr's async concurrency (oversubscription under Dask)."""
    import zarr

    n = int(n or config.get("store.zarr-concurrency") or 8)
    if zarr.config.get("async.concurrency") != n:
        zarr.config.set({"async.concurrency": n})


def make_zarr_store(path: str, *, read_only: bool = False, storage_options: dict | None = None):
    """A zarr Store for a local path or an fsspec URL (``s3://``, ``gs://``, ``memory://``)."""
    import zarr

    path = str(path)
    if is_remote(path):
        return zarr.storage.FsspecStore.from_url(
            path, storage_options=storage_options or None, read_only=read_only
        )
    if path.startswith("file://"):
        path = path[len("file://") :]
    return zarr.storage.LocalStore(path, read_only=read_only)


def _codec(dtype, layout: dict | None = None, decimals: tuple[int, str] | None = None) -> dict:
    """``zarr.create_array`` codec arguments for a scan array of ``dtype``.

    ``decimals`` = (d, integer dtype): a float array whose values all have ``d`` decimals,
    stored as the integers value * 10**d (see :func:`thaldask.store._io.quantised_copy`).
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

    codecs = getattr(z.metadata, "codecs", ())
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


def _write_whole_chunk(z, i: int, full: np.ndarray) -> bool:
    """Store ``full`` as chunk ``i`` of ``z`` when that chunk is all of scan ``i``.

    For one-chunk-per-scan arrays encoded ``bytes`` (little endian) + ``blosc``, the chunk
    is compressed here and handed to the zarr store as one value: the same bytes zarr
    would write, without the copies of its selection machinery (about half the write cost
    for a 256^3 volume). A decimal array (FixedScaleOffset first) takes ``full`` as its
    stored integers (:func:`thaldask.store._io.quantised_copy`). Returns False (nothing
    written) for any other layout, codec or data type.
    """
    import sys

    import numcodecs
    from zarr.codecs import BloscCodec, BytesCodec
    from zarr.core.buffer import default_buffer_prototype
    from zarr.core.sync import sync

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
        return False
    bc = codecs[1]
    blosc = numcodecs.Blosc(
        cname=bc.cname.value,
        clevel=int(bc.clevel),
        shuffle={"noshuffle": 0, "shuffle": 1, "bitshuffle": 2}[bc.shuffle.value],
        blocksize=int(bc.blocksize),
        typesize=int(bc.typesize),
    )
    payload = blosc.encode(np.ascontiguousarray(full))
    key = z.metadata.encode_chunk_key((int(i),) + (0,) * (z.ndim - 1))
    path = f"{z.store_path.path}/{key}" if z.store_path.path else key
    sync(z.store.set(path, default_buffer_prototype().buffer.from_bytes(payload)))
    return True


def _spatial_chunks(grid_shape, layout: dict | None = None):
    lay = {**default_layout(), **(layout or {})}
    sc = lay.get("spatial_chunks", "scan")
    if sc in (None, "scan"):
        return tuple(int(s) for s in grid_shape)
    return tuple(min(int(c), int(s)) for c, s in zip(sc, grid_shape, strict=False))


@contextlib.contextmanager
def quiet_zarr():
    """Silence zarr's notes about consolidated metadata and non-zarr files (the report CSV)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*Consolidated metadata.*")
        warnings.filterwarnings("ignore", message=".*not recognized as a component.*")
        yield


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _version() -> str:
    from thaldask import __version__

    return __version__


class CohortStore:
    """Handle on a cohort store. Cheap to create; workers open their own from the path.

    Use :func:`open_store`. Attributes are read lazily and cached; array views are lazy
    (dask), ``load_*`` methods are eager.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        storage_options: dict | None = None,
        consolidated: bool | None = None,
        read_only: bool = False,
    ):
        import zarr

        self.path = str(path)
        self.storage_options = storage_options or {}
        self.read_only = read_only
        set_zarr_concurrency()
        self._zstore = make_zarr_store(
            self.path, read_only=read_only, storage_options=self.storage_options
        )
        if consolidated is None:
            # listing members directly is always current (write_mask may add arrays after
            # the last consolidation); pass consolidated=True for read-only speed on URLs
            consolidated = False
        try:
            with quiet_zarr():
                self._group = zarr.open_group(
                    store=self._zstore, mode="r" if read_only else "r+", use_consolidated=consolidated
                )
        except (FileNotFoundError, KeyError, zarr.errors.NodeTypeValidationError) as exc:
            raise StoreNotFoundError(f"{self.path}: no cohort store here ({type(exc).__name__})") from None
        attrs = dict(self._group.attrs)
        if "thaldask" not in attrs:
            raise StoreError(f"{self.path}: a Zarr group but not a thaldask cohort store")
        self._attrs = attrs
        fmt = attrs["thaldask"].get("format")
        if fmt != FORMAT_VERSION:
            raise StoreError(f"{self.path}: store format {fmt}; this thaldask reads {FORMAT_VERSION}")

    # ------------------------------------------------------------------ basics
    def __repr__(self) -> str:
        return f"<CohortStore {self.path!r}: {self.n_scans} scans, grid {self.grid_shape}, contrasts {self.contrasts}>"

    def __reduce__(self):
        return (_reopen, (self.path, self.storage_options, self.read_only))

    def _array(self, name: str, mode: str = "r"):
        import zarr

        try:
            return zarr.open_array(store=self._zstore, path=name, mode=mode)
        except (FileNotFoundError, KeyError) as exc:
            raise KeyError(name) from exc

    @cached_property
    def scans(self) -> pd.DataFrame:
        """DataFrame indexed by ``scan`` (0..n-1) with columns subject, timepoint, site."""
        s = self._attrs["scans"]
        df = pd.DataFrame(
            {k: pd.Series(s[k], dtype=object).astype(str) for k in ("subject", "timepoint", "site")}
        )
        df.index.name = "scan"
        return df

    @property
    def n_scans(self) -> int:
        return len(self._attrs["scans"]["subject"])

    @property
    def grid_shape(self) -> tuple[int, int, int]:
        return tuple(int(v) for v in self._attrs["grid_shape"])

    @cached_property
    def shapes(self) -> np.ndarray:
        """(scan, 3) int: each scan's true RAS shape."""
        return np.asarray(self._array("scan/shape")[...], dtype=np.int64)

    @cached_property
    def spacing(self) -> np.ndarray:
        """(scan, 3) float: voxel size in mm."""
        return np.asarray(self._array("scan/spacing")[...], dtype=np.float64)

    @cached_property
    def affines(self) -> np.ndarray:
        """(scan, 4, 4) float64: RAS affine of each stored grid."""
        return np.asarray(self._array("scan/affine")[...], dtype=np.float64)

    @cached_property
    def orig_affines(self) -> np.ndarray:
        """(scan, 4, 4): affine of each scan's reference file as given."""
        return np.asarray(self._array("scan/orig_affine")[...], dtype=np.float64)

    @cached_property
    def orig_shapes(self) -> np.ndarray:
        return np.asarray(self._array("scan/orig_shape")[...], dtype=np.int64)

    @cached_property
    def orig_ornt(self) -> np.ndarray:
        """(scan, 3, 2): nibabel orientation taking the original voxel axes to RAS."""
        return np.asarray(self._array("scan/orig_ornt")[...], dtype=np.float64)

    @property
    def reference(self) -> list[str]:
        """Contrast whose grid each scan uses."""
        return list(self._attrs.get("reference", []))

    def orig_header(self, i: int) -> tuple[int, bytes]:
        """(format code, scrubbed header bytes) of scan ``i``'s reference file."""
        info = self._array("scan/header_info")[i]
        raw = self._array("scan/header")[i]
        return int(info[0]), bytes(np.asarray(raw[: int(info[1])], dtype=np.uint8))

    def _members(self, prefix: str) -> list[str]:
        try:
            g = self._group[prefix] if prefix else self._group
        except KeyError:
            return []
        out = []
        with quiet_zarr():
            members = list(g.members(max_depth=None))
        for name, node in members:
            if hasattr(node, "shape") and not name.startswith("_"):
                out.append(name)
        return sorted(out)

    @property
    def contrasts(self) -> list[str]:
        """Image contrasts in the store."""
        return self._members("images")

    @property
    def methods(self) -> list[tuple[str, str]]:
        """(method, contrast) pairs of the masks in the store; ground truth is ``gt``."""
        out = []
        for name in self._members("masks"):
            m, _, c = name.partition("/")
            out.append((m, c))
        return out

    # ------------------------------------------------------------------ records
    def _record(self, name: str) -> np.ndarray:
        try:
            return np.asarray(self._array(f"_meta/{name}/record")[...])
        except KeyError:
            return np.zeros((self.n_scans, RECORD_LEN))

    def records(self, name: str) -> pd.DataFrame:
        """Per-scan write record of one array (``images/T1w``, ``masks/gt/T1w``):
        written, resampled, scaled, nan_replaced, has_prob and binary (a mask without sides:
        1 = thalamus) flags and the source file's grid."""
        rec = self._record(name)
        flags = rec[:, 0].astype(np.int64)
        df = pd.DataFrame(
            {
                "written": (flags & WRITTEN) > 0,
                "resampled": (flags & RESAMPLED) > 0,
                "scaled": (flags & SCALED) > 0,
                "nan_replaced": (flags & NAN_REPLACED) > 0,
                "has_prob": (flags & HAS_PROB) > 0,
                "binary": (flags & BINARY) > 0,
                "source_shape": [tuple(int(v) for v in r[1:4]) for r in rec],
                "source_affine": [r[4:20].reshape(4, 4) for r in rec],
            }
        )
        df.index.name = "scan"
        return df

    def _written(self, name: str) -> np.ndarray:
        return (self._record(name)[:, 0].astype(np.int64) & WRITTEN) > 0

    def has_image(self, contrast: str) -> np.ndarray:
        """(scan,) bool: which scans have this image."""
        return self._written(f"images/{contrast}")

    def has_mask(self, method: str, contrast: str) -> np.ndarray:
        """(scan,) bool: which scans have this mask."""
        return self._written(f"masks/{method}/{contrast}")

    # ------------------------------------------------------------------ lazy views
    def _view(self, name: str, dtype):
        import dask.array as da
        import xarray as xr

        try:
            z = self._array(name)
        except KeyError:
            raise KeyError(f"{self.path}: no array {name!r} in the store") from None
        chunks = (1,) + tuple(z.shape[1:])
        from dask.base import tokenize

        token = tokenize(self.path, name, self._attrs["thaldask"].get("created"), z.shape)
        src = _ArraySource(self.path, name, self.storage_options, tuple(z.shape), z.dtype, z)
        arr = da.from_array(
            src,
            chunks=chunks,
            name=f"thaldask-{name.replace('/', '-')}-{token}",
            fancy=False,
            meta=np.empty((0,) * len(z.shape), z.dtype),
        )
        if arr.dtype != dtype:
            arr = arr.astype(dtype)
        s = self.scans
        return xr.DataArray(
            arr,
            dims=("scan", "x", "y", "z"),
            coords={
                "scan": np.arange(self.n_scans),
                "subject": ("scan", s["subject"].to_numpy()),
                "timepoint": ("scan", s["timepoint"].to_numpy()),
                "site": ("scan", s["site"].to_numpy()),
            },
            name=name,
            attrs={"store": self.path},
        )

    def image(self, contrast: str):
        """xarray.DataArray (scan, x, y, z) float32, lazy (dask, one scan per chunk)."""
        return self._view(f"images/{contrast}", np.float32)

    def mask(self, method: str, contrast: str):
        """xarray.DataArray (scan, x, y, z) uint8 0 bg / 1 left / 2 right, lazy."""
        return self._view(f"masks/{method}/{contrast}", np.uint8)

    # ------------------------------------------------------------------ eager loads
    def _crop(self, i: int):
        sx, sy, sz = (int(v) for v in self.shapes[i])
        return (int(i), slice(0, sx), slice(0, sy), slice(0, sz))

    def load_image(self, contrast: str, i: int) -> np.ndarray:
        """Scan ``i``'s image as float32 (eager), cropped to ``shapes[i]``."""
        return np.asarray(self._array(f"images/{contrast}")[self._crop(i)], dtype=np.float32)

    def load_mask(self, method: str, contrast: str, i: int) -> np.ndarray:
        """Scan ``i``'s mask as uint8 0/1/2 (eager), cropped to ``shapes[i]``."""
        return np.asarray(self._array(f"masks/{method}/{contrast}")[self._crop(i)], dtype=np.uint8)

    def load_prob(self, method: str, contrast: str, i: int) -> np.ndarray | None:
        """Scan ``i``'s left/right probabilities, float32 (2, *shape) in [0, 1], or None."""
        name = f"probs/{method}/{contrast}"
        try:
            flags = int(self._array(f"_meta/masks/{method}/{contrast}/record")[int(i), 0])
            z = self._array(name)
        except KeyError:
            return None
        if not flags & HAS_PROB:
            return None
        sx, sy, sz = (int(v) for v in self.shapes[i])
        q = np.asarray(z[int(i), :, :sx, :sy, :sz])
        return q.astype(np.float32) / np.float32(255)

    def decimal_scale(self, name: str) -> tuple[int, np.dtype] | None:
        """(scale, integer dtype) when array ``name`` stores integers value * scale."""
        cache = self.__dict__.setdefault("_decimal_cache", {})
        if name not in cache:
            cache[name] = decimal_scale(self._array(name))
        return cache[name]

    # ------------------------------------------------------------------ writes
    def ensure_array(
        self, name: str, *, dtype, extra_dims: tuple[int, ...] = (), layout=None, decimals=None
    ):
        """Create a per-scan array (and its record/hash arrays) unless it exists.

        ``decimals`` = (d, integer dtype) stores a float array as integers value * 10**d
        (the caller has checked that its data have d decimals; see ``_codec``)."""
        import zarr

        if self.read_only:
            raise StoreError(f"{self.path}: store opened read-only")
        layout = layout or self._attrs.get("layout") or default_layout()
        g = self.grid_shape
        n = self.n_scans
        shape = (n,) + tuple(extra_dims) + g
        chunks = (1,) + tuple(extra_dims) + _spatial_chunks(g, layout)
        dims = ("scan",) + tuple(f"dim{k}" for k in range(len(extra_dims))) + ("x", "y", "z")
        specs = [
            (name, shape, chunks, dtype, _codec(dtype, layout, decimals), dims),
            (f"_meta/{name}/record", (n, RECORD_LEN), (1, RECORD_LEN), "float64", None, None),
            (f"_meta/{name}/hash", (n, HASH_LEN), (1, HASH_LEN), "uint8", None, None),
        ]
        for path, shp, chk, dt, codec, dn in specs:
            try:
                z = self._array(path)
                if tuple(z.shape) != shp:
                    raise StoreConflictError(
                        f"{self.path}: array {path!r} has shape {tuple(z.shape)}, expected {shp}"
                    )
                continue
            except KeyError:
                pass
            try:
                zarr.create_array(
                    store=self._zstore,
                    name=path,
                    shape=shp,
                    chunks=chk,
                    dtype=dt,
                    fill_value=0,
                    **(codec if codec is not None else {"compressors": "auto"}),
                    dimension_names=dn,
                    overwrite=False,
                )
            except zarr.errors.ContainsArrayError:
                pass  # created concurrently by another task: same metadata

    def write_scan_array(
        self,
        name: str,
        i: int,
        data: np.ndarray,
        *,
        flags: int = 0,
        source_shape=None,
        source_affine=None,
        file_sha256: bytes = b"",
        content_sha256,
        overwrite: bool = False,
        extra: dict | None = None,
    ) -> str:
        """Write one scan's (cropped) data into its chunk-aligned region, idempotently.

        ``data`` holds values, or for a decimal array (:func:`decimal_scale`) the stored
        integers from :func:`~thaldask.store._io.quantised_copy`.

        ``content_sha256`` is the digest of the padded region as stored (with
        :func:`~thaldask.store._io.content_hash` and ``affines[i]``), or a function giving it:
        then it is computed only when something is already stored (a first write records
        the source file's digest only, and the stored region is hashed if ever needed).

        Returns ``"written"`` or ``"skipped"`` (same content already stored).

        Raises
        ------
        StoreConflictError
            different content is stored and ``overwrite`` is False.
        """
        i = int(i)
        z = self._array(name, mode="r+")
        dec = decimal_scale(z)
        if dec is not None and data.dtype != dec[1]:  # values: exact integers or refused
            from thaldask.store._io import quantised_copy

            k = quantised_copy(np.asarray(data, dtype=z.dtype), None, dec[0], dec[1])
            if k is None:
                raise StoreError(
                    f"{self.path}: {name} stores values with {n_decimals(dec[0])} decimals; "
                    f"scan {i} has others (recode_as_float({name!r}) takes any float32)"
                )
            data = k
        rec_z = self._array(f"_meta/{name}/record", mode="r+")
        hash_z = self._array(f"_meta/{name}/hash", mode="r+")
        old_flags = int(rec_z[i, 0])
        if old_flags & WRITTEN:
            old_hash = bytes(np.asarray(hash_z[i], dtype=np.uint8))[32:]
            if callable(content_sha256):
                content_sha256 = content_sha256()
            if old_flags & FILE_DIGEST_ONLY or not any(old_hash):  # hash what is stored
                from thaldask.store._io import content_hash

                old_hash = content_hash(np.asarray(self._array(name)[i]), self.affines[i])
            if old_hash == content_sha256:
                return "skipped"
            if not overwrite:
                raise StoreConflictError(
                    f"{self.path}: {name} of scan {i} ({self.scans.subject[i]}, "
                    f"{self.scans.timepoint[i]}) holds different content; pass overwrite=True "
                    "(--overwrite) to replace it"
                )
            # mark unwritten first so that an interrupted overwrite is redone on re-run
            rec_z[i, 0] = 0.0
        stored = dec[1] if dec is not None else z.dtype
        if tuple(data.shape) == tuple(z.shape[1:]) and data.dtype == stored:
            full = data
        else:
            full = np.zeros(z.shape[1:], dtype=stored)
            full[tuple(slice(0, s) for s in data.shape)] = data
        if not _write_whole_chunk(z, i, full):
            if stored != z.dtype:  # stored integers: zarr encodes values
                full = decode_decimal(full, dec[0], z.dtype)
            z[i] = full  # the whole chunk-aligned region of scan i
        for key, arr in (extra or {}).items():
            ez = self._array(key, mode="r+")
            efull = np.zeros(ez.shape[1:], dtype=ez.dtype)
            efull[tuple(slice(0, s) for s in arr.shape)] = arr
            ez[i] = efull
        rec = np.zeros(RECORD_LEN)
        lazy = callable(content_sha256)
        rec[0] = flags | WRITTEN | (FILE_DIGEST_ONLY if lazy else 0)
        rec[1:4] = np.asarray(source_shape if source_shape is not None else data.shape[-3:])
        rec[4:20] = np.asarray(
            source_affine if source_affine is not None else self.affines[i], dtype=np.float64
        ).ravel()
        h = np.zeros(HASH_LEN, dtype=np.uint8)
        if file_sha256:
            h[:32] = np.frombuffer(file_sha256, dtype=np.uint8)
        # the content slot changes exactly when the stored content does (caches key on it)
        h[32:] = np.frombuffer(file_sha256 if lazy else content_sha256, dtype=np.uint8) if (
            file_sha256 or not lazy) else 0
        hash_z[i] = h
        rec_z[i] = rec  # written flag last: a crash before this line means "not written"
        return "written"

    def content_tokens(self, name: str) -> np.ndarray:
        """(scan, 32) uint8 per-scan digests of one array's stored content; they change
        exactly when a scan's data are rewritten (zeros: never written). For caches."""
        try:
            return np.asarray(self._array(f"_meta/{name}/hash")[...], dtype=np.uint8)[:, 32:]
        except KeyError:
            return np.zeros((self.n_scans, 32), np.uint8)

    def stored_file_hash(self, name: str, i: int) -> bytes | None:
        """Source-file sha256 of a written scan array, else None."""
        try:
            rec = self._array(f"_meta/{name}/record")[int(i), 0]
        except KeyError:
            return None
        if not int(rec) & WRITTEN:
            return None
        return bytes(np.asarray(self._array(f"_meta/{name}/hash")[int(i)][:32], dtype=np.uint8))

    def write_mask(
        self,
        method: str,
        contrast: str,
        i: int,
        labels: np.ndarray,
        *,
        prob: np.ndarray | None = None,
        overwrite: bool = False,
    ) -> str:
        """Write scan ``i``'s mask (0/1/2, shape ``shapes[i]`` or ``grid_shape``), idempotent.

        Creates ``masks/<method>/<contrast>`` on first use. ``prob``: float (2, *shape)
        left/right probabilities in [0, 1], stored quantised to uint8 (1/255 steps).
        Returns ``"written"`` or ``"skipped"`` (same content already there).

        Raises
        ------
        StoreConflictError
            different content is stored and ``overwrite`` is False.
        ValueError
            labels outside {0, 1, 2} or a wrong shape.
        """
        from thaldask.store._io import content_hash

        i = int(i)
        shp = tuple(int(v) for v in self.shapes[i])
        lab = np.asarray(labels)
        if lab.shape == self.grid_shape and shp != self.grid_shape:
            lab = lab[: shp[0], : shp[1], : shp[2]]
        if lab.shape != shp:
            raise ValueError(
                f"write_mask: labels of scan {i} have shape {lab.shape}; expected {shp} "
                f"(or the padded grid {self.grid_shape})"
            )
        if lab.dtype.kind == "f" and not np.all(lab == np.round(lab)):
            raise ValueError("write_mask: labels hold non-integer values")
        lab = lab.astype(np.uint8)
        if lab.size and lab.max() > 2:
            raise ValueError("write_mask: labels must be 0 background, 1 left, 2 right")
        name = f"masks/{method}/{contrast}"
        self.ensure_array(name, dtype="uint8")
        extra = {}
        flags = 0
        h_parts = [lab]
        if prob is not None:
            p = np.asarray(prob, dtype=np.float32)
            if p.shape == (2,) + self.grid_shape and shp != self.grid_shape:
                p = p[:, : shp[0], : shp[1], : shp[2]]
            if p.shape != (2,) + shp:
                raise ValueError(f"write_mask: prob has shape {p.shape}; expected {(2,) + shp}")
            q = np.round(np.clip(np.nan_to_num(p), 0, 1) * 255).astype(np.uint8)
            pname = f"probs/{method}/{contrast}"
            self.ensure_array(pname, dtype="uint8", extra_dims=(2,))
            extra[pname] = q
            flags |= HAS_PROB
            h_parts.append(q)
        full = np.zeros(self.grid_shape, np.uint8)
        full[: shp[0], : shp[1], : shp[2]] = lab
        if len(h_parts) == 1:  # same digest as ingest gives the same mask
            digest = content_hash(full, self.affines[i])
        else:
            parts = [full] + [np.ascontiguousarray(a) for a in h_parts[1:]]
            digest = content_hash(np.concatenate([a.ravel() for a in parts]), self.affines[i])
        return self.write_scan_array(
            name,
            i,
            lab,
            flags=flags,
            content_sha256=digest,
            overwrite=overwrite,
            extra=extra,
        )

    # ------------------------------------------------------------------ tables
    @property
    def clinical(self) -> pd.DataFrame | None:
        """The validated clinical table stored at ingest, or None."""
        c = self._attrs.get("clinical")
        if not c:
            return None
        df = pd.DataFrame(c["data"], columns=c["columns"])
        for col, dt in c["dtypes"].items():
            if dt.startswith(("float", "int")):
                df[col] = pd.to_numeric(df[col], errors="coerce").astype("float64")
            else:
                df[col] = df[col].astype(object)
        return df

    def write_results(self, ds, name: str = "results") -> None:
        """Persist an xarray Dataset under ``results/<name>`` (replacing an older one)."""
        if self.read_only:
            raise StoreError(f"{self.path}: store opened read-only")
        ds = ds.copy()
        for v in list(ds.variables):
            if ds[v].dtype == object or ds[v].dtype.kind in "UT":
                vals = np.asarray(ds[v].values, dtype=object)
                clean = np.array(
                    ["" if (x is None or (isinstance(x, float) and x != x)) else str(x)
                     for x in vals.ravel()],
                    dtype=object,
                ).reshape(vals.shape)
                ds[v] = ds[v].copy(data=clean)
        ds.to_zarr(
            self._zstore, group=f"results/{name}", mode="w", zarr_format=3, consolidated=False
        )

    def open_results(self, name: str = "results"):
        """The xarray Dataset stored by :meth:`write_results` (loaded into memory)."""
        import xarray as xr

        try:
            ds = xr.open_zarr(
                self._zstore, group=f"results/{name}", consolidated=False, chunks=None, zarr_format=3
            )
        except (FileNotFoundError, KeyError) as exc:
            raise StoreNotFoundError(f"{self.path}: no results dataset {name!r}") from exc
        ds = ds.load()
        for v in list(ds.variables):
            if ds[v].dtype.kind in "TU":
                ds[v] = ds[v].astype(object)
        return ds

    def recode_as_float(self, name: str, *, layout: dict | None = None) -> int:
        """Re-encode a decimal array (:func:`decimal_scale`) as plain float32, bit for bit.

        Ingest calls this when a scan brings values with more decimals than the array
        stores. Float chunks are written under the other chunk-key encoding beside the
        decimal ones, the array metadata then switches to them in one write, and the
        decimal chunks are deleted last: at every moment the array reads the same values
        (an interruption leaves unused chunk files at worst). Returns the number of scans
        re-encoded.
        """
        import itertools

        from zarr.core.array import Array, AsyncArray
        from zarr.core.metadata import ArrayV3Metadata
        from zarr.core.sync import sync

        if self.read_only:
            raise StoreError(f"{self.path}: store opened read-only")
        z = self._array(name, mode="r+")
        self.__dict__.pop("_decimal_cache", None)
        if decimal_scale(z) is None:
            return 0
        lay = {**default_layout(), **(layout or self._attrs.get("layout") or {}),
               "float_codec": "blosc"}
        blosc = _codec(z.dtype, lay)["compressors"][0]
        md = z.metadata.to_dict()
        md["codecs"] = [{"name": "bytes", "configuration": {"endian": "little"}}, blosc.to_dict()]
        old_enc = md.get("chunk_key_encoding", {}).get("name", "default")
        md["chunk_key_encoding"] = (
            {"name": "v2", "configuration": {"separator": "."}} if old_enc == "default"
            else {"name": "default", "configuration": {"separator": "/"}}
        )
        new_md = ArrayV3Metadata.from_dict(md)
        new = Array(AsyncArray(metadata=new_md, store_path=z.store_path))
        written = np.flatnonzero(self._written(name))
        for i in written:
            vals = np.asarray(z[int(i)])
            if not _write_whole_chunk(new, int(i), vals):
                new[int(i)] = vals
        sync(new._async_array._save_metadata(new_md))
        base = f"{z.store_path.path}/" if z.store_path.path else ""
        if old_enc == "default":  # every key under c/ is an old chunk
            sync(z.store.delete_dir(base + "c"))
        else:
            for i in written:
                for rest in itertools.product(*(range(n) for n in z.cdata_shape[1:])):
                    sync(z.store.delete(base + z.metadata.encode_chunk_key((int(i),) + rest)))
        return int(written.size)

    def consolidate(self) -> None:
        """Write consolidated metadata (one read opens the whole store on object storage)."""
        import zarr

        with quiet_zarr():
            zarr.consolidate_metadata(self._zstore)


class _ArraySource:
    """Read access to one store array that travels as (path, name): a worker reopens it
    itself (with zarr's concurrency lowered), never receiving array data or store objects."""

    def __init__(self, path, name, storage_options, shape, dtype, z=None):
        self.path, self.name, self.storage_options = path, name, storage_options
        self.shape, self.dtype, self.ndim = tuple(shape), np.dtype(dtype), len(shape)
        self._z = z

    def _zarr(self):
        if self._z is None:
            import zarr

            set_zarr_concurrency()
            zs = make_zarr_store(self.path, read_only=True, storage_options=self.storage_options)
            self._z = zarr.open_array(store=zs, path=self.name, mode="r")
        return self._z

    def __getitem__(self, key):
        return self._zarr()[key]

    def __reduce__(self):
        return (_ArraySource, (self.path, self.name, self.storage_options, self.shape, self.dtype))


def _reopen(path, storage_options, read_only):
    return CohortStore(path, storage_options=storage_options, read_only=read_only)


def open_store(
    path: str | os.PathLike,
    *,
    storage_options: dict | None = None,
    consolidated: bool | None = None,
    read_only: bool = False,
) -> CohortStore:
    """Open a cohort store (local path or fsspec URL such as ``s3://bucket/cohort.zarr``).

    Parameters
    ----------
    path : store location
    storage_options : passed to fsspec for URLs (credentials, endpoint)
    consolidated : use consolidated metadata (default False: members are listed directly,
        which is always current; True saves round trips when only reading from a URL)
    read_only : open without write access

    Raises
    ------
    StoreNotFoundError
        nothing at ``path``.
    """
    return CohortStore(
        path, storage_options=storage_options, consolidated=consolidated, read_only=read_only
    )


def create_store(
    path: str,
    *,
    scans: pd.DataFrame,
    grid_shape,
    scan_meta: dict,
    reference: list[str],
    orig_axcodes: list[str],
    layout: dict | None = None,
    storage_options: dict | None = None,
) -> CohortStore:
    """Create a new store with its scan table and scan-level metadata (written once)."""
    import zarr

    zs = make_zarr_store(path, storage_options=storage_options)
    attrs = {
        "thaldask": {"format": FORMAT_VERSION, "version": _version(), "created": _now()},
        "scans": {k: [str(v) for v in scans[k]] for k in ("subject", "timepoint", "site")},
        "grid_shape": [int(v) for v in grid_shape],
        "reference": list(reference),
        "orig_axcodes": list(orig_axcodes),
        "layout": {**default_layout(), **(layout or {})},
        "clinical": None,
    }
    zarr.open_group(store=zs, mode="w", attributes=json.loads(json.dumps(attrs)))
    for key, arr in scan_meta.items():
        arr = np.ascontiguousarray(arr)
        zarr.create_array(
            store=zs,
            name=f"scan/{key}",
            shape=arr.shape,
            chunks=arr.shape,
            dtype=arr.dtype,
            fill_value=0,
            overwrite=True,
        )[...] = arr
    return CohortStore(path, storage_options=storage_options)


def append_scans(st: CohortStore, scans: pd.DataFrame, scan_meta: dict, reference, orig_axcodes):
    """Grow every per-scan array to ``len(scans)`` and rewrite the scan-level metadata.

    Called by the single process that plans an ingest, before any task writes.
    """
    import zarr

    n_old, n = st.n_scans, len(scans)
    with quiet_zarr():
        members = list(st._group.members(max_depth=None))
    for name, node in members:
        if hasattr(node, "shape") and not name.startswith("scan/") and not name.startswith("results"):
            if node.shape and node.shape[0] == n_old:
                node.resize((n,) + tuple(node.shape[1:]))
    for key, arr in scan_meta.items():
        arr = np.ascontiguousarray(arr)
        zarr.create_array(
            store=st._zstore, name=f"scan/{key}", shape=arr.shape, chunks=arr.shape,
            dtype=arr.dtype, fill_value=0, overwrite=True,
        )[...] = arr
    attrs = {
        "scans": {k: [str(v) for v in scans[k]] for k in ("subject", "timepoint", "site")},
        "reference": list(reference),
        "orig_axcodes": list(orig_axcodes),
    }
    st._group.attrs.update(attrs)


def set_clinical(st: CohortStore, df: pd.DataFrame | None) -> None:
    """Store a validated clinical table in the root attributes (JSON, NaN as null)."""
    if df is None:
        st._group.attrs["clinical"] = None
        st._attrs["clinical"] = None
        return
    data = df.astype(object).where(pd.notna(df), None).values.tolist()
    payload = {
        "columns": [str(c) for c in df.columns],
        "dtypes": {str(c): str(df[c].dtype) for c in df.columns},
        "data": json.loads(json.dumps(data, default=_json_default)),
    }
    st._group.attrs["clinical"] = payload
    st._attrs["clinical"] = payload


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    return str(o)
