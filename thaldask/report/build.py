"""Assemble the HTML report: overview, agreement, clinical, harmonisation, visual QC, tables.

:func:`write_report` reads a cohort store (results dataset, statistics tables and the
per-subject numbers behind them, images and masks for QC); :func:`build_report` takes the
same inputs already in memory. Both write ``OUT/index.html`` with its figures under
``OUT/figures`` and ``OUT/qc`` and every statistics table under ``OUT/tables`` as CSV, all
linked relatively, so the folder can be zipped, moved and opened offline. The page's
sections are in :mod:`thaldask.report.sections`.
"""

from __future__ import annotations

import datetime as _dt
import time
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from thaldask._shared.paths import (
    check_may_write,
    check_writable_dir,
    is_remote,
    remove_own_file,
    write_text,
)
from thaldask.config import settings
from thaldask.errors import StoreNotFoundError
from thaldask.report.page import PAGE, esc
from thaldask.report.sections import (
    AGREEMENT_KEY_COLUMNS,
    Page,
    Progress,
    agreement_section,
    clinical_section,
    fill_figures,
    harmonisation_section,
    is_missing,
    overview_section,
    qc_section,
    resolve_figures,
    tables_section,
    truthy,
    versions,
)
from thaldask.report.style import method_colours
from thaldask.report.trial import qc_flags_section, trial_section
from thaldask.schema import STATS_TABLES
from thaldask.store import open_store

__all__ = ["write_report", "build_report", "load_stats", "stats_from_dataset", "STATS_TABLES",
           "AGREEMENT_KEY_COLUMNS"]

def load_stats(folder) -> dict[str, pd.DataFrame]:
    """Read every statistics table (``<name>.csv`` for ``name`` in :data:`STATS_TABLES`)
    found in ``folder``; absent files are absent keys."""
    out = {}
    folder = Path(folder)
    for name in STATS_TABLES:
        p = folder / f"{name}.csv"
        if p.is_file():
            out[name] = pd.read_csv(p)
    return out


def stats_from_dataset(sds: xr.Dataset) -> dict[str, pd.DataFrame]:
    """Tables of the store's ``stats`` dataset (variables ``<table>__<column>`` along
    ``<table>_row``) as DataFrames; empty strings back to missing. The dataset does not keep
    the column order: identifying columns (method, contrast, side, ...) come first."""
    out = {}
    for name in dict.fromkeys(str(v).split("__", 1)[0] for v in sds.data_vars if "__" in str(v)):
        cols = {str(v).split("__", 1)[1]: sds[v].values for v in sds.data_vars
                if str(v).startswith(f"{name}__")}
        first = [c for c in ("analysis", "outcome", "metric", "method", "contrast", "side",
                             "site", "term", "n") if c in cols]
        df = pd.DataFrame({c: cols[c] for c in [*first, *[k for k in cols if k not in first]]})
        for c in df.columns:
            if df[c].dtype == object or pd.api.types.is_string_dtype(df[c]):
                df[c] = df[c].map(lambda x: np.nan if is_missing(x) else x).astype(object)
        out[name] = df
    return out


