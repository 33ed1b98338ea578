"""Is every stored scan really there? Zarr reads a missing chunk as its fill value, so a
scan whose chunk file was lost would read back as an empty mask; these checks refuse it.
In a sharded array (:mod:`thaldask.store.shards`) the same holds for a lost shard file and
for a scan whose inner chunk is absent from its shard's index.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from thaldask.errors import ScanError
from thaldask.store.cohort_store import CohortStore, open_store
from thaldask.store.format import image_array, mask_array
from thaldask.store.shards import ShardReader, is_sharded, missing_inner

__all__ = ["missing_chunks", "read_scan", "verify_store"]


def missing_chunks(z, i: int, shape=None, reader: ShardReader | None = None) -> list[str]:
    """Keys of the chunks of scan ``i`` of zarr array ``z`` that are not in its store.

    With the scan's true spatial ``shape``, chunks that lie wholly in its zero padding are
    not required (a grown padded grid adds such chunks, never written and read as 0).
    Sharded arrays: the inner chunks absent from their shard's index (one suffix request
    per shard, or with ``reader`` one fetch per shard for every scan read through it)."""
    from zarr.core.sync import sync

    if is_sharded(z):
        return reader.missing(z, i, shape) if reader is not None else missing_inner(z, i, shape)

    grid = z.cdata_shape
    prefix = f"{z.path}/" if z.path else ""
    rows = int(z.chunks[0])
    spatial = len(grid) - 3
    keys = []
    for rest in np.ndindex(*grid[1:]):
        if shape is not None and any(
            rest[spatial - 1 + a] * int(z.chunks[spatial + a]) >= int(shape[a]) for a in range(3)
        ):
            continue
        keys.append(z.metadata.encode_chunk_key((i // rows, *rest)))
    return [k for k in keys if not sync(z.store.exists(prefix + k))]


def read_scan(z, i: int, shape=None, reader: ShardReader | None = None) -> np.ndarray:
    """``z[i]``, refusing a scan whose chunks are missing (never an empty mask instead).
    ``shape``: the scan's true spatial shape (:func:`missing_chunks`). ``reader``: a
    :class:`~thaldask.store.shards.ShardReader` kept across the scans a task reads in
    order: each shard is then fetched once (one request for its scans).

    Raises
    ------
    ScanError
        a chunk of the scan is missing.
    """
    lost = missing_chunks(z, i, shape, reader)
    if lost:
        raise ScanError(f"{z.path}: scan {i}: {len(lost)} chunk(s) missing ({lost[0]}); "
                        "the store lost data; re-ingest or re-segment this scan")
    return reader.read(z, i) if reader is not None else z[i]


def verify_store(store, *, progress: bool = False) -> pd.DataFrame:
    """Check that every scan marked written has all its chunks and that they decode.

    Returns
    -------
    pandas.DataFrame
        one row per problem: array, scan, subject, timepoint, problem (empty when the store
        is whole).
    """
    st = store if isinstance(store, CohortStore) else open_store(store)
    names = [image_array(c) for c in st.contrasts] + [mask_array(m, c) for m, c in st.methods]
    rows = []
    scans = st.scans
    for name in names:
        z = st.zarr_array(name)
        reader = ShardReader()
        for i in np.flatnonzero(st.written(name)):
            try:
                read_scan(z, int(i), st.shapes[i], reader)
            except Exception as exc:  # missing chunk or undecodable bytes: report, go on
                rows.append({"array": name, "scan": int(i), "subject": scans["subject"].iloc[i],
                             "timepoint": scans["timepoint"].iloc[i],
                             "problem": str(exc).splitlines()[0] or type(exc).__name__})
    return pd.DataFrame(rows, columns=["array", "scan", "subject", "timepoint", "problem"])
