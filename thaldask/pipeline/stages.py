"""The pipeline's stage adapters, one per stage, in order: synth → ingest → segment →
evaluate → stats → report.

Each adapter is ``stage(ctx) -> None``: it reads what it needs from the
:class:`~thaldask.pipeline.context.Context` (paths, client, its own validated config
section), calls the stage's public function, and records what it produced in
``ctx.outputs``; a stage whose input is absent raises :class:`~thaldask.errors.SkipStage`.
A stage's summary (``summary_*``) extends the printed run summary.
"""

from __future__ import annotations

import os
import time
import warnings

import pandas as pd
from rich.markup import escape

from thaldask.errors import SkipStage, StoreNotFoundError, ThaldaskWarning
from thaldask.metrics.evaluate import evaluate
from thaldask.metrics.summary import summary_table
from thaldask.pipeline.context import Context, Stage, print_stage_summaries, run_stage_list
from thaldask.report.build import write_report
from thaldask.schema import STATS_TABLES
from thaldask.segment.stage import segment_store
from thaldask.stats.run import headline_findings, load_stats_config, write_stats
from thaldask.store import ingest, open_store
from thaldask.store.format import INGEST_REPORT
from thaldask.synth import make_cohort

__all__ = ["STAGES", "run_stages", "print_summary"]


def stage_synth(ctx: Context) -> None:
    """Write a synthetic cohort (demo only: ``synth`` section with n_subjects, shape, seed)."""
    sec = ctx.section("synth")
    sec.pop("enabled", None)
    if not sec:
        raise SkipStage("no synthetic cohort requested")
    folder = os.path.join(ctx.out, "synthetic")
    kw = {k: sec[k] for k in ("n_timepoints", "n_sites", "seed", "gt_fraction", "params") if k in sec}
    cohort = make_cohort(
        folder,
        n_subjects=int(sec.get("n_subjects", 12)),
        shape=sec.get("shape", "small"),
        client=ctx.client,
        progress=ctx.progress,
        **kw,
    )
    ctx.manifest = str(cohort.manifest)
    ctx.clinical = str(cohort.clinical)
    ctx.synthetic = True
    ctx.outputs["synth"] = cohort


def stage_ingest(ctx: Context) -> None:
    """Manifest (+ clinical table) into the cohort store."""
    if not ctx.manifest:
        raise SkipStage("no manifest given; using the existing store")
    sec = ctx.section("ingest")
    report = ingest(
        ctx.manifest,
        ctx.store,
        clinical=ctx.clinical,
        overwrite=bool(sec.get("overwrite", False)),
        client=ctx.client,
        progress=ctx.progress,
    )
    ctx.outputs["ingest"] = report
    n_fail = int((report["status"] == "failed").sum())
    if n_fail:
        ctx.warn(f"ingest: {n_fail} files failed (see {INGEST_REPORT})")


def stage_segment(ctx: Context) -> None:
    """The segment stage (section ``segment``: model, contrasts, ensembles, device,
    batch_size, options). Default: ``thalnet`` on every stored T1w/FLAIR/R1 and the
    ensemble of all of them."""
    sec = ctx.section("segment")
    st = open_store(ctx.store)
    contrasts = sec.get("contrasts") or [c for c in ("T1w", "FLAIR", "R1") if c in st.contrasts]
    if not contrasts:
        raise SkipStage("no T1w, FLAIR or R1 images in the store")
    ensembles = sec.get("ensembles")
    if ensembles is None:
        ensembles = ["+".join(contrasts)] if len(contrasts) > 1 else []
    model = sec.get("model", "thalnet")
    t0 = time.perf_counter()
    kw = {k: sec[k] for k in ("device", "batch_size") if sec.get(k) is not None}
    df = segment_store(
        ctx.store,
        model,
        contrasts,
        ensembles,
        client=ctx.client,
        options=sec.get("options"),
        progress=ctx.progress,
        **kw,
    )
    ctx.outputs["segment"] = dict(table=df, seconds=time.perf_counter() - t0, model=model,
                                  contrasts=contrasts, ensembles=ensembles)
    n_fail = int((df["status"] == "failed").sum()) if len(df) else 0
    if n_fail:
        ctx.warn(f"segment: {n_fail} outputs failed")


def summary_segment(ctx: Context, console) -> None:
    out = ctx.outputs["segment"]
    df = out["table"]
    what = ", ".join(out["contrasts"] + out["ensembles"])
    if df.empty:
        console.print(f"[bold]segment:[/bold] {out['model']} on {what}: all masks already in the store")
        return
    counts = df["status"].value_counts().to_dict()
    single = df[~df["contrast"].str.contains("+", regex=False) & (df["status"] == "written")]
    per = f", {single['seconds'].mean():.1f} s per scan and contrast" if len(single) else ""
    console.print(f"[bold]segment:[/bold] {out['model']} on {what}: "
                  + ", ".join(f"{v} {k}" for k, v in counts.items()) + per)


