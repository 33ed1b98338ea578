"""One writer at a time: the lock an ingest holds on its store.

The lock is a small file beside the store (``cohort.zarr.thaldask-lock``), created with
``O_EXCL`` so that two processes can never both hold it. It records the host, the process
and the time. A second ingest into the same store fails at once with a message naming the
holder; a lock left by a process that no longer runs on this host (killed with ``kill -9``)
is taken over. Object-store URLs are not locked (no atomic create there).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from collections.abc import Iterator

from thaldask._shared.paths import is_remote
from thaldask.errors import StoreBusyError

__all__ = ["lock_path", "store_lock"]


def lock_path(store: str) -> str:
    """The lock file of ``store``: beside it, named after it."""
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


@contextlib.contextmanager
def store_lock(store: str, *, what: str = "ingest") -> Iterator[None]:
    """Hold the store's lock for the duration of the block.

    Raises
    ------
    StoreBusyError
        another live process holds it.
    """
    if is_remote(store):
        yield
        return
    path = lock_path(store)
    os.makedirs(os.path.dirname(path), exist_ok=True)  # a new store in a new folder
    me = {"host": socket.gethostname(), "pid": os.getpid(), "since": time.time(), "what": what}
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            other = _holder(path)
            stale = other.get("host") == me["host"] and not _alive(int(other.get("pid", -1)))
            if stale:  # its process died (kill -9): the lock is ours to take over
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
                continue
            since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(other.get("since", 0)))
            raise StoreBusyError(
                f"{store}: another {other.get('what', 'ingest')} (process {other.get('pid', '?')} on "
                f"{other.get('host', '?')}, since {since}) is writing this store; wait for it to "
                f"finish, or delete {path} if that process is gone"
            ) from None
        with os.fdopen(fd, "w") as f:
            json.dump(me, f)
        break
    try:
        yield
    finally:
        if _holder(path).get("pid") == me["pid"]:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)  # the lock this process created
