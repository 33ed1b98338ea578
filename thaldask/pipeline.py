"""The whole pipeline as a fixed, ordered list of stages: synth → ingest → segment →
evaluate → stats → report.

Each stage is one function ``stage(ctx) -> None`` that reads what it needs from the
:class:`Context` (paths, client, its own config section) and records what it produced in
``ctx.outputs``; a stage whose input is absent or that is switched off in the config is
skipped and says so. :data:`STAGES` is the order; a stage that lands later is added there
as one entry, with an optional ``summary`` that extends the demo's printed summary.

- :func:`run_demo`: a synthetic cohort through every available stage on a local cluster;
- :func:`run_config`: a real cohort as configured in YAML (see
  ``thaldask/data/example_config.yaml``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from collections.abc import Callable
from pathlib import Path

from thaldask.errors import ConfigError, SkipStage

__all__ = ["Context", "Stage", "STAGES", "run_demo", "run_config", "run_stages", "load_config"]


@dataclasses.dataclass
class Context:
    """What the stages share during one pipeline run."""

    out: str  # folder for the outputs (store, tables, README)
    store: str  # cohort store path or URL
    client: object = None  # distributed.Client
    config: dict = dataclasses.field(default_factory=dict)  # per-stage sections
    manifest: str | None = None
    clinical: str | None = None
    synthetic: bool = False
    progress: bool = True
    outputs: dict = dataclasses.field(default_factory=dict)  # stage name -> what it produced
    timings: dict = dataclasses.field(default_factory=dict)  # stage name -> seconds
    skipped: dict = dataclasses.field(default_factory=dict)  # stage name -> reason

    def section(self, name: str) -> dict:
        """This stage's config section ({} if absent); ``enabled: false`` switches it off."""
        sec = self.config.get(name)
        return dict(sec) if isinstance(sec, dict) else {}

    def enabled(self, name: str, default: bool = True) -> bool:
        sec = self.config.get(name)
        if sec is False:
            return False
        if isinstance(sec, dict):
            return bool(sec.get("enabled", default))
        return default


@dataclasses.dataclass(frozen=True)
class Stage:
    name: str
    run: Callable[[Context], None]
    summary: Callable[[Context, object], None] | None = None  # (ctx, rich console)


# --------------------------------------------------------------------------- stages
def stage_synth(ctx: Context) -> None:
    """Write a synthetic cohort (demo only: ``synth`` section with n_subjects, shape, seed)."""
    sec = ctx.section("synth")
    if not sec:
        raise SkipStage("no synthetic cohort requested")
    from thaldask.synth import make_cohort

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
    from thaldask.store import ingest

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
        ctx.outputs.setdefault("warnings", []).append(f"ingest: {n_fail} files failed (see ingest_report.csv)")


def stage_evaluate(ctx: Context) -> None:
    """Every stored mask against ground truth: results dataset + metrics.csv."""
    from thaldask.metrics.evaluate import evaluate

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
    from thaldask.metrics.commands import summary_table

    ds = ctx.outputs["evaluate"]
    title = "evaluate: mean over scans, total thalamus (volume bias = method - ground truth)"
    console.print(summary_table(ds, title=title))
    n_empty = int(ds.pred_empty.sel(side="total").sum())
    console.print(
        f"{ds.attrs['n_computed']} (scan, method, contrast) rows computed, "
        f"{ds.attrs['n_reused']} reused; {n_empty} empty predicted masks (NaN surface metrics)"
    )


