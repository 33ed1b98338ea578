"""One rule for which scheduler runs a stage, and one batched task runner.

The client rule, the same for every stage: ``client=None`` means *the active distributed
client if there is one* (``distributed.default_client()``, e.g. inside ``with Client(...)``),
otherwise Dask's local scheduler (threads unless ``dask.config`` names another). A client
given explicitly is always used.

:func:`run_batches` runs one task per batch of work items (a batch should hold at least
~100 ms of work), with Dask retries on a distributed cluster, one progress display
(:class:`~thaldask._shared.progress.Progress`) advanced by each batch's size, and a
per-batch error handler so that one failed batch never stops the others. On a distributed
cluster it keeps only a few batches per worker thread submitted at a time
(``thaldask.cluster.tasks-in-flight``) and submits the next as each finishes: the client and
the scheduler hold the tasks of O(threads) batches, not of the whole cohort.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from thaldask import config
from thaldask._shared.memory import reuse_heap
from thaldask._shared.progress import Progress

__all__ = ["active_client", "n_slots", "split_batches", "run_batches", "owned_batches"]


def active_client(client=None):
    """``client`` if given, else the active distributed client, else ``None``."""
    if client is not None:
        return client
    try:
        from distributed import default_client
    except ImportError:  # pragma: no cover - distributed is a dependency
        return None
    try:
        return default_client()
    except ValueError:
        return None


def n_slots(client=None) -> int:
    """Threads that can run tasks at once: the cluster's, or the local scheduler's."""
    if client is not None:
        try:
            return max(1, sum(client.nthreads().values()))
        except Exception:  # a cluster still starting
            return 1
    import dask.config

    return int(dask.config.get("num_workers", None) or os.cpu_count() or 1)


def split_batches(items: Sequence, *, max_per_batch: int, slots: int = 1, per_slot: int = 2) -> list[list]:
    """``items`` in consecutive batches of at most ``max_per_batch``, small enough that
    each slot gets about ``per_slot`` batches when the cohort allows.

    >>> [len(b) for b in split_batches(list(range(10)), max_per_batch=4, slots=1)]
    [4, 4, 2]
    >>> [len(b) for b in split_batches(list(range(10)), max_per_batch=16, slots=2)]
    [3, 3, 3, 1]
    """
    items = list(items)
    if not items:
        return []
    size = max(1, min(int(max_per_batch), -(-len(items) // max(1, slots * per_slot))))
    return [items[i : i + size] for i in range(0, len(items), size)]


class _Failed:
    __slots__ = ("exc",)

    def __init__(self, exc):
        self.exc = exc


def _guarded(func, batch, args, kwargs):
    try:
        with reuse_heap():
            return func(batch, *args, **kwargs)
    except Exception as exc:  # reported per batch by run_batches
        return _Failed(exc)


def _batch_task(func, batch, *args, **kwargs):
    """One batch on a worker, with large arrays reused from the heap (see reuse_heap)."""
    with reuse_heap():
        return func(batch, *args, **kwargs)


def run_batches(
    func: Callable,
    batches: Sequence[Sequence],
    *,
    client=None,
    label: str,
    unit: str = "scans",
    size: Callable[[Sequence], int] = len,
    progress: bool = True,
    key_prefix: str | None = None,
    retries: int = 1,
    resources: dict | None = None,
    on_error: Callable[[Sequence, BaseException], Any] | None = None,
    local_scheduler: str | None = None,
    done: int = 0,
    args: tuple = (),
    kwargs: dict | None = None,
    on_result: Callable[[int, Any], None] | None = None,
    in_flight: int | None = None,
) -> list:
    """Run ``func(batch, *args, **kwargs)`` once per batch; results in batch order.

    Parameters
    ----------
    func : a top-level (picklable) function of one batch
    batches : the batches (lists of work items)
    client : see the module's client rule
    label, unit : progress display text (``"ingest"``, ``"scans"``)
    size : units of progress per batch (default: its length)
    key_prefix : task key prefix; each run gets fresh keys (a re-run must look at the store
        again, not reuse a cached result)
    retries : Dask retries per task on a distributed cluster (a worker that died)
    resources : Dask worker resources each task needs, e.g. ``{"gpu": 1}``
    on_error : ``on_error(batch, exc)`` gives the result of a batch whose task failed; by
        default the error is raised after every other batch has finished
    local_scheduler : Dask scheduler without a distributed client (default: the one
        ``dask.config`` names, else ``"threads"``); ``"sync"`` runs one batch after the
        other, e.g. for a model that should be in memory once
    done : units already done before this call (shown as done, counted in the total)
    on_result : ``on_result(i, result)`` is called in this process as each batch ``i``
        finishes (not for failed ones), e.g. to write results as they arrive
    in_flight : batches submitted at once per worker thread of a distributed cluster (default
        ``thaldask.cluster.tasks-in-flight``); the next is submitted as one finishes
    """
    kwargs = dict(kwargs or {})
    batches = [list(b) for b in batches]
    if not batches:
        return []
    client = active_client(client)
    total = sum(size(b) for b in batches)
    run = uuid.uuid4().hex[:12]
    prefix = key_prefix or f"thaldask-{label}"
    results: list = [None] * len(batches)
    with Progress(total + done, label, unit=unit, enabled=progress, initial=done) as bar:
        if client is not None:
            from distributed import as_completed

            per_thread = int(in_flight or config.get("cluster.tasks-in-flight"))
            window = max(1, per_thread * n_slots(client))
            futs = {}

            def submit(i):
                f = client.submit(
                    _batch_task, func, batches[i], *args, key=f"{prefix}-{run}-{i}", pure=False,
                    retries=retries, resources=resources, **kwargs,
                )
                futs[f] = i
                return f

            queue = iter(range(len(batches)))
            ready = as_completed([submit(i) for _, i in zip(range(window), queue, strict=False)])
            for fut in ready:
                i = futs.pop(fut)
                try:
                    results[i] = fut.result()
                except Exception as exc:  # the task raised, or its worker died too often
                    results[i] = _Failed(exc)
                fut.release()  # the worker frees the result now, not when the stage ends
                del fut
                nxt = next(queue, None)
                if nxt is not None:  # one finished: the next batch takes its place
                    ready.add(submit(nxt))
                if on_result is not None and not isinstance(results[i], _Failed):
                    on_result(i, results[i])
                bar.advance(size(batches[i]))
        else:
            import dask
            from dask.callbacks import Callback

            names = {f"{prefix}-{run}-{i}": i for i in range(len(batches))}
            tasks = [
                dask.delayed(_guarded, pure=False)(func, b, args, kwargs, dask_key_name=k)
                for k, b in zip(names, batches)
            ]

            class _Advance(Callback):
                def _posttask(self, key, result, dsk, state, id):
                    if key in names:
                        if on_result is not None and not isinstance(result, _Failed):
                            on_result(names[key], result)
                        bar.advance(size(batches[names[key]]))

            with _Advance():
                scheduler = local_scheduler or dask.config.get("scheduler", None) or "threads"
                out = dask.compute(*tasks, scheduler=scheduler)
            results = list(out)
    errors = []
    for i, r in enumerate(results):
        if isinstance(r, _Failed):
            if on_error is None:
                errors.append(r.exc)
            else:
                results[i] = on_error(batches[i], r.exc)
    if errors:
        raise errors[0]
    return results


def owned_batches(items: list, scan_of, chunk: int, size: int) -> list[list]:
    """Split ``items`` into batches of about ``size`` such that the scans of one record chunk
    (``scan // chunk``) are all in one batch: no two tasks then write the same chunk of a
    write record or digest. A chunk's items are never split, so a batch may exceed
    ``size`` by up to a chunk; order is kept within a chunk.

    >>> owned_batches(list(range(10)), lambda s: s, 4, 2)
    [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    >>> owned_batches([5, 1, 9, 2], lambda s: s, 1, 3)
    [[1, 2, 5], [9]]
    """
    groups: dict[int, list] = {}
    for it in items:
        groups.setdefault(int(scan_of(it)) // max(1, int(chunk)), []).append(it)
    out, cur = [], []
    for key in sorted(groups):
        if cur and len(cur) + len(groups[key]) > max(1, int(size)):
            out.append(cur)
            cur = []
        cur = cur + groups[key]
    if cur:
        out.append(cur)
    return out
