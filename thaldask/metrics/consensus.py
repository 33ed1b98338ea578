"""Agreement of every mask with the other methods' masks of the same scan.

Quality control without ground truth needs to know when one method's mask is unlike what
the others found on that scan: a mask shifted by a misregistration, with its sides swapped,
or grown into the ventricle. For each scan, every stored prediction (any method, any
contrast: a scan's contrasts share one voxel grid; ground truth excluded) is compared with
every other, and its *consensus Dice* is the median over the others of the pairwise Dice
per side (left with left, right with right, total as any thalamus label). A median, so one
failed method does not pull the others down; NaN when the scan has no other prediction.

Cached like evaluate's metrics: one row per scan (``_metrics/_consensus/raw``, (scan, K, 3)
for the K stored predictions) with a token of the content hashes of the masks it was
computed from (``_metrics/_consensus/token``); a re-run recomputes only scans whose masks
changed. Tasks read their own masks, one scan at a time, and return their rows; the client
writes them (:mod:`thaldask.metrics.rowcache`).
"""

from __future__ import annotations

import hashlib
import logging
import os
import warnings

import numpy as np

from thaldask.metrics.kernels import side_dice
from thaldask.metrics.rowcache import CACHE_CHUNK
from thaldask.store.cohort_store import open_array
from thaldask.store.format import consensus_array, scan_meta_array
from thaldask.store.shards import ShardReader
from thaldask.store.verify import read_scan

__all__ = ["consensus_dice", "consensus_jobs", "consensus_block", "CONSENSUS_VERSION"]

log = logging.getLogger(__name__)

#: bump when the rule changes: invalidates every cached row
CONSENSUS_VERSION = "1"
TOKEN_LEN = 32


def consensus_dice(masks: list) -> np.ndarray:
    """Per mask, the median over the other masks of the per-side Dice (left, right, total).

    Parameters
    ----------
    masks : list of K integer arrays of one shape, labels 0 background, 1 left, 2 right;
        None for a mask the scan does not have (its row is NaN and it is not compared)

    Returns
    -------
    numpy.ndarray of float64, shape (K, 3); NaN where a mask has no other mask to compare
    with, or a side is empty in both masks of every pair.

    >>> a = np.zeros((4, 4, 4), np.uint8); a[:2, :2, :2] = 1; a[2:, :2, :2] = 2
    >>> swapped = np.where(a == 1, 2, np.where(a == 2, 1, 0)).astype(np.uint8)
    >>> consensus_dice([a, a.copy(), swapped]).round(2).tolist()
    [[0.5, 0.5, 1.0], [0.5, 0.5, 1.0], [0.0, 0.0, 1.0]]
    """
    k = len(masks)
    pair = np.full((k, k, 3), np.nan)
    present = [i for i, m in enumerate(masks) if m is not None]
    for n, a in enumerate(present):
        for b in present[n + 1:]:
            pair[a, b] = pair[b, a] = side_dice(masks[a], masks[b])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a mask without any other: NaN
        out = np.nanmedian(pair, axis=1) if k else np.zeros((0, 3))
    return out


def _tokens(names: list[str], has: np.ndarray, hashes: list) -> np.ndarray:
    """(scan, 32): what each scan's row is computed from (names and content hashes)."""
    n = has.shape[0]
    out = np.zeros((n, TOKEN_LEN), np.uint8)
    for i in range(n):  # per scan: hashing a few bytes
        h = hashlib.sha256(CONSENSUS_VERSION.encode())
        for k, name in enumerate(names):
            h.update(name.encode() + b"\0")
            if not has[i, k]:
                h.update(b"-")
            elif hashes[k] is None:
                h.update(os.urandom(16))  # no content hash: always recompute
            else:
                h.update(hashes[k][i].tobytes())
        out[i] = np.frombuffer(h.digest(), np.uint8)
    return out


def consensus_jobs(st, names: list[str], has: np.ndarray, hashes: list, *, block: int) -> tuple[list[dict], np.ndarray]:
    """Jobs of :func:`consensus_block` for the scans whose cached row is stale, and the cache.

    Parameters
    ----------
    st : the open store
    names : the K prediction arrays (``masks/<method>/<contrast>``), ground truth excluded
    has : (scan, K) bool, which scans have each prediction
    hashes : per name, its (scan, 32) content hashes or None
    block : scans per job

    Returns
    -------
    (jobs, raw): ``raw`` (scan, K, 3) holds the cached rows (NaN where not computed); the
    caller fills the jobs' results into it.
    """
    k = len(names)
    raw = st.ensure_derived(consensus_array("raw"), row_shape=(k, 3), dtype="float64", fill_value=np.nan,
                            chunk_scans=CACHE_CHUNK)
    tok = st.ensure_derived(consensus_array("token"), row_shape=(TOKEN_LEN,), dtype="uint8", fill_value=0,
                            chunk_scans=CACHE_CHUNK)
    token = _tokens(names, has, hashes)
    stale = (has.sum(axis=1) >= 2) & ~np.all(tok == token, axis=1)
    idx_all = np.flatnonzero(stale).astype(np.int64)
    jobs = [{"kind": "consensus", "idx": idx_all[lo:lo + block], "has": has[idx_all[lo:lo + block]],
             "token": token[idx_all[lo:lo + block]], "pred_names": list(names)}
            for lo in range(0, len(idx_all), block)]
    return jobs, raw


def consensus_block(job: dict, *, store_path: str, storage_options=None) -> tuple[np.ndarray, np.ndarray]:
    """Compute the consensus rows of one job's scans; returns (rows (scans, K, 3), ok (scans,)).

    The client caches the rows that succeeded; a scan whose masks cannot be read stays NaN
    without a token (retried next run)."""
    idx, has, names = job["idx"], job["has"], job["pred_names"]
    out = np.full((len(idx), len(names), 3), np.nan)
    ok = np.zeros(len(idx), bool)
    if not len(idx):
        return out, ok
    arrays = [open_array(store_path, a, storage_options=storage_options) for a in names]
    lo = int(idx.min())
    shapes = open_array(store_path, scan_meta_array("shape"), storage_options=storage_options)[lo:int(idx.max()) + 1]
    reader = ShardReader(idx)  # one fetch per shard of consecutive scans
    for i, s in enumerate(idx):
        try:
            masks = [read_scan(z, int(s), shapes[int(s) - lo], reader) if has[i, k] else None
                     for k, z in enumerate(arrays)]
            out[i] = consensus_dice(masks)
            ok[i] = True
        except Exception as exc:  # a lost chunk or bad labels: this scan only
            log.warning("evaluate: consensus of scan %d failed: %s", int(s), exc)
    return out, ok