def stage_stats(ctx: Context) -> None:
    """Agreement, method comparison, clinical and longitudinal models, harmonisation:
    the CSV tables beside the store (or in ``out``) and a ``stats`` dataset in the store."""
    import warnings

    import pandas as pd

    from thaldask.errors import StoreNotFoundError, ThaldaskWarning
    from thaldask.stats.run import write_stats

    sec = ctx.section("stats")
    sec.pop("enabled", None)
    config = sec.pop("config", None) or (sec or None)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            paths = write_stats(ctx.store, out=ctx.out, config=config)
    except StoreNotFoundError as exc:
        raise SkipStage(f"no results dataset to analyse ({exc})") from None
    for w in caught:
        if issubclass(w.category, ThaldaskWarning):
            ctx.outputs.setdefault("warnings", []).append(f"stats: {w.message}")
    ctx.outputs["stats"] = {"paths": paths, "tables": {k: pd.read_csv(p) for k, p in paths.items()}}


def summary_stats(ctx: Context, console) -> None:
    from thaldask.stats.run import headline_findings

    console.print("[bold]stats: headline findings[/bold] (tables: "
                  + ", ".join(p.name for p in ctx.outputs["stats"]["paths"].values()) + ")")
    for line in headline_findings(ctx.outputs["stats"]["tables"]):
        console.print(f"  {line}")


def stage_report(ctx: Context) -> None:
    """The HTML report (figures, visual QC, every statistics table as CSV) in
    ``out/report/index.html`` (config: ``report: {out: DIR, side: total, seed: 0,
    qc_random: 2}``)."""
    from thaldask.errors import StoreNotFoundError
    from thaldask.report import STATS_TABLES, write_report

    sec = ctx.section("report")
    out = os.path.join(ctx.out, sec.get("out") or "report")  # relative to OUT; absolute kept
    has_csv = any(os.path.isfile(os.path.join(ctx.out, f"{t}.csv")) for t in STATS_TABLES)
    run_info = {f"stage {k}": f"{v:.1f} s" for k, v in ctx.timings.items()}
    stats_sec = {k: v for k, v in ctx.section("stats").items() if k != "enabled"}
    stats_config = stats_sec.pop("config", None) or stats_sec or None
    if stats_config is not None and not isinstance(stats_config, dict):
        from thaldask.stats.run import load_stats_config

        stats_config = load_stats_config(stats_config)
    try:
        index = write_report(ctx.store, out, stats_dir=ctx.out if has_csv else None,
                             stats_config=stats_config, side=sec.get("side", "total"),
                             rng=sec.get("seed", 0), qc_random=int(sec.get("qc_random", 2)),
                             run_info=run_info, pipeline_config=ctx.config or None,
                             progress=ctx.progress)
    except StoreNotFoundError as exc:
        raise SkipStage(f"no cohort store ({exc})") from None
    ctx.outputs["report"] = index


def summary_report(ctx: Context, console) -> None:
    console.print(f"[bold]report:[/bold] {ctx.outputs['report']}")


def _segment():
    from thaldask.segment import stage

    return stage


#: the pipeline, in order; later stages (segment, stats, report) are inserted at their place
STAGES: list[Stage] = [
    Stage("synth", stage_synth),
    Stage("ingest", stage_ingest),
    Stage("segment", lambda ctx: _segment().pipeline_stage(ctx), lambda ctx, c: _segment().pipeline_summary(ctx, c)),
    Stage("evaluate", stage_evaluate, summary_evaluate),
    Stage("stats", stage_stats, summary_stats),
    Stage("report", stage_report, summary_report),
]


# --------------------------------------------------------------------------- running
def _console():
    from rich.console import Console

    return Console(stderr=True)


def run_stages(ctx: Context, *, only: list[str] | None = None) -> Context:
    """Run every stage of :data:`STAGES` in order (or those in ``only``) on ``ctx``."""
    console = _console()
    for stage in STAGES:
        if only is not None and stage.name not in only:
            continue
        if not ctx.enabled(stage.name):
            ctx.skipped[stage.name] = "disabled in the config"
            continue
        t0 = time.perf_counter()
        try:
            if ctx.progress:
                console.print(f"[bold]{stage.name}[/bold] …")
            stage.run(ctx)
        except SkipStage as exc:
            ctx.skipped[stage.name] = str(exc)
            if ctx.progress:
                console.print(f"  {stage.name} skipped: {exc}")
            continue
        ctx.timings[stage.name] = time.perf_counter() - t0
    return ctx


