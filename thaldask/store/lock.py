"""One writer at a time: the lock an ingest holds on its store.

The lock is a small file beside the store (``cohort.zarr.thaldask-lock``), created with
``O_EXCL`` so that two processes can never both hold it. It records the host, the process
and the time. A second ingest into the same store fails at once with a message naming the
holder; a lock left by a process that no longer runs on this host (killed with ``kill -9``)
is taken over.

On object storage (``s3://``, ...) the lock is an object beside the store, created with a
conditional write (``If-None-Match``: fsspec's exclusive mode ``"xb"``), which S3 and
S3-compatible servers make atomic. A filesystem without exclusive create gets a warning
that the store is not locked.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
import warnings
from collections.abc import Iterator

from thaldask._shared.paths import is_remote
from thaldask.errors import StoreBusyError

__all__ = ["lock_path", "store_lock"]


def lock_path(store: str) -> str:
    """The lock file (or object) of ``store``: beside it, named after it."""
    if is_remote(store):
        return str(store).rstrip("/") + ".thaldask-lock"
    return os.path.abspath(str(store)).rstrip("/") + ".thaldask-lock"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _holder(path: str) -> dict:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def _busy(store: str, path: str, other: dict) -> StoreBusyError:
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(other.get("since", 0)))
    return StoreBusyError(
        f"{store}: another {other.get('what', 'ingest')} (process {other.get('pid', '?')} on "
        f"{other.get('host', '?')}, since {since}) is writing this store; wait for it to "
        f"finish, or delete {path} if that process is gone"
    )


def _stale(other: dict, me: dict) -> bool:
    """Left by a process of this host that no longer runs (``kill -9``)."""
    return other.get("host") == me["host"] and not _alive(int(other.get("pid", -1)))


@contextlib.contextmanager
def store_lock(store: str, *, what: str = "ingest", storage_options: dict | None = None
               ) -> Iterator[None]:
    """Hold the store's lock for the duration of the block.

    Raises
    ------
    StoreBusyError
        another live process holds it.
    """
    me = {"host": socket.gethostname(), "pid": os.getpid(), "since": time.time(), "what": what}
    if is_remote(store):
        with _remote_lock(store, me, storage_options):
            yield
        return
    path = lock_path(store)
    os.makedirs(os.path.dirname(path), exist_ok=True)  # a new store in a new folder
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            other = _holder(path)
            if _stale(other, me):  # its process died (kill -9): the lock is ours to take over
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
                continue
            raise _busy(store, path, other) from None
        with os.fdopen(fd, "w") as f:
            json.dump(me, f)
        break
    try:
        yield
    finally:
        if _holder(path).get("pid") == me["pid"]:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)  # the lock this process created


def _remote_holder(fs, path: str) -> dict:
    try:
        return json.loads(fs.cat_file(path))
    except (OSError, ValueError):
        return {}


@contextlib.contextmanager
def _remote_lock(store: str, me: dict, storage_options: dict | None) -> Iterator[None]:
    import fsspec

    path = lock_path(store)
    fs, key = fsspec.core.url_to_fs(path, **(storage_options or {}))
    body = json.dumps(me).encode()
    held = False
    for _ in range(2):
        try:
            with fs.open(key, "xb") as f:
                f.write(body)
            held = True
            break
        except FileExistsError:
            other = _remote_holder(fs, key)
            if _stale(other, me):
                with contextlib.suppress(FileNotFoundError):
                    fs.rm_file(key)
                continue
            raise _busy(store, path, other) from None
        except (ValueError, NotImplementedError, TypeError):  # no exclusive create here
            warnings.warn(f"{store}: this storage cannot create a file exclusively; the store is "
                          "not locked: never run two ingests into it at once", stacklevel=3)
            break
    try:
        yield
    finally:
        if held and _remote_holder(fs, key) == me:
            with contextlib.suppress(FileNotFoundError):
                fs.rm_file(key)  # the lock object this process created
