"""The segmentation stage for external tools: one Dask task per scan and contrast.

Each task runs the tool (:func:`thaldask.segment.external.run_tool`) on one scan in its own
scratch folder and writes ``masks/<tool>/<contrast>`` (and ``probs/...`` where the tool gives
probabilities) with ``CohortStore.write_mask``: idempotent, so a re-run skips finished scans.
A tool failure raises inside the task, so Dask retries it (the definition's ``retries``);
the scan is then reported failed with the tool's one-line reason and the cohort goes on.
Tasks ask for the Dask resources ``threads``, ``memory`` and ``gpu`` of the definition that
the cluster's workers offer (a resource no worker declares is not asked for; one that no
worker has enough of stops the run before any task starts). The tool's name, version and
command line are recorded in the mask array's attributes (``thaldask_tool``).
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import pandas as pd

from thaldask._shared.compute import active_client, owned_batches, run_batches
from thaldask.errors import SegmenterError, StoreError
from thaldask.segment.base import split_contrast
from thaldask.segment.external import run_tool, tool_unavailable
from thaldask.segment.presets import tool_definitions, tool_spec
from thaldask.store import open_store
from thaldask.store.format import mask_array

__all__ = ["segment_store_tool", "check_workers", "worker_resources", "fit_resources"]

COLUMNS = ["scan", "subject", "timepoint", "method", "contrast", "status", "seconds", "error"]


def run_tool_scan(items, store_path, name, definition, options, device, overwrite=False,
                  keep_work=False):
    """Worker side: run tool ``name`` on each (scan, contrast) of ``items`` (one, unless
    their masks' write records share a chunk); returns their status rows.

    Raises the tool's error (so that Dask retries the task)."""
    st = open_store(store_path)
    spec = tool_spec(name, definition)
    rows = []
    for item in items:
        i, contrast = int(item["scan"]), item["contrast"]
        parts = split_contrast(contrast)
        t0 = time.perf_counter()
        images = [st.load_image(p, i) for p in parts]
        subject = f"{st.scans.subject[i]}_{st.scans.timepoint[i]}"
        lab, prob, info = run_tool(
            spec, images, st.affines[i], parts, subject=subject, threads=options.get("threads"),
            device=device, labels=options.get("labels"), keep_work=keep_work,
        )
        status = st.write_mask(name, contrast, i, lab, prob=prob, overwrite=overwrite)
        rows.append(dict(scan=i, method=name, contrast=contrast, status=status,
                         seconds=time.perf_counter() - t0, error=None, tool_seconds=info["seconds"],
                         version=info["version"], command=info["command"], work=info.get("work")))
    return rows


def why_not_here(name, definition) -> str:
    """Worker side: why tool ``name`` cannot run on this worker ("" when it can)."""
    return tool_unavailable(tool_spec(name, definition))


def check_workers(client, name, definition, resources=None) -> None:
    """Ask every worker that can take the tool's tasks (it has ``resources``) whether the
    tool runs there; raise one line naming the first that cannot (a task landing there
    would fail after minutes of other scans)."""
    offered = worker_resources(client)
    eligible = [w for w, res in offered.items()
                if all(res.get(k, 0) >= v for k, v in (resources or {}).items())]
    if not eligible:
        want = ", ".join(f"{k}={_show(k, v)}" for k, v in (resources or {}).items())
        raise SegmenterError(f"{name}: no worker offers all of the Dask resources {want} (or no worker is up)")
    answers = client.run(why_not_here, name, definition, workers=eligible)
    bad = {w: why for w, why in answers.items() if why}
    if bad:
        w, why = next(iter(sorted(bad.items())))
        where = "any worker" if len(bad) == len(answers) else f"{len(bad)} of {len(answers)} workers"
        raise SegmenterError(f"segmenter {name!r} cannot run on {where} ({w}): {why}")


def worker_resources(client) -> dict[str, dict]:
    """The resources each worker of ``client``'s cluster declares (address -> dict)."""
    info = client.scheduler_info(n_workers=-1) if _takes_n_workers(client) else client.scheduler_info()
    return {a: dict(w.get("resources") or {}) for a, w in info.get("workers", {}).items()}


def _takes_n_workers(client) -> bool:
    import inspect

    try:
        return "n_workers" in inspect.signature(client.scheduler_info).parameters
    except (TypeError, ValueError):
        return False


def fit_resources(wanted: dict, offered: list[dict], *, tool: str) -> dict:
    """The part of ``wanted`` to ask Dask for: resources at least one worker declares.

    Raises
    ------
    SegmenterError
        a declared resource that no worker has enough of (the task would never start).

    >>> fit_resources({"threads": 2, "memory": 6e9}, [{"threads": 4}], tool="samseg")
    {'threads': 2}
    >>> fit_resources({"threads": 8}, [{"threads": 4}], tool="samseg")
    Traceback (most recent call last):
    ...
    thaldask.errors.SegmenterError: samseg asks for Dask resource threads=8 per scan but the largest worker offers 4
    """
    out = {}
    for key, amount in wanted.items():
        have = [w[key] for w in offered if key in w]
        if not have:
            continue
        if max(have) < amount:
            raise SegmenterError(
                f"{tool} asks for Dask resource {key}={_show(key, amount)} per scan but the largest "
                f"worker offers {_show(key, max(have))}"
            )
        out[key] = amount
    return out


def _show(key, amount) -> str:
    if key == "memory":
        from dask.utils import format_bytes

        return format_bytes(int(amount)).replace(" ", "")
    return f"{amount:g}"


def _record_provenance(st, name, contrast, rows, spec) -> None:
    done = [r for r in rows if r.get("status") == "written"]
    if not done:
        return
    versions = sorted({str(r["version"]) for r in done})
    prov = dict(tool=name, version=versions[0] if len(versions) == 1 else versions,
                command=done[0]["command"], command_template=list(spec.command),
                runtime=spec.runtime, image=spec.image, labels=spec.labels, grid=spec.grid)
    try:
        z = st.zarr_array(mask_array(name, contrast), mode="r+")
        z.attrs.update({"thaldask_tool": prov})
    except (KeyError, StoreError):
        pass


def segment_store_tool(
    store_path,
    name: str,
    contrasts,
    *,
    client=None,
    device: str = "auto",
    options: dict | None = None,
    overwrite: bool = False,
    keep_work: bool = False,
    progress: bool = True,
) -> pd.DataFrame:
    """Segment every scan of a store with external tool ``name`` (see
    :func:`thaldask.segment.segment_store`, which calls this for tools).

    Returns the same table as :func:`~thaldask.segment.segment_store` (one row per scan and
    contrast, status ``written``/``skipped``/``failed``, the failure's one-line reason).

    Raises
    ------
    SegmenterError
        the tool cannot run here (one line, before any task starts), or a contrast it
        cannot take, or resources no worker offers.
    """
    options = dict(options or {})
    definition = tool_definitions()[name]
    spec = tool_spec(name, definition)
    if options.get("labels"):
        spec = dataclasses.replace(spec, labels=str(options["labels"]))
        definition = {**definition, "labels": spec.labels}
    client = active_client(client)
    if client is None:
        why = tool_unavailable(spec)
        if why:
            raise SegmenterError(f"segmenter {name!r} cannot run here: {why}")
    if options.get("threads"):
        definition = {**definition, "threads": int(options["threads"])}
        spec = tool_spec(name, definition)
    gpu = str(device).lower().startswith("cuda") or bool(spec.gpu)
    resources = None
    if client is not None:  # where the tasks will run, checked before any starts
        resources = fit_resources(spec.resources(gpu=gpu), list(worker_resources(client).values()),
                                  tool=name) or None
        check_workers(client, name, definition, resources)
    st = open_store(store_path)
    for c in contrasts:
        parts = split_contrast(c)
        if len(parts) > 1 and not spec.multi_contrast:
            raise SegmenterError(f"segmenter {name!r} takes one contrast; got {c!r}")
        bad = [p for p in parts if spec.contrasts is not None and p not in spec.contrasts]
        if bad:
            raise SegmenterError(
                f"segmenter {name!r} does not accept contrast {bad[0]!r}; allowed: {', '.join(spec.contrasts)}"
            )
        missing = [p for p in parts if p not in st.contrasts]
        if missing:
            raise SegmenterError(
                f"{st.path}: contrast {missing[0]!r} is not in the store; it has "
                f"{', '.join(st.contrasts) or 'none'}"
            )
    items = []
    for c in contrasts:
        parts = split_contrast(c)
        ok = np.ones(st.n_scans, dtype=bool)
        for p in parts:
            ok &= np.asarray(st.has_image(p), dtype=bool)
        try:
            done = np.asarray(st.has_mask(name, c), dtype=bool)
        except (KeyError, StoreError):
            done = np.zeros(st.n_scans, dtype=bool)
        items += [dict(scan=int(i), contrast=c) for i in np.flatnonzero(ok & (overwrite | ~done))]
    if not items:
        return pd.DataFrame(columns=COLUMNS)

    def failed(batch, exc):
        reason = f"{type(exc).__name__}: {exc}".splitlines()[0]
        return [dict(scan=it["scan"], method=name, contrast=it["contrast"], status="failed",
                     seconds=np.nan, error=reason) for it in batch]

    # a tool takes minutes per scan: one task per scan, so its masks' write records get one
    # scan per chunk and the array is not sharded (one file per scan: a file per minutes of
    # work is no burden); an array stored before with larger record chunks (or sharded):
    # a task per chunk, each write rewriting its shard at once
    batches = []
    for c in contrasts:
        st.ensure_array(mask_array(name, c), dtype="uint8", record_chunk=1)
        chunk = st.write_chunk([mask_array(name, c)])
        batches += owned_batches([it for it in items if it["contrast"] == c], lambda it: it["scan"], chunk, 1)
    rows = run_batches(
        run_tool_scan,
        batches,
        client=client,
        label=f"segment {name}",
        progress=progress,
        key_prefix=f"thaldask-tool-{name}",
        retries=spec.retries,
        resources=resources,
        on_error=failed,
        local_scheduler="sync",  # a tool uses its own threads; one scan at a time here
        args=(st.path, name, definition, options, device),
        kwargs={"overwrite": overwrite, "keep_work": keep_work},
    )
    rows = [r for batch_rows in rows for r in batch_rows]
    for c in contrasts:
        _record_provenance(st, name, c, [r for r in rows if r["contrast"] == c], spec)
    return segment_report(st, rows, extra=("tool_seconds", "version", "command", "work"))


def segment_report(st, rows: list[dict], *, extra=()) -> pd.DataFrame:
    """The report of a segment run, one row per (scan, method, contrast): :data:`COLUMNS`
    (subject and timepoint from the store) and the ``extra`` columns the rows have. The
    store's metadata are consolidated first (new mask arrays)."""
    try:
        st.consolidate()
    except Exception:  # noqa: BLE001 - consolidation is an optimisation
        pass
    df = pd.DataFrame(rows)
    scans = st.scans
    df["subject"] = scans["subject"].to_numpy()[df["scan"].to_numpy(int)]
    df["timepoint"] = scans["timepoint"].to_numpy()[df["scan"].to_numpy(int)]
    for c in COLUMNS:
        if c not in df:
            df[c] = None
    more = [c for c in extra if c in df]
    return df[COLUMNS + more].sort_values(["scan", "method", "contrast"]).reset_index(drop=True)
