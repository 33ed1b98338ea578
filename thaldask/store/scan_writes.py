"""Idempotent per-scan writes into the cohort store: arrays, their records and digests.

:class:`ScanWriter` is the writing half of :class:`~thaldask.store.cohort_store.CohortStore`
(which inherits it): each call touches the data chunks of one scan and its row of the
write record and digests, which hold :attr:`~CohortStore.record_chunk` scans per chunk
(16 in new stores: few files per scan). Independent tasks can therefore write different
scans of one array when each owns whole record chunks: batch scans with
:func:`~thaldask._shared.compute.owned_batches` and
:meth:`~CohortStore.write_chunk` (every thaldask stage does); two writers of one record
chunk at once would lose each other's rows. A scan's record is written last, so an
interrupted write reads as "not written".

New data arrays of a store whose layout has ``shards`` are sharded
(:mod:`thaldask.store.shards`): ``record_chunk`` scans per shard file when that is more
than one, so the task owning a record chunk owns the shard as well. Inside
:meth:`ScanWriter.record_batch` each scan's inner chunks are encoded when written and every
shard is written once, whole, when the block ends (or earlier, partially, when the
buffered bytes exceed ``thaldask.store.shard-buffer-mb``), always before the records that
mark its scans written. Outside a batch a write to a sharded array rewrites its shard at
once (correct, but O(S) bytes per scan).
"""

from __future__ import annotations

import contextlib

import numpy as np

from thaldask import config
from thaldask.errors import StoreConflictError, StoreError
from thaldask.store.codecs import (
    array_codecs,
    decimal_scale,
    decode_decimal,
    default_layout,
    encode_scan,
    n_decimals,
    recode_as_float,
    spatial_chunks,
    write_whole_chunk,
)
from thaldask.store.fastcopy import quantised_copy
from thaldask.store.format import (
    FILE_DIGEST_ONLY,
    HAS_PROB,
    HASH_LEN,
    RECORD_LEN,
    WRITTEN,
    hash_array,
    mask_array,
    prob_array,
    record_array,
    volume_sd_array,
)
from thaldask.store.nifti import content_hash
from thaldask.store.shards import is_sharded, scan_inner_chunks, write_shard

__all__ = ["ScanWriter"]