def print_summary(ctx: Context, console=None) -> None:
    """Each stage's summary section, then the output files and timings."""
    if console is None:
        from rich.console import Console

        console = Console()
        if not console.is_terminal:
            console = Console(width=120)
    for stage in STAGES:
        if stage.summary is not None and stage.name in ctx.outputs:
            stage.summary(ctx, console)
    for w in ctx.outputs.get("warnings", []):
        console.print(f"warning: {w}")
    t = ", ".join(f"{k} {v:.1f} s" for k, v in ctx.timings.items())
    console.print(f"stages: {t}")


@contextlib.contextmanager
def _client(client=None, scheduler=None, cluster_config=None, progress=True):
    if client is not None:
        yield client
        return
    from thaldask.cluster import get_client

    kw = {"cluster_config": cluster_config} if cluster_config is not None else {}
    with get_client(scheduler, quiet=True, **kw) as c:
        if progress:
            _console().print(f"Dask dashboard: {c.dashboard_link}")
        yield c


README_TEXT = """\
thaldask demo output
====================

ALL DATA IN THIS FOLDER ARE SYNTHETIC. They were generated by `thaldask demo` from
template anatomy with planted effects; no real participant is represented.

Files
-----
synthetic/            the synthetic cohort as files: NIfTI/MGZ images and masks,
  manifest.csv        one row per file (subject, timepoint, site, kind, contrast, method,
                      labels, path)
  clinical.csv        clinical covariates per (subject, timepoint)
  truth.json          every planted parameter and the true thalamic volume of every scan
cohort.zarr/          the cohort store (Zarr v3): images and masks on each scan's RAS grid,
                      plus the results dataset under results/ (open it with
                      thaldask.store.open_store(path).open_results())
cohort.zarr/ingest_report.csv   status of every ingested file
metrics.csv           the tidy metrics table: one row per subject/timepoint/method/contrast/
                      side (left, right, total) with volume_mm3, gt_volume_mm3, dice,
                      jaccard, sensitivity, precision, hd95_mm, assd_mm, volume_diff_mm3,
                      volume_diff_pct, tp/fp/fn, pred_empty/gt_empty and clinical covariates
agreement.csv, method_comparison.csv, clinical_cross.csv, longitudinal.csv,
harmonisation.csv     statistical stage: agreement with ground truth, paired method
                      comparison, clinical associations, longitudinal models, ComBat; each
                      row names its model formula and n (also under cohort.zarr/results/stats)
report/index.html     the HTML report (open it in any browser, offline): overview, agreement,
                      clinical, harmonisation and visual-QC figures (report/figures, report/qc)
                      and every statistics table, downloadable from report/tables
README.txt            this file

Methods named *-sim are simulated segmentation methods with planted error profiles, not
the real tools. Re-running the demo into the same folder reuses what is complete.
"""


def run_demo(
    out: str | os.PathLike = "thaldask-demo",
    subjects: int = 12,
    full: bool = False,
    client=None,
    *,
    scheduler: str | None = None,
    progress: bool = True,
    seed: int = 0,
    gt_fraction: float | None = None,
) -> Context:
    """Synthetic cohort → store → (segment) → evaluate → (stats, report), on a local cluster.

    Parameters
    ----------
    out : output folder (created); holds the store, metrics.csv and README.txt
    subjects : number of synthetic subjects (two timepoints each)
    full : whole-head 1 mm volumes instead of the small field of view around the thalami
    client : an existing ``distributed.Client``; default: a LocalCluster with worker
        processes (or the scheduler at ``scheduler``)
    progress : progress bars and stage messages on stderr
    seed : synthetic cohort seed
    gt_fraction : share of patients with manual ground truth (default: the synth default)

    Returns
    -------
    Context with ``outputs["evaluate"]`` the results dataset.
    """
    out = str(out)
    os.makedirs(out, exist_ok=True)
    Path(out, "README.txt").write_text(README_TEXT)
    ctx = Context(
        out=out,
        store=os.path.join(out, "cohort.zarr"),
        config={"synth": {"n_subjects": int(subjects), "shape": "full" if full else "small", "seed": seed}
                | ({"gt_fraction": gt_fraction} if gt_fraction is not None else {})},
        progress=progress,
        synthetic=True,
    )
    with _client(client, scheduler, progress=progress) as c:
        ctx.client = c
        run_stages(ctx)
        ctx.client = None
    return ctx


