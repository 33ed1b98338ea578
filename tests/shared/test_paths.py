"""Atomic writes and the rule for replacing files."""

from __future__ import annotations

import os

import pytest

from thaldask._shared.paths import (
    OUTPUT_LEDGER,
    atomic_write,
    check_may_write,
    check_writable_dir,
    is_remote,
    is_url,
    safe_name,
    write_text,
    written_by_thaldask,
)
from thaldask.errors import OutputError, OutputExistsError


def test_atomic_write_interrupted_leaves_the_old_file_and_no_temporary(tmp_path):
    p = tmp_path / "table.csv"
    p.write_text("old complete content\n")
    with pytest.raises(RuntimeError):
        with atomic_write(p) as f:
            f.write("half of the new")
            raise RuntimeError("crash")
    assert p.read_text() == "old complete content\n"
    assert sorted(os.listdir(tmp_path)) == ["table.csv"]


def test_write_text_replaces_atomically(tmp_path):
    p = write_text(tmp_path / "a.txt", "one")
    write_text(p, "two")
    assert p.read_text() == "two" and sorted(os.listdir(tmp_path)) == [OUTPUT_LEDGER, "a.txt"]
    assert written_by_thaldask(p)
    check_may_write(p)  # thaldask's own, unchanged: may be replaced
    p.write_text("edited by the user")
    assert not written_by_thaldask(p)
    with pytest.raises(OutputExistsError):
        check_may_write(p)


def test_check_may_write_refuses_a_file_not_written_by_thaldask(tmp_path):
    p = tmp_path / "README.txt"
    p.write_text("my own notes")
    with pytest.raises(OutputExistsError, match="README.txt: exists and was not written by thaldask"):
        check_may_write(p, marker="thaldask demo output")
    check_may_write(p, overwrite=True)
    p.write_text("thaldask demo output\n=====")
    check_may_write(p, marker="thaldask demo output")
    check_may_write(tmp_path / "new.txt")
    with pytest.raises(OutputExistsError, match="is a folder"):
        check_may_write(tmp_path, overwrite=True)
    assert isinstance(OutputExistsError("x"), FileExistsError)


def test_check_writable_dir(tmp_path):
    assert check_writable_dir(tmp_path / "a" / "b").is_dir()
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(OutputError, match="is a file, not a folder"):
        check_writable_dir(f)
    with pytest.raises(OutputError, match="does not exist"):
        check_writable_dir(tmp_path / "missing", create=False)


def test_url_rules():
    assert is_url("file:///x") and not is_remote("file:///x")
    assert is_remote("s3://b/c") and is_remote("gs://b/c")
    assert not is_url("/abs/path") and not is_remote("rel")
    assert safe_name("T1w+FLAIR") == "T1w+FLAIR" and safe_name("a b/c") == "a-b-c"


def test_written_files_get_the_mode_open_would_give(tmp_path):
    import stat

    from thaldask._shared.paths import FILE_MODE

    p = write_text(tmp_path / "t.csv", "a,b\n")
    assert stat.S_IMODE(os.stat(p).st_mode) == FILE_MODE  # not the 0600 of a temporary file
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    assert stat.S_IMODE(os.stat(plain).st_mode) == FILE_MODE