class ScanWriter:
    """Writes of :class:`~thaldask.store.cohort_store.CohortStore` (a mixin: it uses the
    store's ``path``, ``read_only``, grid, ``zarr_array`` and records)."""

    def decimal_scale(self, name: str) -> tuple[int, np.dtype] | None:
        """(scale, integer dtype) when array ``name`` stores integers value * scale."""
        cache = self.__dict__.setdefault("_decimal_cache", {})
        if name not in cache:
            cache[name] = decimal_scale(self.zarr_array(name))
        return cache[name]

    # ------------------------------------------------------------------ record batches
    @contextlib.contextmanager
    def record_batch(self):
        """Within the block, write records and digests of first-time writes once per chunk.

        For a task that owns whole record chunks (see the module docstring): each chunk of
        a record or digest array is read once, first-time writes update it in memory, and
        on leaving the block (also after an error) every changed chunk is written, digests
        before records. A scan whose data were written but whose record was not (the task
        was killed) reads as not written and is written again next run. Overwrites of a
        stored scan still mark it not written at once, before its data change.

        Sharded arrays: the task must own whole shards too (their scans per shard equal the
        record chunk); their scans' encoded data are kept and each shard is written once,
        before any record."""
        self.__dict__["_record_batch"] = batch = {}
        self.__dict__["_shard_batch"] = {}
        try:
            yield
        finally:
            try:
                self._flush_shards()  # data before the records that mark them written
            finally:
                self.__dict__.pop("_shard_batch", None)
                self.__dict__.pop("_record_batch", None)
            for kind in ("hash", "record"):  # digests first: a record marks its scan written
                for (name, k), (rows, dirty) in batch.items():
                    if dirty and k[0] == kind:
                        arr = self.zarr_array(name, mode="r+")
                        lo = k[1] * arr.chunks[0]
                        arr[lo:lo + len(rows)] = rows

    def _row(self, kind: str, name: str, i: int) -> np.ndarray:
        """Row ``i`` of the record (``kind`` "record") or digests ("hash") of array ``name``;
        inside :meth:`record_batch`, read a chunk at a time and kept."""
        path = record_array(name) if kind == "record" else hash_array(name)
        batch = self.__dict__.get("_record_batch")
        z = self.zarr_array(path)
        if batch is None:
            return np.asarray(z[int(i)])
        c = int(i) // z.chunks[0]
        key = (path, (kind, c))
        if key not in batch:
            lo = c * z.chunks[0]
            batch[key] = [np.array(z[lo:min(lo + z.chunks[0], z.shape[0])]), False]
        return batch[key][0][int(i) - c * z.chunks[0]]

    def _defer_rows(self, name: str, i: int, rec: np.ndarray, h: np.ndarray) -> bool:
        """Queue scan ``i``'s digests and record in the open batch; False without one."""
        batch = self.__dict__.get("_record_batch")
        if batch is None:
            return False
        for kind, row in (("hash", h), ("record", rec)):
            self._row(kind, name, i)  # its chunk is in the batch now
            path = record_array(name) if kind == "record" else hash_array(name)
            z = self.zarr_array(path)
            entry = batch[(path, (kind, int(i) // z.chunks[0]))]
            entry[0][int(i) % z.chunks[0]] = row
            entry[1] = True
        return True

    # ------------------------------------------------------------------ shard buffers
    def _put_scan(self, name: str, z, i: int, full: np.ndarray, values=None) -> bool:
        """Store scan ``i``'s whole padded row ``full`` of sharded array ``z`` (``name``):
        buffered in the open batch (True), else its shard is rewritten now (False)."""
        cache = self.__dict__.setdefault("_encoders", {})
        chunks = encode_scan(z, i, full, values, cache=cache)
        sb = self.__dict__.get("_shard_batch")
        if sb is None:
            by_shard: dict = {}
            for (coords, pos), b in chunks.items():
                by_shard.setdefault(coords, {})[pos] = b
            for coords, got in by_shard.items():
                write_shard(z, coords, got)
            return False
        pending = sb.setdefault(name, {})
        for (coords, pos), b in chunks.items():
            pending.setdefault(coords, {})[pos] = b
        sb["_bytes"] = sb.get("_bytes", 0) + sum(len(b) for b in chunks.values())
        budget = float(config.get("store.shard-buffer-mb", 512) or 512) * 2**20
        if sb["_bytes"] > budget:  # flush what is held (the task owns these shards)
            self._flush_shards()
        return True

    def _settle(self, name: str, i: int) -> None:
        """Write the buffered shards holding scan ``i`` of ``name`` (before reading it)."""
        sb = self.__dict__.get("_shard_batch")
        if sb and any(c[0] == int(i) // self._shard_scans(name) for c in sb.get(name, {})):
            self._flush_shards(name)

    def _shard_scans(self, name: str) -> int:
        z = self.zarr_array(name)
        return int(z.metadata.chunk_grid.chunk_shape[0])

    def _flush_shards(self, only: str | None = None) -> None:
        """Write every buffered shard (of array ``only``), each whole; a scan recorded
        written whose inner chunks the shard turns out to lack is marked not written in the
        batch (it is redone next run, never read as an empty mask)."""
        sb = self.__dict__.get("_shard_batch")
        if not sb:
            return
        for name in [n for n in sb if n != "_bytes" and (only is None or n == only)]:
            z = self.zarr_array(name, mode="r+")
            pending = sb.pop(name)
            for coords in sorted(pending):
                absent = write_shard(z, coords, pending[coords])
                self._lost(name, z, coords, absent)
        sb["_bytes"] = sum(len(b) for n, p in sb.items() if n != "_bytes"
                           for got in p.values() for b in got.values())

    def _lost(self, name, z, coords, absent) -> None:
        if not absent or "_record_batch" not in self.__dict__:
            return
        try:
            self.zarr_array(record_array(name))
        except KeyError:  # probabilities: no record of their own
            return
        for j in sorted({j for j, _ in absent}):
            flags = int(self._row("record", name, j)[0])
            if not flags & WRITTEN:
                continue
            need = {p for c, p in scan_inner_chunks(z, j, self.shapes[j]) if c == tuple(coords)}
            if need & {p for k, p in absent if k == j}:
                rec = np.array(self._row("record", name, j))
                rec[0] = 0.0
                self._defer_rows(name, j, rec, np.array(self._row("hash", name, j)))

    # ------------------------------------------------------------------ writes
    def ensure_array(
        self, name: str, *, dtype, extra_dims: tuple[int, ...] = (), layout=None, decimals=None,
        record_chunk: int | None = None,
    ):
        """Create a per-scan array (and its record/hash arrays) unless it exists.

        ``decimals`` = (d, integer dtype) stores a float array as integers value * 10**d
        (the caller has checked that its data have d decimals; see ``array_codecs``).
        ``record_chunk``: scans per chunk of its write records and digests (default: the
        store's; 1 for arrays whose writers run one task per scan). When it is more than 1
        and the layout has ``shards`` (new stores), the data array is sharded with as many
        scans per shard file, each scan an inner chunk as before."""
        import zarr

        if self.read_only:
            raise StoreError(f"{self.path}: store opened read-only")
        layout = layout or self.layout or default_layout()
        g = self.grid_shape
        n = self.n_scans
        rc = int(record_chunk or self.record_chunk)  # exactly: tasks own whole chunks of it
        shape = (n,) + tuple(extra_dims) + g
        chunks = (1,) + tuple(extra_dims) + spatial_chunks(g, layout)
        codecs = array_codecs(dtype, layout, decimals)
        if layout.get("shards") and rc > 1:  # whole spatial extent, a multiple of the chunks
            codecs = {**codecs, "shards": (rc,) + tuple(extra_dims) + tuple(
                -(-s // c) * c for s, c in zip(g, chunks[-3:], strict=True))}
        dims = ("scan",) + tuple(f"dim{k}" for k in range(len(extra_dims))) + ("x", "y", "z")
        specs = [
            (name, shape, chunks, dtype, codecs, dims),
            (record_array(name), (n, RECORD_LEN), (rc, RECORD_LEN), "float64", None, None),
            (hash_array(name), (n, HASH_LEN), (rc, HASH_LEN), "uint8", None, None),
        ]
        for path, shp, chk, dt, codec, dn in specs:
            try:
                z = self.zarr_array(path)
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
        integers from :func:`~thaldask.store.fastcopy.quantised_copy`.

        ``content_sha256`` is the digest of the padded region as stored (with
        :func:`~thaldask.store.nifti.content_hash` and ``affines[i]``), or a function giving it:
        then it is computed only when something is already stored (a first write records
        the source file's digest only, and the stored region is hashed if ever needed).

        Returns ``"written"`` or ``"skipped"`` (same content already stored).

        Raises
        ------
        StoreConflictError
            different content is stored and ``overwrite`` is False.
        """
        i = int(i)
        z = self.zarr_array(name, mode="r+")
        dec = decimal_scale(z)
        if dec is not None and data.dtype != dec[1]:  # values: exact integers or refused
            k = quantised_copy(np.asarray(data, dtype=z.dtype), None, dec[0], dec[1])
            if k is None:
                raise StoreError(
                    f"{self.path}: {name} stores values with {n_decimals(dec[0])} decimals; "
                    f"scan {i} has others (recode_as_float({name!r}) takes any float32)"
                )
            data = k
        rec_z = self.zarr_array(record_array(name), mode="r+")
        hash_z = self.zarr_array(hash_array(name), mode="r+")
        old_flags = int(self._row("record", name, i)[0])
        if old_flags & WRITTEN:
            old_hash = bytes(np.asarray(self._row("hash", name, i), dtype=np.uint8))[32:]
            if callable(content_sha256):
                content_sha256 = content_sha256()
            self._settle(name, i)  # written earlier in this batch: on disk before it is read
            if old_flags & FILE_DIGEST_ONLY or not any(old_hash):  # hash what is stored
                old_hash = content_hash(np.asarray(self.zarr_array(name)[i]), self.affines[i])
            elif old_hash != content_sha256:  # recorded on a smaller padded grid? hash it now
                now = content_hash(np.asarray(self.zarr_array(name)[i]), self.affines[i])
                old_hash = now if now == content_sha256 else old_hash
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
            self._row("record", name, i)[0] = 0.0  # (the batch's copy, if one is open)
        stored = dec[1] if dec is not None else z.dtype
        if tuple(data.shape) == tuple(z.shape[1:]) and data.dtype == stored:
            full = data
        else:
            full = np.zeros(z.shape[1:], dtype=stored)
            full[tuple(slice(0, s) for s in data.shape)] = data
        buffered = False
        if is_sharded(z):  # stored integers: zarr encodes values (when not the fast path)
            values = (lambda: decode_decimal(full, dec[0], z.dtype)) if stored != z.dtype else None
            buffered = self._put_scan(name, z, i, full, values)
        elif not write_whole_chunk(z, i, full):
            if stored != z.dtype:  # stored integers: zarr encodes values
                full = decode_decimal(full, dec[0], z.dtype)
            z[i] = full  # the whole chunk-aligned region of scan i
        for key, arr in (extra or {}).items():
            ez = self.zarr_array(key, mode="r+")
            efull = np.zeros(ez.shape[1:], dtype=ez.dtype)
            efull[tuple(slice(0, s) for s in arr.shape)] = arr
            if is_sharded(ez):
                buffered = self._put_scan(key, ez, i, efull) or buffered
            else:
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
        # an overwrite is marked not written above; buffered data: the record waits for them
        if (old_flags & WRITTEN and not buffered) or not self._defer_rows(name, i, rec, h):
            hash_z[i] = h
            rec_z[i] = rec  # written flag last: a crash before this line means "not written"
            batch = self.__dict__.get("_record_batch")
            for kind, row in (("hash", h), ("record", rec)):  # keep the batch's copy current
                if batch is not None:
                    self._row(kind, name, i)[...] = row
        return "written"

    def content_tokens(self, name: str) -> np.ndarray:
        """(scan, 32) uint8 per-scan digests of one array's stored content; they change
        exactly when a scan's data are rewritten (zeros: never written). For caches."""
        try:
            return np.asarray(self.zarr_array(hash_array(name))[...], dtype=np.uint8)[:, 32:]
        except KeyError:
            return np.zeros((self.n_scans, 32), np.uint8)

    def stored_file_hash(self, name: str, i: int) -> bytes | None:
        """Source-file sha256 of a written scan array, else None."""
        try:
            rec = self._row("record", name, i)[0]
        except KeyError:
            return None
        if not int(rec) & WRITTEN:
            return None
        return bytes(np.asarray(self._row("hash", name, i)[:32], dtype=np.uint8))

    def write_mask(
        self,
        method: str,
        contrast: str,
        i: int,
        labels: np.ndarray,
        *,
        prob: np.ndarray | None = None,
        volume_sd: np.ndarray | None = None,
        overwrite: bool = False,
    ) -> str:
        """Write scan ``i``'s mask (0/1/2, shape ``shapes[i]`` or ``grid_shape``), idempotent.

        Creates ``masks/<method>/<contrast>`` on first use. ``prob``: float (2, *shape)
        left/right probabilities in [0, 1], stored quantised to uint8 (1/255 steps).
        ``volume_sd``: the segmenter's (left, right) volume uncertainty in mm³, stored
        beside the mask's record (:func:`~thaldask.store.format.volume_sd_array`) once the
        mask is written or found already there.
        Returns ``"written"`` or ``"skipped"`` (same content already there). Writers running
        at once must write scans of different record chunks (see the module docstring).

        Raises
        ------
        StoreConflictError
            different content is stored and ``overwrite`` is False.
        ValueError
            labels outside {0, 1, 2} or a wrong shape.
        """
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
        if volume_sd is not None and np.size(volume_sd) != 2:
            raise ValueError(f"write_mask: volume_sd must hold (left, right); got {np.size(volume_sd)} values")
        name = mask_array(method, contrast)
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
            pname = prob_array(method, contrast)
            # as many scans per shard as the mask's records: the same task owns both
            self.ensure_array(pname, dtype="uint8", extra_dims=(2,), record_chunk=self.write_chunk([name]))
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
        status = self.write_scan_array(
            name,
            i,
            lab,
            flags=flags,
            content_sha256=digest,
            overwrite=overwrite,
            extra=extra,
        )
        if volume_sd is not None:  # after the mask: a refused write never changes it
            self._write_volume_sd(method, contrast, i, volume_sd)
        elif overwrite and status == "written" and self.has_array(volume_sd_array(method, contrast)):
            self._write_volume_sd(method, contrast, i, [np.nan, np.nan])  # not the replaced mask's
        return status

    def _write_volume_sd(self, method: str, contrast: str, i: int, volume_sd) -> None:
        import zarr

        sd = np.asarray(volume_sd, dtype=np.float32).reshape(2)
        name = volume_sd_array(method, contrast)
        try:
            z = self.zarr_array(name, mode="r+")
        except KeyError:
            try:
                z = zarr.create_array(store=self._zstore, name=name, shape=(self.n_scans, 2),
                                      chunks=(self.write_chunk([mask_array(method, contrast)]), 2),
                                      dtype="float32", fill_value=np.nan, overwrite=False)
            except zarr.errors.ContainsArrayError:  # created concurrently by another task
                z = self.zarr_array(name, mode="r+")
        z[int(i)] = sd

    def volume_sd(self, method: str, contrast: str) -> np.ndarray:
        """(scan, 2) float: the segmenter's left and right volume uncertainty (mm³, one SD)
        of each written mask; NaN where the mask is missing or its segmenter gave none."""
        try:
            sd = np.asarray(self.zarr_array(volume_sd_array(method, contrast))[...], dtype=np.float64)
        except KeyError:
            return np.full((self.n_scans, 2), np.nan)
        if sd.shape[0] < self.n_scans:  # scans appended since: not segmented yet
            sd = np.vstack([sd, np.full((self.n_scans - sd.shape[0], 2), np.nan)])
        return np.where(self.has_mask(method, contrast)[:, None], sd, np.nan)

    def recode_as_float(self, name: str, *, layout: dict | None = None) -> int:
        """Re-encode a decimal array (:func:`~thaldask.store.codecs.decimal_scale`) as plain
        float32, bit for bit (:func:`thaldask.store.codecs.recode_as_float`).

        Ingest calls this when a scan brings values with more decimals than the array
        stores. Returns the number of scans re-encoded.
        """
        if self.read_only:
            raise StoreError(f"{self.path}: store opened read-only")
        z = self.zarr_array(name, mode="r+")
        self.__dict__.pop("_decimal_cache", None)
        if decimal_scale(z) is None:
            return 0
        lay = {**default_layout(), **(layout or self.layout or {})}
        try:
            return recode_as_float(z, np.flatnonzero(self.written(name)), lay)
        finally:
            self.forget_array(name)  # its metadata changed
