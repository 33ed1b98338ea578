"""The cohort store handle: :class:`CohortStore` and :func:`open_store`.

The layout is described (and every node name defined) in :mod:`thaldask.store.format`;
codecs come from :mod:`thaldask.store.codecs`. Besides images and masks, a store holds
derived per-scan arrays (caches such as evaluate's ``_metrics``): other stages create,
write and read them through :meth:`CohortStore.ensure_derived`,
:func:`write_derived_rows` and :meth:`CohortStore.read_derived`, never through zarr.
"""

from __future__ import annotations

import json
import os
from functools import cached_property

import numpy as np
import pandas as pd

from thaldask.errors import StoreError, StoreNotFoundError
from thaldask.store.backend import make_zarr_store, quiet_zarr, set_zarr_concurrency
from thaldask.store.codecs import new_array_record_chunk
from thaldask.store.format import (
    BINARY,
    HAS_PROB,
    NAN_REPLACED,
    READABLE_FORMATS,
    RECORD_LEN,
    RESAMPLED,
    ROOT_ATTR,
    SCALED,
    WRITTEN,
    image_array,
    is_listed,
    mask_array,
    prob_array,
    record_array,
    results_group,
    scan_meta_array,
)
from thaldask.store.scan_writes import ScanWriter
from thaldask.store.tables import read_clinical, read_scan_column, v1_tables

__all__ = [
    "CohortStore",
    "open_store",
    "open_array",
    "write_derived_rows",
    "write_scan_meta",
]