def stage_evaluate(ctx: Context) -> None:
    """Every stored mask against ground truth: results dataset + metrics.csv."""
    sec = ctx.section("evaluate")
    ds = evaluate(
        ctx.store,
        client=ctx.client,
        progress=ctx.progress,
        surface=bool(sec.get("surface", True)),
        name=sec.get("name", "results"),
        csv_path=sec.get("csv") or os.path.join(ctx.out, "metrics.csv"),
        synthetic=ctx.synthetic or None,
    )
    ctx.outputs["evaluate"] = ds


def summary_evaluate(ctx: Context, console) -> None:
    ds = ctx.outputs["evaluate"]
    title = "evaluate: mean over scans, total thalamus (volume bias = method - ground truth)"
    console.print(summary_table(ds, title=title))
    n_empty = int(ds.pred_empty.sel(side="total").sum())
    console.print(
        f"{ds.attrs['n_computed']} (scan, method, contrast) rows computed, "
        f"{ds.attrs['n_reused']} reused; {n_empty} empty predicted masks (NaN surface metrics)"
    )


def _stats_config(ctx: Context):
    sec = {k: v for k, v in ctx.section("stats").items() if k != "enabled"}
    config = sec.pop("config", None) or sec or None
    if config is not None and not isinstance(config, dict):
        config = load_stats_config(config)
    return config


def stage_stats(ctx: Context) -> None:
    """Agreement, method comparison, clinical and longitudinal models, harmonisation:
    the CSV tables in ``out`` and a ``stats`` dataset in the store."""
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            paths = write_stats(ctx.store, out=ctx.out, config=_stats_config(ctx))
    except StoreNotFoundError as exc:
        raise SkipStage(f"no results dataset to analyse ({exc})") from None
    for w in caught:
        if issubclass(w.category, ThaldaskWarning):  # one "stats:" prefix, never two
            msg = str(w.message)
            ctx.warn(msg if msg.startswith("stats:") else f"stats: {msg}")
    ctx.outputs["stats"] = {"paths": paths, "tables": {k: pd.read_csv(p) for k, p in paths.items()}}


def summary_stats(ctx: Context, console) -> None:
    console.print("[bold]stats: headline findings[/bold] (tables: "
                  + ", ".join(os.path.basename(str(p)) for p in ctx.outputs["stats"]["paths"].values())
                  + ")")
    for line in headline_findings(ctx.outputs["stats"]["tables"]):
        console.print(f"  {escape(line)}")  # "[lo, hi]" is text, not rich markup


def stage_report(ctx: Context) -> None:
    """The HTML report (figures, visual QC, every statistics table as CSV) in
    ``out/report/index.html`` (section ``report: {out, side, seed, qc_random}``)."""
    sec = ctx.section("report")
    out = os.path.join(ctx.out, sec.get("out") or "report")  # relative to OUT; absolute kept
    has_csv = any(os.path.isfile(os.path.join(ctx.out, f"{t}.csv")) for t in STATS_TABLES)
    run_info = {f"stage {k}": f"{v:.1f} s" for k, v in ctx.timings.items()}
    try:
        index = write_report(ctx.store, out, stats_dir=ctx.out if has_csv else None,
                             side=sec.get("side", "total"),
                             rng=sec.get("seed", 0), qc_random=int(sec.get("qc_random", 2)),
                             run_info=run_info, pipeline_config=ctx.config or None,
                             progress=ctx.progress)
    except StoreNotFoundError as exc:
        raise SkipStage(f"no cohort store ({exc})") from None
    ctx.outputs["report"] = index


def summary_report(ctx: Context, console) -> None:
    console.print(f"[bold]report:[/bold] {ctx.outputs['report']}")


#: the pipeline, in order
STAGES: list[Stage] = [
    Stage("synth", stage_synth),
    Stage("ingest", stage_ingest),
    Stage("segment", stage_segment, summary_segment),
    Stage("evaluate", stage_evaluate, summary_evaluate),
    Stage("stats", stage_stats, summary_stats),
    Stage("report", stage_report, summary_report),
]


def run_stages(ctx: Context, *, only: list[str] | None = None) -> Context:
    """Run every stage of :data:`STAGES` in order (or those in ``only``) on ``ctx``."""
    return run_stage_list(ctx, STAGES, only=only)


def print_summary(ctx: Context, console=None) -> None:
    """Each stage's summary section, then the warnings and timings."""
    print_stage_summaries(ctx, STAGES, console)
