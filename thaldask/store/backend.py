"""Where a store lives: a local folder or an fsspec URL, and the zarr store objects for it."""

from __future__ import annotations

import contextlib
import warnings

from thaldask import config
from thaldask._shared.paths import is_remote

__all__ = ["make_zarr_store", "set_zarr_concurrency", "quiet_zarr"]


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
        opts = dict(storage_options or {})
        if path.startswith(("s3://", "s3a://")):
            # s3fs sizes every whole-object read with a HEAD first when it may split it into
            # concurrent ranges; chunks are small, so one GET each (half the requests)
            opts.setdefault("max_concurrency", 1)
        return zarr.storage.FsspecStore.from_url(path, storage_options=opts or None, read_only=read_only)
    if path.startswith("file://"):
        path = path[len("file://") :]
    return zarr.storage.LocalStore(path, read_only=read_only)


@contextlib.contextmanager
def quiet_zarr():
    """Silence zarr's notes about consolidated metadata and non-zarr files (the report CSV)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*Consolidated metadata.*")
        warnings.filterwarnings("ignore", message=".*not recognized as a component.*")
        yield