class CohortStore(ScanWriter):
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
                    store=self._zstore, mode="r" if read_only else "r+", use_consolidated=consolidated,
                    zarr_format=3,  # v3 only: no probes for v2 .zgroup/.zattrs
                )
        except (FileNotFoundError, KeyError, zarr.errors.NodeTypeValidationError) as exc:
            raise StoreNotFoundError(f"{self.path}: no cohort store here ({type(exc).__name__})") from None
        attrs = dict(self._group.attrs)
        if ROOT_ATTR not in attrs:
            raise StoreError(f"{self.path}: a Zarr group but not a thaldask cohort store")
        self._attrs = attrs
        fmt = attrs[ROOT_ATTR].get("format")
        if fmt not in READABLE_FORMATS:
            raise StoreError(f"{self.path}: store format {fmt}; this thaldask reads "
                             f"{', '.join(map(str, READABLE_FORMATS))}")
        #: the store's layout version (1: tables in the root attributes; see tables.py)
        self.format = int(fmt)

    # ------------------------------------------------------------------ basics
    def __repr__(self) -> str:
        return f"<CohortStore {self.path!r}: {self.n_scans} scans, grid {self.grid_shape}, contrasts {self.contrasts}>"

    def __reduce__(self):
        return (_reopen, (self.path, self.storage_options, self.read_only))

    def zarr_array(self, name: str, mode: str = "r"):
        """The zarr array ``name`` of the store (a path from :mod:`thaldask.store.format`).

        Opened for writing, it writes every chunk of a region, also all-zero ones (an
        absent chunk inside a scan's true shape then always means lost data).

        Handles are kept for the life of this store object (one metadata read per array, not
        one per call; on object storage that is one request per scan and array saved), and
        dropped when this handle grows the store (:meth:`forget_tables`).

        Raises KeyError when the store has no such array."""
        import zarr

        cache = self.__dict__.setdefault("_handles", {})
        z = cache.get((name, mode))
        if z is None:
            try:
                z = zarr.open_array(store=self._zstore, path=name, mode=mode, zarr_format=3)
            except (FileNotFoundError, KeyError) as exc:
                raise KeyError(name) from exc  # never cached: it may be created later
            cache[(name, mode)] = z
        return z if mode == "r" else z.with_config({"write_empty_chunks": True})

    @cached_property
    def scans(self) -> pd.DataFrame:
        """DataFrame indexed by ``scan`` (0..n-1) with columns subject, timepoint, site."""
        if self.format < 2:
            df = v1_tables(self._attrs)[0]
        else:
            df = pd.DataFrame({k: read_scan_column(self._zstore, k) for k in ("subject", "timepoint", "site")})
        df.index.name = "scan"
        return df

    @property
    def n_scans(self) -> int:
        if self.format < 2:
            return len(self._attrs["scans"]["subject"])
        return int(self._attrs["n_scans"])

    @property
    def grid_shape(self) -> tuple[int, int, int]:
        return tuple(int(v) for v in self._attrs["grid_shape"])

    @cached_property
    def shapes(self) -> np.ndarray:
        """(scan, 3) int: each scan's true RAS shape."""
        return np.asarray(self.zarr_array(scan_meta_array("shape"))[...], dtype=np.int64)

    @cached_property
    def spacing(self) -> np.ndarray:
        """(scan, 3) float: voxel size in mm."""
        return np.asarray(self.zarr_array(scan_meta_array("spacing"))[...], dtype=np.float64)

    @cached_property
    def affines(self) -> np.ndarray:
        """(scan, 4, 4) float64: RAS affine of each stored grid."""
        return np.asarray(self.zarr_array(scan_meta_array("affine"))[...], dtype=np.float64)

    @cached_property
    def orig_affines(self) -> np.ndarray:
        """(scan, 4, 4): affine of each scan's reference file as given."""
        return np.asarray(self.zarr_array(scan_meta_array("orig_affine"))[...], dtype=np.float64)

    @cached_property
    def orig_shapes(self) -> np.ndarray:
        return np.asarray(self.zarr_array(scan_meta_array("orig_shape"))[...], dtype=np.int64)

    @cached_property
    def orig_ornt(self) -> np.ndarray:
        """(scan, 3, 2): nibabel orientation taking the original voxel axes to RAS."""
        return np.asarray(self.zarr_array(scan_meta_array("orig_ornt"))[...], dtype=np.float64)

    @cached_property
    def reference(self) -> list[str]:
        """Contrast whose grid each scan uses."""
        if self.format < 2:
            return list(self._attrs.get("reference", []))
        return list(read_scan_column(self._zstore, "reference"))

    def orig_header(self, i: int) -> tuple[int, bytes]:
        """(format code, scrubbed header bytes) of scan ``i``'s reference file."""
        info = self.zarr_array(scan_meta_array("header_info"))[i]
        raw = self.zarr_array(scan_meta_array("header"))[i]
        return int(info[0]), bytes(np.asarray(raw[: int(info[1])], dtype=np.uint8))

    @property
    def attrs(self) -> dict:
        """The store's root attributes (a copy): format marker, scans, grid, layout, ..."""
        return json.loads(json.dumps(self._attrs))

    @property
    def layout(self) -> dict:
        """Chunking and codec settings the store was created with (see ``codecs``)."""
        return dict(self._attrs.get("layout") or {})

    @property
    def record_chunk(self) -> int:
        """Scans per chunk of the write records, digests and uncertainties of a new array
        (1 in stores made before the setting; grows with the store, see
        :func:`~thaldask.store.codecs.new_array_record_chunk`). Tasks that write scans own
        whole chunks of them: batch scans with :func:`thaldask._shared.compute.owned_batches`."""
        return new_array_record_chunk(self.layout, self.n_scans)

    def write_chunk(self, names) -> int:
        """Scans per record chunk that tasks writing arrays ``names`` must own whole: the
        largest chunk of their existing write records (new ones get :attr:`record_chunk`)."""
        out = 1
        for name in names:
            try:
                out = max(out, int(self.zarr_array(record_array(name)).chunks[0]))
            except KeyError:
                out = max(out, self.record_chunk)
        return out

    @cached_property
    def orig_axcodes(self) -> list[str]:
        """Orientation code of each scan's reference file, e.g. ``'LIA'``."""
        if self.format < 2:
            return list(self._attrs.get("orig_axcodes", []))
        return list(read_scan_column(self._zstore, "orig_axcodes"))

    def scan_meta(self, key: str) -> np.ndarray:
        """Scan-level metadata array ``scan/<key>`` (eager), e.g. ``affine``."""
        return np.asarray(self.zarr_array(scan_meta_array(key))[...])

    def has_array(self, name: str) -> bool:
        """Whether the store holds array ``name``."""
        try:
            self.zarr_array(name)
            return True
        except KeyError:
            return False

    def array_members(self) -> list[tuple[str, object]]:
        """(path, zarr array) of every array in the store."""
        with quiet_zarr():
            members = list(self._group.members(max_depth=None))
        return [(name, node) for name, node in members if hasattr(node, "shape")]

    def forget_array(self, name: str) -> None:
        """Drop the kept handles of array ``name`` (its metadata changed)."""
        for mode in ("r", "r+"):
            self.__dict__.get("_handles", {}).pop((name, mode), None)

    def write_scan_meta(self, scan_meta: dict) -> None:
        """Rewrite scan-level metadata arrays whole (:func:`write_scan_meta`)."""
        if self.read_only:
            raise StoreError(f"{self.path}: store opened read-only")
        write_scan_meta(self._zstore, scan_meta)
        for key in scan_meta:
            self.forget_array(scan_meta_array(key))

    def update_attrs(self, attrs: dict) -> None:
        """Update root attributes (JSON values) in the store and in this handle."""
        if self.read_only:
            raise StoreError(f"{self.path}: store opened read-only")
        self._group.attrs.update(attrs)
        self._attrs.update(attrs)
        self.forget_tables()

    def forget_tables(self) -> None:
        """Drop the tables read so far (they are read again on next use)."""
        for key in ("scans", "reference", "orig_axcodes", "shapes", "spacing", "affines", "_handles"):
            self.__dict__.pop(key, None)

    def _members(self, prefix: str) -> list[str]:
        try:
            g = self._group[prefix] if prefix else self._group
        except KeyError:
            return []
        out = []
        with quiet_zarr():
            members = list(g.members(max_depth=None))
        for name, node in members:
            if hasattr(node, "shape") and is_listed(name):
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
            return np.asarray(self.zarr_array(record_array(name))[...])
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

    def written(self, name: str) -> np.ndarray:
        """(scan,) bool: which scans array ``name`` holds (its records say written)."""
        return (self._record(name)[:, 0].astype(np.int64) & WRITTEN) > 0

    def has_image(self, contrast: str) -> np.ndarray:
        """(scan,) bool: which scans have this image."""
        return self.written(image_array(contrast))

    def has_mask(self, method: str, contrast: str) -> np.ndarray:
        """(scan,) bool: which scans have this mask."""
        return self.written(mask_array(method, contrast))

    # ------------------------------------------------------------------ lazy views
    def _view(self, name: str, dtype):
        import dask.array as da
        import xarray as xr

        try:
            z = self.zarr_array(name)
        except KeyError:
            raise KeyError(f"{self.path}: no array {name!r} in the store") from None
        chunks = (1,) + tuple(z.shape[1:])  # one scan per dask chunk, also in a sharded array
        from dask.base import tokenize

        token = tokenize(self.path, name, self._attrs[ROOT_ATTR].get("created"), z.shape)
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
        return self._view(image_array(contrast), np.float32)

    def mask(self, method: str, contrast: str):
        """xarray.DataArray (scan, x, y, z) uint8 0 bg / 1 left / 2 right, lazy."""
        return self._view(mask_array(method, contrast), np.uint8)

    # ------------------------------------------------------------------ eager loads
    def _crop(self, i: int):
        sx, sy, sz = (int(v) for v in self.shapes[i])
        return (int(i), slice(0, sx), slice(0, sy), slice(0, sz))

    def load_image(self, contrast: str, i: int) -> np.ndarray:
        """Scan ``i``'s image as float32 (eager), cropped to ``shapes[i]``."""
        self._settle(image_array(contrast), i)
        return np.asarray(self.zarr_array(image_array(contrast))[self._crop(i)], dtype=np.float32)

    def load_mask(self, method: str, contrast: str, i: int) -> np.ndarray:
        """Scan ``i``'s mask as uint8 0/1/2 (eager), cropped to ``shapes[i]``."""
        self._settle(mask_array(method, contrast), i)
        return np.asarray(self.zarr_array(mask_array(method, contrast))[self._crop(i)], dtype=np.uint8)

    def load_prob(self, method: str, contrast: str, i: int) -> np.ndarray | None:
        """Scan ``i``'s left/right probabilities, float32 (2, *shape) in [0, 1], or None."""
        name = prob_array(method, contrast)
        try:
            flags = int(self._row("record", mask_array(method, contrast), i)[0])
            z = self.zarr_array(name)
        except KeyError:
            return None
        if not flags & HAS_PROB:
            return None
        sx, sy, sz = (int(v) for v in self.shapes[i])
        self._settle(name, i)
        q = np.asarray(z[int(i), :, :sx, :sy, :sz])
        return q.astype(np.float32) / np.float32(255)

    # ------------------------------------------------------------------ derived arrays
    def ensure_derived(self, name: str, *, row_shape, dtype, fill_value, chunk_scans: int = 1) -> np.ndarray:
        """Create derived per-scan array ``name`` (``(scan, *row_shape)``, ``chunk_scans``
        scans per chunk) unless it exists with that shape; return its contents (eager).

        Derived arrays are caches computed from the store (``format.metrics_array``); one
        whose shape no longer matches (scans were appended) is created afresh."""
        import zarr

        shape = (self.n_scans,) + tuple(int(v) for v in row_shape)
        try:
            z = self.zarr_array(name)
            if tuple(z.shape) != shape:
                raise KeyError(name)
        except KeyError:
            if self.read_only:
                raise StoreError(f"{self.path}: store opened read-only") from None
            z = zarr.create_array(
                store=self._zstore, name=name, shape=shape,
                chunks=(max(1, min(int(chunk_scans), shape[0])),) + shape[1:], dtype=dtype,
                fill_value=fill_value, overwrite=True,
            )
            self.forget_array(name)
        return np.asarray(z[...])

    def read_derived(self, name: str) -> np.ndarray | None:
        """Contents of derived array ``name`` (eager), or None when it does not exist."""
        try:
            return np.asarray(self.zarr_array(name)[...])
        except KeyError:
            return None

    def write_derived(self, name: str, rows: dict[int, np.ndarray]) -> None:
        """Write rows ``{scan: value}`` of derived array ``name`` (see :func:`write_derived_rows`)."""
        write_derived_rows(self.path, name, rows, storage_options=self.storage_options or None)

    # ------------------------------------------------------------------ tables
    @property
    def clinical(self) -> pd.DataFrame | None:
        """The validated clinical table stored at ingest, or None."""
        c = self._attrs.get("clinical")
        if not c:
            return None
        if self.format < 2:
            return v1_tables(self._attrs)[3]
        return read_clinical(self._zstore, c)

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
            self._zstore, group=results_group(name), mode="w", zarr_format=3, consolidated=False
        )

    def open_results(self, name: str = "results"):
        """The xarray Dataset stored by :meth:`write_results` (loaded into memory)."""
        import xarray as xr

        try:
            ds = xr.open_zarr(
                self._zstore, group=results_group(name), consolidated=False, chunks=None, zarr_format=3
            )
        except (FileNotFoundError, KeyError) as exc:
            raise StoreNotFoundError(f"{self.path}: no results dataset {name!r}") from exc
        ds = ds.load()
        for v in list(ds.variables):
            if ds[v].dtype.kind in "TU":
                ds[v] = ds[v].astype(object)
        return ds

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
            self._z = zarr.open_array(store=zs, path=self.name, mode="r", zarr_format=3)
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


