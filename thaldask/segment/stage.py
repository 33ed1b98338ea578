"""The segmentation stage: run a segmenter over every scan of a cohort store on Dask.

One task per scan (or per small batch of scans) computes every requested contrast and
ensemble of that scan and writes masks (and quantised probabilities) with
``CohortStore.write_mask``: idempotent, so a re-run skips finished scans and a task that a
worker death interrupted is simply recomputed. The model is loaded once per worker by a
:class:`~thaldask.segment.registry.SegmenterPlugin` (a ``distributed.WorkerPlugin``) and never travels inside a task;
tasks ask for the ``gpu`` resource when the device is CUDA.
"""

from __future__ import annotations

import time

import numpy as np
import pandas as pd

from thaldask import config
from thaldask._shared.compute import active_client, n_slots, owned_batches, run_batches
from thaldask.errors import SegmenterError, StoreError
from thaldask.segment.base import split_contrast
from thaldask.segment.ensemble import ensemble_average, ensemble_vote
from thaldask.segment.registry import (
    SegmenterPlugin,
    get_segmenter,
    loaded_segmenter,
    segmenter_class,
)
from thaldask.segment.tool_stage import COLUMNS, segment_report, segment_store_tool
from thaldask.store import open_store
from thaldask.store.format import mask_array

__all__ = ["segment_store", "shard_scans"]

#: a new mask array is sharded (its records chunked) by the store's record chunk once the
#: cohort has this many such chunks per task slot: tasks of that many scans still keep
#: every slot busy; smaller cohorts keep ``batch_size`` scans per chunk (one task per scan
#: by default, spread over every worker)
CHUNKS_PER_SLOT = 4


def shard_scans(n_scans: int, slots: int, batch_size: int, record_chunk: int) -> int:
    """Scans per shard (and per write-record chunk) of a new mask array.

    >>> shard_scans(40, 2, 1, 16)   # the demo: one task per scan on every worker
    1
    >>> shard_scans(2000, 8, 1, 16)  # 16 scans per file: few files per scan
    16
    """
    if n_scans >= max(1, int(record_chunk)) * CHUNKS_PER_SLOT * max(1, int(slots)):
        return max(int(batch_size), int(record_chunk))
    return int(batch_size)

# ---------------------------------------------------------------- worker side


def run_scans(items, store_path, model, options, device, overwrite=False):
    """Segment the scans in ``items``; returns one status row per output."""
    st = open_store(store_path)
    seg = loaded_segmenter(model, options, device)
    with st.record_batch():  # the task owns its scans' record chunks: one write per chunk
        return _segment_items(st, seg, items, model, overwrite)


def _segment_items(st, seg, items, model, overwrite):
    rows = []
    for item in items:
        i = item["scan"]
        cache: dict[str, tuple] = {}
        for contrast in item["contrasts"]:
            t0 = time.perf_counter()
            row = dict(scan=i, method=model, contrast=contrast)
            try:
                parts = split_contrast(contrast)
                imgs = [st.load_image(p, i) for p in parts]
                image = imgs[0] if len(imgs) == 1 else np.stack(imgs)
                pred = seg.predict(image, st.affines[i], contrast=contrast)
                status = st.write_mask(model, contrast, i, pred.labels, prob=pred.prob,
                                       volume_sd=getattr(pred, "volume_sd", None), overwrite=overwrite)
                cache[contrast] = (pred.labels, pred.prob)
                row.update(status=status)
            except Exception as exc:  # noqa: BLE001 - one bad scan never stops the cohort
                row.update(status="failed", error=f"{type(exc).__name__}: {exc}".splitlines()[0])
            row["seconds"] = time.perf_counter() - t0
            rows.append(row)
        for ens in item["ensembles"]:
            members = split_contrast(ens)
            for kind in item["ensemble_kinds"]:
                t0 = time.perf_counter()
                method = model if kind == "mean" else f"{model}-vote"
                row = dict(scan=i, method=method, contrast=ens)
                try:
                    labs, probs = [], []
                    for m in members:
                        if m in cache:
                            lab, prob = cache[m]
                        else:
                            lab, prob = st.load_mask(model, m, i), st.load_prob(model, m, i)
                            cache[m] = (lab, prob)
                        labs.append(lab)
                        probs.append(prob)
                    if kind == "mean":
                        if any(p is None for p in probs):
                            raise SegmenterError(
                                f"probability averaging needs probabilities of every member of {ens}"
                            )
                        lab, prob = ensemble_average(probs)
                        status = st.write_mask(method, ens, i, lab, prob=prob, overwrite=overwrite)
                    else:
                        status = st.write_mask(method, ens, i, ensemble_vote(labs), overwrite=overwrite)
                    row.update(status=status)
                except Exception as exc:  # noqa: BLE001
                    row.update(status="failed", error=f"{type(exc).__name__}: {exc}".splitlines()[0])
                row["seconds"] = time.perf_counter() - t0
                rows.append(row)
    return rows