def build_report(
    out,
    *,
    results: xr.Dataset | None,
    stats: dict[str, pd.DataFrame] | None = None,
    store=None,
    stored: xr.Dataset | None = None,
    side: str = "total",
    rng=0,
    qc_random: int = 2,
    run_info: dict | None = None,
    pipeline_config: dict | None = None,
    progress: bool = True,
    title: str = "thaldask report",
) -> Path:
    """Write the report from in-memory inputs; see :func:`write_report`.

    Parameters
    ----------
    out : str or Path
        Output folder (created).
    results : xarray.Dataset or None
        Results dataset (dims subject, timepoint, method, contrast, side).
    stats : dict of str to DataFrame, optional
        Statistics tables by name (:data:`STATS_TABLES`); missing names are absent sections.
    store : opened cohort store, optional
        Source of images and masks for visual QC (QC is absent without it).
    pipeline_config : dict, optional
        The run's configuration, shown in the overview.
    stored : xarray.Dataset, optional
        The store's ``stats`` dataset as ``thaldask stats`` wrote it: besides the tables it
        holds the per-subject annualised change (``annualised_change_pct``) and the
        ComBat-harmonised volumes (``harmonised_volume_mm3``) that the tables summarise.
        The annualised-change figure and the harmonised site distributions draw these;
        without them those figures are absent (nothing is recomputed).
    rng : int or numpy.random.Generator
        Seeds the random QC sample and the jitter of points.

    Returns
    -------
    Path
        ``out/index.html``.
    """
    t0 = time.perf_counter()
    out = Path(out)
    check_may_write(out / "index.html")  # never replace a page thaldask did not write
    for sub, pattern in (("figures", "*.png"), ("qc", "*.png"), ("tables", "*.csv")):
        (out / sub).mkdir(parents=True, exist_ok=True)
        for old in (out / sub).glob(pattern):  # no stale figure or table of an earlier run;
            remove_own_file(old)  # a file thaldask did not write stays
    stats = {k: v for k, v in (stats or {}).items() if v is not None}
    stats = {k: stats[k] for k in [*STATS_TABLES, *sorted(set(stats) - set(STATS_TABLES))] if k in stats}
    for name, df in stats.items():
        write_text(out / "tables" / f"{name}.csv", df.to_csv(index=False))
    page = Page(out)
    if results is not None and "method" in results.dims:
        page.colours = method_colours([str(m) for m in results["method"].values])
    config = {"thaldask": settings()}
    if results is not None and "config" in results.attrs:
        config["results"] = results.attrs["config"]
    if pipeline_config:
        config["pipeline"] = pipeline_config
    scans = store.scans if store is not None else None
    store_info = {"store": str(store.path)} if store is not None else {}
    prog = Progress(total=4 + 3 + 1 + 1 + 3, enabled=progress)
    rng = np.random.default_rng(rng)
    try:
        # visual QC first: its montages render on the cluster's workers (when there is one)
        # while the other figures are drawn here
        qc_html = qc_section(page, store, results, prog, rng, qc_random, side)
        flags_html = qc_flags_section(page, store, stats, prog)
        sections = [
            ("agreement", "Agreement with ground truth", agreement_section(page, results, stats, prog, side)),
            ("clinical", "Clinical associations",
             clinical_section(page, results, stats, prog, side, rng, stored)),
            ("harmonisation", "Harmonisation", harmonisation_section(page, results, stats, prog, stored, side)),
            ("trial", "Which method for a trial?", trial_section(page, stats, stored, prog, side)),
            ("qc-flags", "QC flags", flags_html),
            ("qc", "Visual QC", qc_html),
            ("tables", "Tables", tables_section(page, stats)),
        ]
        filled = resolve_figures(page, prog)
        sections = [(sid, t, fill_figures(h, filled)) for sid, t, h in sections]
    finally:
        prog.close()
    run = dict(run_info or {})
    run["report render time"] = f"{time.perf_counter() - t0:.1f} s"
    overview = overview_section(page, results, scans, store_info, stats, run, config)
    sections.insert(0, ("overview", "Overview", overview))
    synthetic = results is not None and truthy(results.attrs.get("synthetic", False))
    banner = ('<div class="banner" id="synthetic-banner">SYNTHETIC DATA — every image, mask and '
              "clinical value in this report was simulated by <code>thaldask synth</code>; "
              "nothing here describes real patients.</div>") if synthetic else ""
    nav = "".join(f'<a href="#{sid}">{esc(t)}</a>' for sid, t, _ in sections)
    body = "\n".join(f'<section id="{sid}"><h2>{esc(t)}</h2>\n{h}\n</section>' for sid, t, h in sections)
    n_sub = results.sizes.get("subject", 0) if results is not None else (scans["subject"].nunique() if scans is not None else 0)
    subtitle = f"Thalamus segmentation benchmark · {n_sub} subjects" + (" · synthetic data" if synthetic else "")
    html_text = PAGE.substitute(
        title=esc(title), subtitle=esc(subtitle), banner=banner, nav=nav, sections=body,
        footer=esc(f"thaldask {versions()['thaldask']} · generated "
                   f"{_dt.datetime.now(_dt.timezone.utc):%Y-%m-%d %H:%M} UTC"),
    )
    index = out / "index.html"
    write_text(index, html_text)
    return index