def open_array(path: str, name: str, *, storage_options: dict | None = None):
    """Array ``name`` of the store at ``path``, read-only, without opening the whole store
    (for tasks that read a few scans of one array)."""
    import zarr

    zs = make_zarr_store(str(path), read_only=True, storage_options=storage_options)
    return zarr.open_array(store=zs, path=name, mode="r", zarr_format=3)


def write_derived_rows(
    path: str, name: str, rows: dict[int, np.ndarray], *, storage_options: dict | None = None
) -> None:
    """Write rows ``{scan: value}`` of an existing derived array, in the order given.

    Each row is one scan's chunk, so tasks writing different scans never share a chunk.
    Opens only that array (tasks call this with the store path)."""
    import zarr

    if not rows:
        return
    zs = make_zarr_store(str(path), storage_options=storage_options)
    z = zarr.open_array(store=zs, path=name, mode="r+", zarr_format=3)
    for i, value in rows.items():
        z[int(i)] = value


def write_scan_meta(zstore, scan_meta: dict) -> None:
    """(Re)write the scan-level metadata arrays ``scan/<key>`` whole (one chunk each).

    Only the process that creates or grows a store calls this, before any task writes."""
    import zarr

    for key, arr in scan_meta.items():
        arr = np.ascontiguousarray(arr)
        zarr.create_array(
            store=zstore, name=scan_meta_array(key), shape=arr.shape, chunks=arr.shape,
            dtype=arr.dtype, fill_value=0, overwrite=True,
        )[...] = arr