# ---------------------------------------------------------------- client side


def _done(st, method, contrast) -> np.ndarray:
    try:
        return np.asarray(st.has_mask(method, contrast), dtype=bool)
    except (KeyError, StoreError):
        return np.zeros(st.n_scans, dtype=bool)


def _plan(st, model, contrasts, ensembles, kinds, overwrite):
    has = {c: np.asarray(st.has_image(c), dtype=bool) for c in st.contrasts}
    items, skipped = [], []

    def available(contrast):
        parts = split_contrast(contrast)
        ok = np.ones(st.n_scans, dtype=bool)
        for p in parts:
            ok &= has.get(p, np.zeros(st.n_scans, dtype=bool))
        return ok

    todo_c = {c: available(c) & (overwrite | ~_done(st, model, c)) for c in contrasts}
    todo_e = {}
    for e in ensembles:
        avail = np.ones(st.n_scans, dtype=bool)
        for m in split_contrast(e):
            avail &= available(m)
        for kind in kinds:
            method = model if kind == "mean" else f"{model}-vote"
            todo_e[(e, kind)] = avail & (overwrite | ~_done(st, method, e))
    for i in range(st.n_scans):
        cs = [c for c in contrasts if todo_c[c][i]]
        es = sorted({e for (e, k), v in todo_e.items() if v[i]})
        ks = sorted({k for (e, k), v in todo_e.items() if v[i]})
        # ensemble members must exist: compute any member not yet stored for this scan
        for e in es:
            for m in split_contrast(e):
                if m not in cs and not _done(st, model, m)[i]:
                    cs.append(m)
        if cs or es:
            items.append(dict(scan=i, contrasts=cs, ensembles=es, ensemble_kinds=ks or ["mean"]))
        else:
            skipped.append(i)
    return items, skipped


