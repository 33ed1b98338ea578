"""One reader for the tables people write by hand: the manifest and the clinical table.

Spreadsheet programs and text editors leave traces that a plain ``pandas.read_csv`` turns
into misleading errors (a UTF-8 byte-order mark glued to the first column name, an unquoted
comma that shifts every later column, a Latin-1 ``é``). :func:`read_table` reads such a file
strictly and stops at the first thing it cannot read, with a one-line message that names
the file, the row or line, and what to do.

Rules
-----
- Encoding: UTF-8, with or without a byte-order mark. Anything else is refused with the
  line and column of the first byte that is not UTF-8.
- Delimiter: tab for ``.tsv``/``.tab`` files; otherwise whichever of ``,``, ``;`` and tab
  occurs most often in the header line (comma on a tie).
- Lines starting with ``#`` before the header are comments (thaldask writes its marker
  there). Blank lines are skipped.
- Every data row has the header's number of fields; trailing empty fields that a
  spreadsheet adds are allowed.
- Row numbers are spreadsheet rows: the file's first line is row 1.
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path

import pandas as pd

from thaldask.errors import ManifestError, ThaldaskError

__all__ = ["read_table", "decode_utf8"]

_BOM = b"\xef\xbb\xbf"
_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")


def decode_utf8(data: bytes, *, name: str, error: type[ThaldaskError] = ManifestError) -> str:
    """``data`` decoded as UTF-8 (a leading byte-order mark dropped).

    Raises ``error`` naming the line and column (1-based, in bytes) of the first byte that is
    not UTF-8.

    >>> decode_utf8(b"\\xef\\xbb\\xbfsubject", name="m.csv")
    'subject'
    >>> decode_utf8(b"a,b\\nJos\\xe9,1\\n", name="c.csv")
    Traceback (most recent call last):
    ...
    thaldask.errors.ManifestError: c.csv line 2: not UTF-8 (byte 0xe9 at column 4); save the file as UTF-8
    """
    if data.startswith(_UTF16_BOMS):
        raise error(f"{name}: saved as UTF-16; save the file as UTF-8 (CSV UTF-8 in a spreadsheet program)")
    if data.startswith(_BOM):
        data = data[len(_BOM) :]
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise error(
            f"{name} line {line}: not UTF-8 (byte 0x{data[exc.start]:02x} at column {column}); "
            "save the file as UTF-8"
        ) from None


def _delimiter(path: Path, header_line: str) -> str:
    if path.suffix.lower() in (".tsv", ".tab"):
        return "\t"
    counts = {d: header_line.count(d) for d in (",", ";", "\t")}
    best = max(counts, key=lambda d: (counts[d], d == ","))
    return best if counts[best] else ","


def read_table(
    path: str | os.PathLike,
    *,
    what: str,
    error: type[ThaldaskError] = ManifestError,
    lower_columns: bool = False,
) -> pd.DataFrame:
    """Read a hand-written CSV/TSV strictly into a DataFrame of stripped strings.

    Parameters
    ----------
    path : the CSV/TSV file
    what : what the file is, for messages ("manifest", "clinical table")
    error : the exception class raised (``ManifestError``, ``ClinicalTableError``; it takes
        ``problems=``)
    lower_columns : lower-case the column names (they are always stripped)

    Returns
    -------
    pandas.DataFrame
        one column per header field (strings, empty cells ``""``) after a first ``row``
        column (spreadsheet row of each record); ``df.attrs["source"]`` is ``str(path)``.

    Raises
    ------
    error
        one line naming the file and the line or row: not found, not UTF-8, empty, a
        duplicate or empty column name, or rows whose field count differs from the header's
        (``problems`` lists each such row).
    """
    path = Path(path)
    name = path.name
    if not path.is_file():
        kind = "is a folder, not a file" if path.is_dir() else "not found"
        raise error(f"{path}: {what} {kind}")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise error(f"{path}: {what} cannot be read ({exc.strerror or exc})") from None
    text = decode_utf8(data, name=name, error=error)
    lines = text.splitlines()
    start = 0
    while start < len(lines) and (not lines[start].strip() or lines[start].lstrip().startswith("#")):
        start += 1
    if start == len(lines):
        raise error(f"{path}: {what} is empty (no header line)")
    delim = _delimiter(path, lines[start])
    # comment lines never reach the CSV parser (an unbalanced quote there would swallow rows)
    body = "".join(text.splitlines(keepends=True)[start:])
    reader = csv.reader(io.StringIO(body, newline=""), delimiter=delim, skipinitialspace=True)
    header: list[str] | None = None
    records: list[list[str]] = []
    rows: list[int] = []
    problems: list[str] = []
    for k, rec in enumerate(reader, start=start + 1):
        if header is None:
            header = [c.strip() for c in rec]
            if lower_columns:
                header = [c.lower() for c in header]
            while header and header[-1] == "":
                header.pop()  # a trailing delimiter in the header line
            dup = sorted({c for c in header if header.count(c) > 1 and c})
            if dup:
                raise error(f"{name} row {k}: column {dup[0]!r} appears more than once in the header")
            if "" in header:
                raise error(
                    f"{name} row {k}: header field {header.index('') + 1} is empty; every column needs a name"
                )
            if "row" in header:
                raise error(f"{name} row {k}: a column may not be named 'row' (thaldask adds it)")
            continue
        if not rec or all(not f.strip() for f in rec):
            continue
        fields = list(rec)
        while len(fields) > len(header) and fields[-1].strip() == "":
            fields.pop()  # spreadsheets pad rows with empty cells
        if len(fields) != len(header):
            hint = " (an unquoted comma?)" if len(fields) > len(header) and delim == "," else ""
            problems.append(
                f"{name} row {k}: {len(fields)} fields but the header has {len(header)}{hint}"
            )
            continue
        records.append([f.strip() for f in fields])
        rows.append(k)
    if problems:
        n = len(problems)
        msg = problems[0] if n == 1 else f"{name}: {n} rows with a wrong field count; first: {problems[0]}"
        raise error(msg, problems=problems)
    df = pd.DataFrame(records, columns=header, dtype=object)
    for c in df.columns:
        df[c] = df[c].astype(str)
    df.insert(0, "row", rows)
    df.attrs["source"] = str(path)
    return df

