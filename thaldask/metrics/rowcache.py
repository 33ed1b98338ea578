"""Evaluate's per-scan caches, written by the client as results arrive.

Each cache is a pair of derived arrays (``raw`` rows and their ``token``), chunked by
:data:`CACHE_CHUNK` scans, so a cohort's cache is a few objects instead of one per scan.
Tasks compute and return rows; only the client writes them (:class:`RowWriter`), so no two
writers ever share a chunk. Rows are buffered and written every ``every`` seconds and at
the end, raw rows before their tokens: a token marks its row complete, and a client killed
between two writes loses at most the rows of those seconds (recomputed next run).
"""

from __future__ import annotations

import time
from collections import defaultdict

import numpy as np

__all__ = ["CACHE_CHUNK", "RowWriter"]

#: scans per chunk of a cache array
CACHE_CHUNK = 4096


class RowWriter:
    """Buffer ``{scan: row}`` per array and write them in batches (see the module docstring).

    Parameters
    ----------
    st : the open store (writable)
    every : seconds between writes while results arrive
    """

    def __init__(self, st, *, every: float = 5.0):
        self.st, self.every = st, float(every)
        self._raw: dict[str, dict[int, np.ndarray]] = defaultdict(dict)
        self._tok: dict[str, dict[int, np.ndarray]] = defaultdict(dict)
        self._last = time.monotonic()
        self.n_written = 0

    def add(self, raw_name: str, token_name: str, rows: dict[int, tuple[np.ndarray, np.ndarray]]) -> None:
        """Queue complete rows ``{scan: (raw row, token)}`` of one cache; writes when due."""
        for i, (raw, tok) in rows.items():
            self._raw[raw_name][int(i)] = raw
            self._tok[token_name][int(i)] = tok
        if time.monotonic() - self._last >= self.every:
            self.flush()

    def flush(self) -> None:
        """Write everything queued: every raw row first, then the tokens."""
        for pending in (self._raw, self._tok):
            for name, rows in pending.items():
                if not rows:
                    continue
                idx = np.fromiter(sorted(rows), dtype=np.int64, count=len(rows))
                z = self.st.zarr_array(name, mode="r+")
                z.set_orthogonal_selection((idx,), np.stack([rows[int(i)] for i in idx]).astype(z.dtype))
                if pending is self._tok:
                    self.n_written += len(rows)
            pending.clear()
        self._last = time.monotonic()