# --------------------------------------------------------------------------- config
KNOWN_KEYS = {"store", "manifest", "clinical", "out", "cluster", "stages", "synthetic"}


def load_config(path: str | os.PathLike) -> dict:
    """Read and check a ``thaldask run`` YAML file; relative paths are resolved against it.

    Raises
    ------
    ConfigError
        unreadable YAML, unknown keys, or a missing store path.
    """
    import yaml

    p = Path(path)
    try:
        raw = yaml.safe_load(p.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{p}: no such config file") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{p}: expected a mapping with keys {sorted(KNOWN_KEYS)}")
    unknown = sorted(set(raw) - KNOWN_KEYS)
    if unknown:
        raise ConfigError(f"{p}: unknown keys {unknown}; allowed: {sorted(KNOWN_KEYS)}")
    if not raw.get("store"):
        raise ConfigError(f"{p}: 'store' (cohort store path or URL) is required")
    stages = raw.get("stages") or {}
    if not isinstance(stages, dict):
        raise ConfigError(f"{p}: 'stages' must be a mapping of stage name to its options")
    names = {s.name for s in STAGES} | {"segment", "stats", "report"}
    bad = sorted(set(stages) - names)
    if bad:
        raise ConfigError(f"{p}: unknown stages {bad}; allowed: {sorted(names)}")

    def resolve(v):
        if v is None or "://" in str(v) or os.path.isabs(str(v)):
            return v
        return str((p.parent / str(v)).resolve())

    cfg = dict(raw)
    for key in ("store", "manifest", "clinical", "out"):
        if cfg.get(key):
            cfg[key] = resolve(cfg[key])
    if cfg.get("manifest") and not os.path.exists(cfg["manifest"]) and "://" not in cfg["manifest"]:
        raise ConfigError(f"{p}: manifest {cfg['manifest']} does not exist")
    cfg["stages"] = stages
    cfg["_path"] = str(p.resolve())
    return cfg


def run_config(config_path: str | os.PathLike, *, client=None, scheduler: str | None = None,
               cluster_file: str | os.PathLike | None = None, progress: bool = True) -> Context:
    """Run the stages a YAML config asks for, on the cluster it describes.

    See ``thaldask/data/example_config.yaml`` for every key. Stages not implemented in this
    installation are skipped with a message. ``cluster_file`` (a YAML file with a cluster
    section) replaces the config's own ``cluster:`` section; ``scheduler`` overrides both.
    """
    cfg = load_config(config_path)
    store = cfg["store"]
    out = cfg.get("out") or (str(Path(store).parent) if "://" not in store else ".")
    os.makedirs(out, exist_ok=True)
    ctx = Context(
        out=out,
        store=store,
        config={k: v for k, v in cfg["stages"].items() if k != "synth"} | {"synth": False},
        manifest=cfg.get("manifest"),
        clinical=cfg.get("clinical"),
        synthetic=bool(cfg.get("synthetic", False)),
        progress=progress,
    )
    # the file itself, so that the cluster section's relative paths resolve against it
    cluster = cfg["_path"] if cfg.get("cluster") else None
    if cluster_file is not None:
        cluster = str(cluster_file)
    with _client(client, scheduler, cluster_config=cluster, progress=progress) as c:
        ctx.client = c
        run_stages(ctx)
        ctx.client = None
    return ctx