def write_report(
    store,
    out,
    *,
    stats_dir=None,
    side: str = "total",
    rng=0,
    qc_random: int = 2,
    run_info: dict | None = None,
    pipeline_config: dict | None = None,
    progress: bool = True,
) -> Path:
    """Write the HTML report of a cohort store to ``out/index.html``.

    Parameters
    ----------
    store : str, Path or opened cohort store
        Holds the results dataset (``thaldask evaluate``), the ``stats`` dataset
        (``thaldask stats``: tables, per-subject annualised change, harmonised volumes) and
        the images and masks drawn for visual QC.
    out : str or Path
        Output folder; figures (PNG) and tables (CSV) are written beside ``index.html``.
    stats_dir : str or Path, optional
        Folder of the statistics CSVs (``agreement.csv``, ...); default: the CSVs inside
        the store folder if there are any, else the tables of the store's
        ``stats`` dataset (e.g. for an object-store URL). The per-subject figures
        (annualised change, harmonised site distributions) draw the store's stats dataset
        only when the tables are its own (read from it, or CSVs equal to it, wherever they
        are); with other tables they are absent.
    side : {"total", "left", "right"}
        Thalamus side drawn in the figures (tables show every side they hold).
    rng : int or numpy.random.Generator
        Seeds the random visual-QC sample.
    qc_random : int
        Random scans shown per method × contrast besides best, median and worst.
    run_info : dict, optional
        Extra provenance shown in the overview (e.g. pipeline stage timings).
    pipeline_config : dict, optional
        The configuration of the run (e.g. ``thaldask run``'s stage sections), shown in the
        overview's configuration.
    progress : bool
        Show a progress bar on stderr while figures render.

    Returns
    -------
    Path
        The written ``index.html``. Sections whose inputs are absent say so.
    """
    check_writable_dir(out)  # a bad output folder fails before any figure is drawn
    check_may_write(Path(out) / "index.html")
    st = open_store(store) if isinstance(store, (str, Path)) else store
    try:
        ds = st.open_results()
    except StoreNotFoundError:
        ds = None
    try:
        sds = st.open_results("stats")
    except StoreNotFoundError:  # no statistics yet: the sections say so
        sds = None
    stats, source, stored = {}, None, None
    local = not is_remote(st.path)
    if stats_dir is not None:
        stats, source = load_stats(stats_dir), f"CSV files in {stats_dir}"
        if stats and sds is not None and same_tables(stats, stats_from_dataset(sds)):
            stored, source = sds, source + " (also in the store's stats dataset)"
    elif local and load_stats(Path(str(st.path)).resolve()):
        folder = Path(str(st.path)).resolve()
        stats, source = load_stats(folder), f"CSV files in {folder}"
        if sds is not None and same_tables(stats, stats_from_dataset(sds)):
            stored, source = sds, source + " (also in the store's stats dataset)"
    elif sds is not None:  # e.g. an object-store URL: the tables stored in the store itself
        stats, source, stored = stats_from_dataset(sds), "the store's stats dataset", sds
    run_info = {**({"statistics from": source} if stats else {}), **(run_info or {})}
    return build_report(out, results=ds, stats=stats, store=st, stored=stored, side=side,
                        rng=rng, qc_random=qc_random, run_info=run_info,
                        pipeline_config=pipeline_config, progress=progress)


def same_tables(a: dict[str, pd.DataFrame], b: dict[str, pd.DataFrame]) -> bool:
    """Whether two sets of statistics tables hold the same tables with the same values
    (columns compared by name; numbers to 1e-12 relative, missing equal to missing): CSV
    files inside a store were written by the same ``thaldask stats`` run as its stats
    dataset."""
    if set(a) != set(b):
        return False
    for name, x in a.items():
        y = b[name]
        if len(x) != len(y) or set(x.columns) != set(y.columns):
            return False
        for c in x.columns:
            u, v = x[c].reset_index(drop=True), y[c].reset_index(drop=True)
            un, vn = pd.to_numeric(u, errors="coerce"), pd.to_numeric(v, errors="coerce")
            if un.notna().sum() == u.notna().sum() and vn.notna().sum() == v.notna().sum():
                if not np.allclose(un.to_numpy(float), vn.to_numpy(float), rtol=1e-12, atol=0,
                                   equal_nan=True):
                    return False
            elif [str(t) for t in u.map(lambda t: "" if is_missing(t) else t)] != [
                    str(t) for t in v.map(lambda t: "" if is_missing(t) else t)]:
                return False
    return True
