"""Paths and files: one rule for remote URLs, one for safe file names, one atomic writer.

Every file thaldask writes outside a Zarr store (CSV, HTML, JSON, PNG, manifests) goes
through :func:`atomic_write` or :func:`write_text`: the content is written to a temporary
file in the target's folder and renamed over the target, so an interrupted command never
leaves a truncated file that looks complete. :func:`check_may_write` is the one rule for
"never overwrite a file thaldask did not write": a file is replaced only when asked to
(``overwrite=True``), or when thaldask wrote it and it is unchanged since: every file
written through :func:`atomic_write` has its SHA-256 recorded in the folder's
``.thaldask-outputs.json`` (a file's own format is never changed to carry a marker).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path

from thaldask.errors import OutputError, OutputExistsError

__all__ = [
    "is_url",
    "is_remote",
    "safe_name",
    "atomic_write",
    "write_text",
    "write_bytes",
    "save_image",
    "check_may_write",
    "check_writable_dir",
    "written_by_thaldask",
    "remove_own_file",
    "OUTPUT_LEDGER",
    "file_sha256",
]

#: per folder: file name -> SHA-256 of the content thaldask last wrote there
OUTPUT_LEDGER = ".thaldask-outputs.json"

_SAFE = re.compile(r"[^A-Za-z0-9._+-]+")


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


#: mode of the files thaldask writes: what ``open()`` would give (temporary files start 0600)
FILE_MODE = 0o666 & ~_umask()


def is_url(path) -> bool:
    """Whether ``path`` is a URL (any ``scheme://``, ``file://`` included), which is used
    as given, never resolved against a folder.

    >>> is_url("s3://b/c.zarr"), is_url("file:///tmp/x"), is_url("rel/path")
    (True, True, False)
    """
    return "://" in (path if isinstance(path, str) else os.fspath(path))


def is_remote(path) -> bool:
    """Whether ``path`` is a URL to object storage or another fsspec filesystem.

    ``file://`` URLs and plain paths are local.

    >>> is_remote("s3://bucket/cohort.zarr"), is_remote("file:///tmp/x"), is_remote("/tmp/x")
    (True, False, False)
    """
    s = os.fspath(path) if not isinstance(path, str) else path
    return "://" in s and not s.startswith("file://")


def safe_name(name) -> str:
    """``name`` as a file-name component: runs of anything but letters, digits and
    ``. _ + -`` become one ``-``; never empty.

    >>> safe_name("T1w+FLAIR"), safe_name("sub 01/ses:1"), safe_name("///")
    ('T1w+FLAIR', 'sub-01-ses-1', 'x')
    """
    return _SAFE.sub("-", str(name)).strip("-") or "x"


def file_sha256(path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _read_ledger(folder: Path) -> dict:
    try:
        data = json.loads((folder / OUTPUT_LEDGER).read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _record(path: Path) -> None:
    ledger = _read_ledger(path.parent)
    ledger[path.name] = file_sha256(path)
    write_json_ledger(path.parent, ledger)


def written_by_thaldask(path) -> bool:
    """Whether ``path`` holds exactly what thaldask last wrote there."""
    p = Path(path)
    want = _read_ledger(p.parent).get(p.name)
    try:
        return want is not None and p.is_file() and file_sha256(p) == want
    except OSError:
        return False


@contextlib.contextmanager
def atomic_write(path, mode: str = "w", *, encoding: str | None = "utf-8", newline=None) -> Iterator:
    """Open a temporary file beside ``path``; on success rename it to ``path``.

    On an exception the temporary file is removed and ``path`` is left as it was. The
    written content's SHA-256 is recorded in the folder's :data:`OUTPUT_LEDGER`.

    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "t.txt"
    >>> with atomic_write(p) as f:
    ...     _ = f.write("done")
    >>> p.read_text()
    'done'
    """
    path = Path(path)
    binary = "b" in mode
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, FILE_MODE)
        with os.fdopen(fd, mode, **({} if binary else {"encoding": encoding, "newline": newline})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)  # our own temporary file, never the user's
        raise
    _record(path)


def write_text(path, text: str, *, storage_options: dict | None = None):
    """Write ``text`` to ``path`` atomically; return the path.

    An object-store URL (``s3://...``) is written with fsspec in one PUT, which the store
    makes visible whole or not at all; the URL is returned as given.
    """
    if is_remote(path):
        import fsspec

        with fsspec.open(str(path), "w", **(storage_options or {})) as f:
            f.write(text)
        return str(path)
    with atomic_write(path, "w") as f:
        f.write(text)
    return Path(path)


def save_image(img, path) -> Path:
    """``nibabel.save`` of ``img`` to ``path``, atomically (format from the suffix)."""
    import nibabel as nib

    path = Path(path)
    suffix = "".join(path.suffixes[-2:]) if path.name.endswith(".gz") else path.suffix
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{suffix}", dir=path.parent)
    os.close(fd)
    try:
        nib.save(img, tmp)
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)  # our own temporary file
        raise
    _record(path)
    return path


def write_bytes(path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically; return the path."""
    with atomic_write(path, "wb") as f:
        f.write(data)
    return Path(path)


def remove_own_file(path) -> bool:
    """Delete ``path`` only if thaldask wrote it and it is unchanged since; return whether
    it was deleted. Anything else (a user's file, an edited output) is left alone."""
    p = Path(path)
    if not written_by_thaldask(p):
        return False
    p.unlink()
    ledger = _read_ledger(p.parent)
    if ledger.pop(p.name, None) is not None:
        write_json_ledger(p.parent, ledger)
    return True


def write_json_ledger(folder: Path, ledger: dict) -> None:
    """Replace the folder's :data:`OUTPUT_LEDGER` with ``ledger`` (atomically)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{OUTPUT_LEDGER}.", suffix=".tmp", dir=folder)
    try:
        os.fchmod(fd, FILE_MODE)
        with os.fdopen(fd, "w") as f:
            json.dump(ledger, f, indent=0, sort_keys=True)
        os.replace(tmp, Path(folder) / OUTPUT_LEDGER)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def check_may_write(path, *, overwrite: bool = False, marker: str | None = None) -> None:
    """Raise ``FileExistsError`` (:class:`~thaldask.errors.OutputExistsError`)
    unless ``path`` may be written.

    A missing file may be written. An existing one only when ``overwrite`` is set, when
    thaldask wrote it and it is unchanged since (:func:`written_by_thaldask`), or when
    ``marker`` is given and the file's first 4 KiB contain it. A directory is never
    replaced by a file.
    """
    p = Path(path)
    if not p.exists() and not p.is_symlink():
        return
    if p.is_dir():
        raise OutputExistsError(f"{p}: is a folder; thaldask writes a file there, choose another name")
    if overwrite or written_by_thaldask(p):
        return
    if marker is not None:
        try:
            with open(p, "rb") as f:
                if marker.encode() in f.read(4096):
                    return
        except OSError:
            pass
    raise OutputExistsError(
        f"{p}: exists and was not written by thaldask; pass --overwrite to replace it, "
        "or choose another output"
    )


def check_writable_dir(folder, *, create: bool = True) -> Path:
    """Make sure ``folder`` is a writable folder (created, with parents, when ``create``),
    before any work starts; raise a one-line :class:`~thaldask.errors.OutputError` otherwise."""
    p = Path(folder)
    if p.exists() and not p.is_dir():
        raise OutputError(f"{p}: is a file, not a folder")
    if not p.exists():
        if not create:
            raise OutputError(f"{p}: folder does not exist")
        try:
            p.mkdir(parents=True)
        except OSError as exc:
            raise OutputError(f"{p}: cannot create folder ({exc.strerror or exc})") from None
    if not os.access(p, os.W_OK | os.X_OK):
        raise OutputError(f"{p}: folder is not writable")
    return p