def segment_store(
    store_path,
    model: str = "thalnet",
    contrasts=("T1w",),
    ensembles=(),
    *,
    client=None,
    device: str | None = None,
    options: dict | None = None,
    ensemble_kinds=("mean", "vote"),
    batch_size: int | None = None,
    overwrite: bool = False,
    require_gpu: bool | None = None,
    progress: bool = True,
    keep_work: bool = False,
) -> pd.DataFrame:
    """Segment every scan of a store with ``model`` and write masks into the store.

    Parameters
    ----------
    store_path : str
        Cohort store path (workers open it themselves).
    model : str
        Registered segmenter name (``thalnet``, ``thalnet-multi``, ``mindglide``, plugins).
    contrasts : sequence of str
        Image contrasts to segment separately; for a multi-channel model a contrast like
        ``"T1w+R1"`` names its channels.
    ensembles : sequence of str
        Ensembles across contrasts of the same scan, e.g. ``"T1w+FLAIR+R1"``: probability
        averaging is written as method ``model``, majority vote as ``model + "-vote"``, both
        with the ensemble name as contrast (``ensemble_kinds`` selects them).
    client : distributed.Client, optional
        Where to run; None: the active distributed client if there is one, else this
        process, one batch after the other.
    device : ``"auto"``, ``"cpu"``, ``"cuda"``
        Resolved on each worker; with ``"cuda"`` tasks ask for the ``gpu`` resource.
        Default: ``thaldask.segment.device``.
    options : dict
        Segmenter options (e.g. ``{"checkpoint": ..., "label_ids": "3"}`` for mindglide).
    batch_size : int
        Scans per task (default: ``thaldask.segment.batch-size``). A new mask array holds
        as many scans per write-record chunk; when the cohort has at least
        ``CHUNKS_PER_SLOT`` (4) store record chunks (16 scans) per task slot, it gets the
        store's record chunk instead and is sharded, that many scans per file (tasks then
        write 16 scans each: :func:`shard_scans`). Existing arrays keep their chunking.
    overwrite : bool
        Recompute scans that already have a mask.
    require_gpu : bool, optional
        Ask for the ``gpu`` worker resource (default: when ``device`` is CUDA).
    keep_work : bool
        External tools only: keep every scan's scratch folder (default: removed when the
        scan succeeds). External tools run through
        :func:`thaldask.segment.tool_stage.segment_store_tool`, one task per scan.

    Returns
    -------
    pandas.DataFrame
        One row per output: scan, subject, timepoint, method, contrast, status
        (``written``, ``skipped``, ``failed``), seconds, error. Already finished scans are
        not listed.

    Raises
    ------
    SegmenterError
        unknown model, contrast not in the store, or a contrast the model cannot take.
    """
    st = open_store(store_path)
    device = device or config.get("segment.device")
    batch_size = max(1, int(batch_size or config.get("segment.batch-size")))
    options = dict(options or {})
    contrasts = list(dict.fromkeys(contrasts or ()))
    ensembles = list(dict.fromkeys(ensembles or ()))
    kinds = [k for k in ensemble_kinds if k in ("mean", "vote")]
    if ensembles and not kinds:
        raise SegmenterError(f"ensemble kinds {list(ensemble_kinds)} not understood; allowed: mean, vote")
    if getattr(segmenter_class(model), "external", False):
        if ensembles:
            raise SegmenterError(
                f"segmenter {model!r} is an external tool: segment each contrast, or give a "
                "multi-contrast input such as T1w+FLAIR; ensembles are for models with probabilities"
            )
        return segment_store_tool(store_path, model, contrasts, client=client, device=device,
                                  options=options, overwrite=overwrite, keep_work=keep_work,
                                  progress=progress)
    seg = get_segmenter(model, **options)
    why = seg.unavailable()
    if why:  # before any task starts
        raise SegmenterError(f"segmenter {model!r} cannot run here: {why}")
    for c in contrasts:
        seg.check_contrast(c)
    for e in ensembles:
        members = split_contrast(e)
        if len(members) < 2:
            raise SegmenterError(f"ensemble {e!r} needs at least two contrasts joined by '+'")
        for m in members:
            seg.check_contrast(m)
    needed = {p for c in contrasts + ensembles for p in split_contrast(c)}
    missing = sorted(needed - set(st.contrasts))
    if missing:
        raise SegmenterError(
            f"{st.path}: contrast {missing[0]!r} is not in the store; it has {', '.join(st.contrasts) or 'none'}"
        )
    items, _ = _plan(st, model, contrasts, ensembles, kinds, overwrite)
    if not items:
        return pd.DataFrame(columns=COLUMNS)
    if require_gpu is None:
        require_gpu = str(device).lower().startswith("cuda")
    client = active_client(client)
    if client is not None:
        client.register_plugin(SegmenterPlugin(model, options, device))

    def failed(batch, exc):  # a task that failed (or whose worker died twice): its rows
        reason = f"{type(exc).__name__}: {exc}".splitlines()[0]
        return [dict(scan=item["scan"], method=model, contrast=c, status="failed", seconds=np.nan,
                     error=reason)
                for item in batch for c in item["contrasts"] + item["ensembles"]]

    # a task owns whole chunks of the write records (and shards) of every array it writes;
    # a new mask array gets batch_size scans per chunk, so that tasks stay batch_size scans
    # (one per scan by default: a small cohort still spreads over every worker), or in a
    # large cohort the store's record chunk, sharded (shard_scans)
    methods = [model if k == "mean" else f"{model}-vote" for k in kinds]
    written = [mask_array(model, c) for c in contrasts] + [mask_array(m, e) for e in ensembles for m in methods]
    per_file = shard_scans(st.n_scans, n_slots(client), batch_size, st.record_chunk)
    for name in written:
        if not st.has_array(name):
            st.ensure_array(name, dtype="uint8", record_chunk=per_file)
    chunk = st.write_chunk(written)
    results = run_batches(
        run_scans,
        owned_batches(items, lambda it: it["scan"], chunk, batch_size),
        client=client,
        label=f"segment {model}",
        progress=progress,
        key_prefix=f"thaldask-segment-{model}",
        resources={"gpu": 1} if require_gpu else None,
        on_error=failed,
        local_scheduler="sync",  # one model in memory, its own threads
        args=(st.path, model, options, device),
        kwargs={"overwrite": overwrite},
    )
    return segment_report(st, [r for batch_rows in results for r in batch_rows])
