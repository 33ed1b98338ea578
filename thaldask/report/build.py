"""Assemble the HTML report: overview, agreement, clinical, harmonisation, visual QC, tables.

:func:`write_report` reads a cohort store (results dataset, statistics tables, images and
masks for QC); :func:`build_report` takes the same inputs already in memory. Both write
``OUT/index.html`` with its figures under ``OUT/figures`` and ``OUT/qc`` and every statistics
table under ``OUT/tables`` as CSV, all linked relatively, so the folder can be zipped,
moved and opened offline.
"""

from __future__ import annotations

import datetime as _dt
import json
import platform
import time
import warnings
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from thaldask.report import figures as F
from thaldask.schema import STATS_TABLES
from thaldask.report.page import PAGE, absent_html, esc, figure_html, table_html
from thaldask.report.style import save

__all__ = ["write_report", "build_report", "load_stats", "stats_from_dataset", "STATS_TABLES"]

SOFTWARE = ("thaldask", "numpy", "scipy", "pandas", "xarray", "dask", "distributed", "zarr",
            "nibabel", "statsmodels", "torch", "matplotlib")
AGREEMENT_KEY_COLUMNS = (
    "method", "contrast", "side", "n", "dice_mean", "dice_sd", "sensitivity_mean",
    "precision_mean", "bias_mm3", "bias_mm3_ci_lower", "bias_mm3_ci_upper", "loa_lower_mm3",
    "loa_upper_mm3", "prop_bias_slope", "prop_bias_p", "icc_a1", "ccc",
)


@dataclass
class _Page:
    out: Path
    sections: list[tuple[str, str, str]] = field(default_factory=list)  # (id, title, html)
    figures: list[str] = field(default_factory=list)
    colours: dict = field(default_factory=dict)  # method -> colour, the same in every figure


def _is_missing(v) -> bool:
    if v is None:
        return True
    if isinstance(v, float) and np.isnan(v):
        return True
    return isinstance(v, str) and v.strip().lower() in ("", "nan", "none", "null")


def _truthy(v) -> bool:
    if isinstance(v, str):
        return v.strip().lower() in ("true", "1", "yes")
    try:
        return bool(v)
    except (TypeError, ValueError):
        return False


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
                df[c] = df[c].map(lambda x: np.nan if _is_missing(x) else x).astype(object)
        out[name] = df
    return out


def _versions() -> dict[str, str]:
    v = {"python": platform.python_version()}
    for pkg in SOFTWARE:
        try:
            v[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            v[pkg] = "not installed"
    v["platform"] = f"{platform.system()} {platform.release()} ({platform.machine()})"
    return v


def _kv_table(d: dict) -> str:
    rows = "".join(f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in d.items())
    return f'<table class="kv">{rows}</table>'


def _counts(values) -> dict[str, int]:
    s = pd.Series([v for v in values if not _is_missing(v)], dtype=object)
    return {str(k): int(n) for k, n in s.value_counts().sort_index().items()}


def _first_per_subject(da: xr.DataArray) -> np.ndarray:
    """One value per subject (first non-missing over timepoints) of a (subject, timepoint) var."""
    arr = np.asarray(da.transpose("subject", "timepoint").values, dtype=object)
    out = []
    for row in arr:
        vals = [v for v in row if not _is_missing(v)]
        out.append(vals[0] if vals else None)
    return np.asarray(out, dtype=object)


class _Progress:
    """A rich progress bar on stderr over the report's figures (silent when disabled)."""

    def __init__(self, total: int, enabled: bool):
        self.enabled = enabled
        if enabled:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

            self.bar = Progress(TextColumn("report"), BarColumn(), MofNCompleteColumn(),
                                TextColumn("{task.description}"),
                                console=Console(stderr=True), transient=False)
            self.bar.start()
            self.task = self.bar.add_task("", total=total)

    def step(self, what: str):
        if self.enabled:
            self.bar.update(self.task, advance=1, description=what)

    def add(self, n: int):
        if self.enabled:
            self.bar.update(self.task, total=(self.bar.tasks[0].total or 0) + n)

    def close(self):
        if self.enabled:
            self.bar.stop()


def _save_figure(page: _Page, fig, name: str, caption: str, progress: _Progress, *,
                 absent: str, sub: str = "figures") -> str:
    progress.step(name)
    if fig is None:
        return absent_html(absent)
    rel = f"{sub}/{name}.png"
    save(fig, page.out / rel)
    page.figures.append(rel)
    return figure_html(rel, caption)


def _note(df: pd.DataFrame | None) -> str | None:
    """The reason given by a table the statistics stage could not compute (a one-row table
    with a ``note`` column and no estimates), else None."""
    if df is None or "note" not in df or len(df) != 1 or "method" in df:
        return None
    return str(df["note"].iloc[0])


def _table_block(page: _Page, name: str, df: pd.DataFrame | None, *, caption: str,
                 columns=None) -> str:
    """HTML table (optionally only ``columns``) with a link to the full CSV."""
    if df is None:
        return absent_html(f"No {name}.csv: the statistics stage did not produce this table.")
    if df.empty:
        return absent_html(f"{name}.csv is empty (nothing could be estimated on these data).")
    note = _note(df)
    if note is not None:
        return absent_html(f"{name}: {note}") + (
            f'<p class="download"><a href="tables/{esc(name)}.csv" download>download '
            f"{esc(name)}.csv</a></p>")
    shown = df if columns is None else df[[c for c in columns if c in df.columns]]
    link = (f'<p class="download"><a href="tables/{esc(name)}.csv" download>download '
            f"{esc(name)}.csv</a> ({len(df)} rows × {len(df.columns)} columns)</p>")
    return table_html(shown, table_id=f"section-{name}" + ("-key" if columns else ""),
                      caption=caption) + link


# ---------------------------------------------------------------------------- sections
def _overview(page, ds, scans, store_info, stats, run_info, config) -> str:
    parts = []
    cohort = {}
    if ds is not None:
        cohort["subjects"] = ds.sizes.get("subject", 0)
        tps = [str(t) for t in ds["timepoint"].values] if "timepoint" in ds.dims else []
        if "volume_mm3" in ds:
            any_vol = np.isfinite(ds["volume_mm3"]).any([d for d in ds["volume_mm3"].dims
                                                         if d not in ("subject", "timepoint")])
            per_tp = {t: int(any_vol.sel(timepoint=t).sum()) for t in tps}
            cohort["scans with a segmentation"] = int(any_vol.sum())
            cohort["timepoints"] = ", ".join(f"{t} ({n} scans)" for t, n in per_tp.items())
        else:
            cohort["timepoints"] = ", ".join(tps)
        for var, label in (("site", "sites"), ("group", "groups (subjects)")):
            if var in ds:
                c = _counts(_first_per_subject(ds[var]))
                cohort[label] = ", ".join(f"{k}: {n}" for k, n in c.items()) or "–"
    elif scans is not None:
        cohort["subjects"] = scans["subject"].nunique()
        cohort["scans"] = len(scans)
        cohort["timepoints"] = ", ".join(f"{k} ({n} scans)" for k, n in _counts(scans["timepoint"]).items())
        cohort["sites"] = ", ".join(f"{k}: {n}" for k, n in _counts(scans["site"]).items())
    if cohort:
        parts.append("<h3>Cohort</h3>" + _kv_table(cohort))
    else:
        parts.append(absent_html("No cohort information: neither a results dataset nor a store was given."))

    if ds is not None and "volume_mm3" in ds:
        tot = ds.sel(side="total") if "side" in ds.dims else ds
        has_vol = np.isfinite(tot["volume_mm3"]).sum(["subject", "timepoint"]).to_pandas()
        has_dice = (np.isfinite(tot["dice"]).sum(["subject", "timepoint"]).to_pandas()
                    if "dice" in tot else has_vol * 0)
        grid = has_vol.astype(int).astype(str) + " / " + has_dice.astype(int).astype(str)
        grid = grid.where(has_vol > 0, "–")
        grid.index.name = "method \\ contrast"
        parts.append("<h3>Methods × contrasts</h3><p>Cells: scans segmented / scans evaluated "
                     "against ground truth (–: combination not run).</p>"
                     + table_html(grid, table_id="methods-contrasts", index=True))
        if "gt_volume_mm3" in tot:
            gt = np.isfinite(tot["gt_volume_mm3"])
            per_tp = {str(t): int(gt.sel(timepoint=t).sum()) for t in tot["timepoint"].values}
            txt = (f"{int(gt.any('timepoint').sum())} subjects, {int(gt.sum())} scans have manual "
                   f"ground truth (" + ", ".join(f"{t}: {n}" for t, n in per_tp.items()) + ").")
            if int(gt.sum()) == 0:
                txt = "No scan has ground truth: agreement figures and tables are absent."
            parts.append(f"<h3>Ground truth</h3><p>{esc(txt)}</p>")
    elif ds is None:
        parts.append(absent_html("No results dataset in the store: run `thaldask evaluate STORE` "
                                 "to compute volumes and agreement metrics."))

    if stats:
        try:
            from thaldask.stats import headline_findings

            lines = headline_findings(stats)
        except Exception:  # noqa: BLE001 - tables of another shape: no headline list
            lines = []
        if lines:
            parts.insert(0, "<h3>Headline findings</h3><ul>"
                         + "".join(f"<li>{esc(x)}</li>" for x in lines) + "</ul>")
    prov = {}
    if ds is not None:
        for k in ("created", "thaldask_version", "store", "gt_contrasts", "gt_rule", "empty_rule"):
            if k in ds.attrs:
                v = ds.attrs[k]
                prov[f"results {k}"] = ", ".join(map(str, v)) if isinstance(v, (list, tuple)) else v
    prov.update({k: v for k, v in (store_info or {}).items()})
    prov["statistics tables"] = ", ".join(stats) if stats else "none found"
    prov["report generated"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    if run_info:
        prov.update({str(k): v for k, v in run_info.items()})
    parts.append("<h3>Provenance and run time</h3>" + _kv_table(prov))
    parts.append("<h3>Software</h3>" + _kv_table(_versions()))
    parts.append("<h3>Configuration</h3><details><summary>thaldask settings (dask.config "
                 "namespace <code>thaldask</code>)" + (" and the run's configuration"
                 if "pipeline" in config else "") + "</summary><pre>"
                 + esc(json.dumps(config, indent=2, default=str)) + "</pre></details>")
    return "\n".join(parts)


def _agreement(page, ds, stats, progress, side) -> str:
    ag = stats.get("agreement")
    parts = []
    has_gt = ds is not None and "dice" in ds and bool(np.isfinite(ds["dice"]).any())
    if ds is None:
        parts.append(absent_html("No results dataset: agreement with ground truth cannot be shown."))
        progress.step("agreement (absent)")
        progress.step("")
        progress.step("")
        progress.step("")
    elif not has_gt:
        parts.append(absent_html("No scan has both a ground-truth mask and a method mask: "
                                 "agreement figures are absent."))
        for _ in range(4):
            progress.step("agreement (absent)")
    else:
        parts.append(_save_figure(
            page, F.plot_metric_distributions(ds, side=side, colours=page.colours), "agreement_distributions",
            "Dice, sensitivity and precision of every scan with ground truth, per method × "
            "contrast (boxes: median and quartiles, whiskers: 1.5 IQR, points: scans).",
            progress, absent="No overlap metric has a finite value."))
        parts.append(_save_figure(
            page, F.plot_precision_sensitivity(ds, side=side, colours=page.colours), "precision_sensitivity",
            "Precision against sensitivity per scan (small markers) and per method × contrast "
            "mean (large). Below the diagonal: over-segmentation (low precision); above it: "
            "under-segmentation.", progress, absent="No scan has both sensitivity and precision."))
        parts.append(_save_figure(
            page, F.plot_volume_vs_gt(ds, side=side, colours=page.colours), "volume_vs_gt",
            "Thalamic volume of each method against the ground-truth volume (mm³), one panel per "
            "contrast; dashed: identity.", progress,
            absent="No scan has both a method and a ground-truth volume."))
        parts.append(_save_figure(
            page, F.plot_bland_altman(ds, ag, side=side, colours=page.colours), "bland_altman",
            "Bland–Altman plots (method − GT volume against their mean, mm³) on each subject's "
            "earliest scan with ground truth: bias (solid), 95 % limits of agreement (dashed), "
            "proportional-bias regression (dash-dot) and, where it is significant, "
            "regression-based limits (dotted). Values from agreement.csv.", progress,
            absent="Fewer than two subjects with ground truth per method: no Bland–Altman plot."))
    parts.append("<h3>Agreement table (key columns)</h3>" + _table_block(
        page, "agreement", ag, caption="Agreement with ground truth (selected columns; all "
        "columns, with CIs, in the CSV and the Tables section)", columns=AGREEMENT_KEY_COLUMNS))
    parts.append("<h3>Method comparison</h3>" + _table_block(
        page, "method_comparison", stats.get("method_comparison"),
        caption="Paired comparison of methods (Friedman, pairwise Wilcoxon with Holm correction)"))
    return "\n".join(parts)


def _clinical(page, ds, stats, progress, side, rng, harmonised=None) -> str:
    parts = ["<h3>Cross-sectional associations</h3>"]
    cc = stats.get("clinical_cross")
    est = "beta_std"
    if cc is None:
        parts.append(absent_html("No clinical_cross.csv: run `thaldask stats STORE` with a "
                                 "clinical table to estimate clinical associations."))
        progress.step("forest (absent)")
    else:
        parts.append(_save_figure(
            page, F.plot_forest(cc, estimate=est, side=side, colours=page.colours), "forest_clinical",
            "Standardised β of thalamic volume (adjusted for head size and covariates) for each "
            "clinical outcome, per method × contrast; lines: 95 % CIs; dashed: no association.",
            progress, absent=_note(cc) or "clinical_cross.csv holds no finite standardised beta."))
        parts.append(_table_block(page, "clinical_cross", cc,
                                  caption="Cross-sectional clinical associations"))
    parts.append("<h3>Longitudinal</h3>")
    lg = stats.get("longitudinal")
    if lg is None:
        parts.append(absent_html("No longitudinal.csv: longitudinal models need follow-up scans "
                                 "and the statistics stage."))
        progress.step("odds ratios (absent)")
    else:
        parts.append(_save_figure(
            page, F.plot_odds_ratios(lg, side=side, colours=page.colours), "odds_ratios",
            "Odds ratio of EDSS worsening per 1 %/year of annualised thalamic volume change "
            "(logistic regression with covariates), per method × contrast; lines: 95 % CIs; "
            "dashed: OR = 1.", progress,
            absent=_note(lg) or "longitudinal.csv holds no finite odds ratio (too few EDSS "
            "worsening events to fit the logistic model)."))
        parts.append(_table_block(page, "longitudinal", lg, caption="Longitudinal models"))
    parts.append("<h3>Annualised change by group</h3>")
    # the statistics stage models harmonised volumes when ComBat ran: draw the same ones
    used_harm = (lg is not None and "harmonised" in lg and len(lg)
                 and lg["harmonised"].map(_truthy).all() and harmonised is not None
                 and "volume_mm3_raw" in harmonised)
    vols = harmonised if used_harm else ds
    parts.append(_save_figure(
        page, F.plot_annualised_change(vols, side=side, rng=rng, longitudinal=lg)
        if vols is not None else None,
        "annualised_change",
        "Annualised thalamic volume change (% per year, baseline to last follow-up) per "
        "subject, by clinical group, per method × contrast"
        + (", from ComBat-harmonised volumes as in the longitudinal models" if used_harm else "")
        + "; black diamonds and lines: group means with 95 % CIs from longitudinal.csv "
        "(where present).", progress,
        absent="No results dataset: no volumes to compare over time." if vols is None else
        "No subject has a follow-up scan with years_since_baseline > 0: no annualised change."))
    return "\n".join(parts)


def _site_frame(ds: xr.Dataset, var: str, side: str = "total") -> pd.DataFrame | None:
    """Tidy (subject, timepoint, site, method, contrast, volume_mm3) of ``var`` on ``side``."""
    if ds is None or var not in ds or "site" not in ds:
        return None
    tot = ds.sel(side=side) if "side" in ds.dims else ds
    df = tot[var].to_dataframe(name="volume_mm3").reset_index()
    site = tot["site"].to_dataframe(name="site").reset_index()
    df = df.merge(site, on=["subject", "timepoint"], how="left")
    df = df[np.isfinite(df["volume_mm3"]) & ~df["site"].map(_is_missing)]
    return df[["subject", "timepoint", "site", "method", "contrast", "volume_mm3"]]


def _harmonisation(page, ds, stats, progress, harmonised, side="total") -> str:
    """Site distributions before/after. ``harmonised``: the dataset returned by
    ``thaldask.stats.harmonise`` (harmonised ``volume_mm3``, original ``volume_mm3_raw``)."""
    parts = []
    after = None
    if harmonised is not None and "volume_mm3_raw" in harmonised:
        before = _site_frame(harmonised, "volume_mm3_raw", side)
        after = _site_frame(harmonised, "volume_mm3", side)
    else:
        before = _site_frame(ds, "volume_mm3", side)
    if ds is None:
        parts.append(absent_html("No results dataset: no volumes to compare across sites."))
        progress.step("harmonisation (absent)")
    elif before is None or before["site"].nunique() < 2:
        parts.append(absent_html("Single-site cohort (or no site recorded): no harmonisation "
                                 "needed, nothing to compare across sites."))
        progress.step("harmonisation (absent)")
    else:
        if after is None:
            parts.append(absent_html("No harmonised volumes (ComBat did not run or could not be "
                                     "reproduced; see the harmonisation table): the distributions "
                                     "below are before harmonisation only."))
        parts.append(_save_figure(
            page, F.plot_site_distributions(before, after), "site_distributions",
            f"Thalamic volume ({side}, mm³) per acquisition site, per method × contrast"
            + (", before (hatched, pale) and after (solid) ComBat harmonisation"
               + (f" ({harmonised.attrs['harmonised_by']})" if "harmonised_by" in harmonised.attrs else "")
               + "." if after is not None else " (raw volumes)."),
            progress, absent="No volumes to compare across sites."))
    parts.append(_table_block(page, "harmonisation", stats.get("harmonisation"),
                              caption="Harmonisation (ComBat): per-site location/scale estimates "
                              "and the site F-test before and after"))
    return "\n".join(parts)


def _qc(page, st, ds, progress, rng, n_random, side) -> str:
    from thaldask.report.qc import (
        _gt_for,
        _image_contrast,
        _scan_index,
        plot_scan_qc,
        select_qc_cases,
    )

    if st is None:
        progress.step("qc (absent)")
        return absent_html("No cohort store given: images and masks for visual QC are unavailable.")
    if ds is None or "volume_mm3" not in ds:
        progress.step("qc (absent)")
        return absent_html("No results dataset: scans cannot be ranked for visual QC.")
    rng = np.random.default_rng(rng)
    combos = [(m, c) for m, c in F.metric_combos(ds, "volume_mm3", side=side)
              if (m, c) in st.methods]
    if not combos:
        progress.step("qc (absent)")
        return absent_html("No method mask in the store matches the results dataset.")
    progress.add(len(combos) - 1)
    parts = ["<p>Per method × contrast: the best, median and worst Dice scans and a random "
             "sample (random only where there is no ground truth). Method contours solid sky "
             "blue, ground truth dashed yellow; axial, coronal and sagittal planes through the "
             "thalamus, cropped around it. One montage per scan: <code>thaldask qc STORE "
             "--subject S</code>.</p>"]
    for m, c in combos:
        cases = select_qc_cases(ds, m, c, n_random=n_random, rng=rng, side=side)
        ic = _image_contrast(st, c)
        rows, images, gts, spacings, shown = [], [], [], [], []
        for case in cases.itertuples(index=False):
            i = _scan_index(st, case.subject, case.timepoint)
            if i is None or ic is None or not bool(st.has_mask(m, c)[i]) or not bool(st.has_image(ic)[i]):
                continue
            d = "" if np.isnan(case.dice) else f"\nDice {case.dice:.3f}"
            rows.append((f"{case.case}: {case.subject}\n{case.timepoint}{d}", st.load_mask(m, c, i)))
            images.append(st.load_image(ic, i))
            gts.append(_gt_for(st, c, i))
            spacings.append(st.spacing[i])
            shown.append(f"{case.case} {case.subject}/{case.timepoint}")
        name = F._label(m, c)
        fig = (plot_scan_qc(images[0], rows, images=images, gts=gts, spacings=spacings,
                            title=f"{name} · image {ic}") if rows else None)
        parts.append(f"<h3>{esc(name)}</h3>" + _save_figure(
            page, fig, f"qc_{_safe(m)}_{_safe(c)}",
            f"Visual QC of {name} on the {ic} image: " + "; ".join(shown) + ".",
            progress, absent="No stored scan of this method × contrast to show.", sub="qc"))
    return "\n".join(parts)


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in str(name))


def _tables(page, stats) -> str:
    if not stats:
        return absent_html("No statistics tables found: run `thaldask stats STORE` first.")
    parts = ["<p>Every table of the statistics stage, in full; each downloadable as CSV.</p>"]
    for name, df in stats.items():
        parts.append(f"<h3>{esc(name)}</h3>")
        parts.append(f'<p class="download"><a href="tables/{esc(name)}.csv" download>download '
                     f"{esc(name)}.csv</a> ({len(df)} rows × {len(df.columns)} columns)</p>")
        if df.empty:
            parts.append(absent_html(f"{name}.csv is empty."))
        else:
            parts.append(table_html(df, table_id=f"table-{name}", collapse_over=0))
    return "\n".join(parts)


# ---------------------------------------------------------------------------- entry points
def build_report(
    out,
    *,
    results: xr.Dataset | None,
    stats: dict[str, pd.DataFrame] | None = None,
    store=None,
    harmonised: xr.Dataset | None = None,
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
    harmonised : xarray.Dataset, optional
        Output of ``thaldask.stats.harmonise``: harmonised ``volume_mm3`` and the original
        ``volume_mm3_raw`` (with ``site``).
    rng : int or numpy.random.Generator
        Seeds the random QC sample and the jitter of points.

    Returns
    -------
    Path
        ``out/index.html``.
    """
    t0 = time.perf_counter()
    out = Path(out)
    for sub, pattern in (("figures", "*.png"), ("qc", "*.png"), ("tables", "*.csv")):
        (out / sub).mkdir(parents=True, exist_ok=True)
        for old in (out / sub).glob(pattern):  # a re-run leaves no stale figure or table
            old.unlink()
    stats = {k: v for k, v in (stats or {}).items() if v is not None}
    stats = {k: stats[k] for k in [*STATS_TABLES, *sorted(set(stats) - set(STATS_TABLES))] if k in stats}
    for name, df in stats.items():
        df.to_csv(out / "tables" / f"{name}.csv", index=False)
    page = _Page(out)
    if results is not None and "method" in results.dims:
        from thaldask.report.style import method_colours

        page.colours = method_colours([str(m) for m in results["method"].values])
    import dask.config

    config = {"thaldask": dask.config.get("thaldask", {})}
    if results is not None and "config" in results.attrs:
        config["results"] = results.attrs["config"]
    if pipeline_config:
        config["pipeline"] = pipeline_config
    scans = store.scans if store is not None else None
    store_info = {"store": str(store.path)} if store is not None else {}
    prog = _Progress(total=4 + 3 + 1 + 1, enabled=progress)
    rng = np.random.default_rng(rng)
    try:
        sections = [
            ("agreement", "Agreement with ground truth", _agreement(page, results, stats, prog, side)),
            ("clinical", "Clinical associations",
             _clinical(page, results, stats, prog, side, rng, harmonised)),
            ("harmonisation", "Harmonisation", _harmonisation(page, results, stats, prog, harmonised, side)),
            ("qc", "Visual QC", _qc(page, store, results, prog, rng, qc_random, side)),
            ("tables", "Tables", _tables(page, stats)),
        ]
    finally:
        prog.close()
    run = dict(run_info or {})
    run["report render time"] = f"{time.perf_counter() - t0:.1f} s"
    overview = _overview(page, results, scans, store_info, stats, run, config)
    sections.insert(0, ("overview", "Overview", overview))
    synthetic = results is not None and _truthy(results.attrs.get("synthetic", False))
    banner = ('<div class="banner" id="synthetic-banner">SYNTHETIC DATA — every image, mask and '
              "clinical value in this report was simulated by <code>thaldask synth</code>; "
              "nothing here describes real patients.</div>") if synthetic else ""
    nav = "".join(f'<a href="#{sid}">{esc(t)}</a>' for sid, t, _ in sections)
    body = "\n".join(f'<section id="{sid}"><h2>{esc(t)}</h2>\n{h}\n</section>' for sid, t, h in sections)
    n_sub = results.sizes.get("subject", 0) if results is not None else (scans["subject"].nunique() if scans is not None else 0)
    subtitle = f"Thalamus segmentation benchmark · {n_sub} subjects" + (" · synthetic data" if synthetic else "")
    html_text = PAGE.substitute(
        title=esc(title), subtitle=esc(subtitle), banner=banner, nav=nav, sections=body,
        footer=esc(f"thaldask {_versions()['thaldask']} · generated "
                   f"{_dt.datetime.now(_dt.timezone.utc):%Y-%m-%d %H:%M} UTC"),
    )
    index = out / "index.html"
    index.write_text(html_text, encoding="utf-8")
    return index


def write_report(
    store,
    out,
    *,
    stats_dir=None,
    stats_config: dict | None = None,
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
        Holds the results dataset (``thaldask evaluate``), optionally the harmonised volumes,
        and the images and masks drawn for visual QC.
    out : str or Path
        Output folder; figures (PNG) and tables (CSV) are written beside ``index.html``.
    stats_dir : str or Path, optional
        Folder of the statistics CSVs (``agreement.csv``, ...); default: the CSVs in the
        folder that holds the store if there are any, else the tables of the store's
        ``stats`` dataset (e.g. for an object-store URL).
    stats_config : dict, optional
        The statistics stage's options (its ComBat settings reproduce the harmonised
        volumes for the site figure when the store does not hold them).
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
    from thaldask.errors import StoreNotFoundError
    from thaldask.store import open_store

    st = open_store(store) if isinstance(store, (str, Path)) else store
    try:
        ds = st.open_results()
    except StoreNotFoundError:
        ds = None
    stats, source = {}, None
    local = "://" not in str(st.path)
    if stats_dir is not None:
        stats, source = load_stats(stats_dir), f"CSV files in {stats_dir}"
    elif local and load_stats(Path(str(st.path)).resolve().parent):
        folder = Path(str(st.path)).resolve().parent
        stats, source = load_stats(folder), f"CSV files in {folder} (also in the store's stats dataset)"
    else:  # e.g. an object-store URL: the tables stored in the store itself
        try:
            stats, source = stats_from_dataset(st.open_results("stats")), "the store's stats dataset"
        except Exception:  # noqa: BLE001 - no statistics yet: the sections say so
            stats = {}
    harmonised = _harmonised(st, ds, stats, stats_config)
    run_info = {**({"statistics from": source} if stats else {}), **(run_info or {})}
    return build_report(out, results=ds, stats=stats, store=st, harmonised=harmonised, side=side,
                        rng=rng,
                        qc_random=qc_random, run_info=run_info,
                        pipeline_config=pipeline_config, progress=progress)


def _harmonised(st, ds, stats, stats_config=None) -> xr.Dataset | None:
    """Harmonised volumes (``volume_mm3``, original in ``volume_mm3_raw``).

    From the store when the statistics stage stored them; else, when the harmonisation table
    shows that ComBat ran, recomputed with ``thaldask.stats.harmonise`` (the ComBat settings
    of ``stats_config``, else the defaults) and kept only if the recomputed per-site
    estimates (``gamma_star``, ``delta_star``) equal the table's, i.e. the same model.
    """
    for name in ("harmonised", "stats"):
        try:
            sds = st.open_results(name)
        except Exception:  # noqa: BLE001 - absent: try the next source
            continue
        if "volume_mm3_raw" in sds and "volume_mm3" in sds:
            return sds
    h = stats.get("harmonisation")
    if ds is None or h is None or "harmonised" not in h or not h["harmonised"].map(_truthy).any():
        return None
    try:
        from thaldask.stats import harmonise
        from thaldask.stats.run import DEFAULTS
    except ImportError:
        return None
    candidates = [dict(DEFAULTS["combat"])]
    if stats_config and isinstance(stats_config.get("combat"), dict):
        candidates.insert(0, {**DEFAULTS["combat"], **stats_config["combat"]})
    for cb in candidates:
        try:
            with warnings.catch_warnings():  # the stats stage already reported small sites
                warnings.simplefilter("ignore")
                out, table = harmonise(ds, protect=cb["protect"], eb=cb["eb"],
                                       mean_only=cb["mean_only"], min_site_size=cb["min_site_size"])
        except Exception:  # noqa: BLE001 - these settings do not fit: try the next
            continue
        if _same_estimates(h, table):
            out.attrs["harmonised_by"] = ("recomputed for the report; per-site ComBat estimates "
                                          "identical to harmonisation.csv")
            return out
    return None


def _same_estimates(stored: pd.DataFrame, recomputed: pd.DataFrame) -> bool:
    keys = [k for k in ("method", "contrast", "side", "site") if k in stored and k in recomputed]
    cols = [c for c in ("gamma_star", "delta_star") if c in stored and c in recomputed]
    if not keys or not cols or len(stored) != len(recomputed):
        return False
    a = stored.astype({k: str for k in keys}).set_index(keys).sort_index()[cols]
    b = recomputed.astype({k: str for k in keys}).set_index(keys).sort_index()[cols]
    if not a.index.equals(b.index):
        return False
    x, y = a.to_numpy(float), b.to_numpy(float)
    return bool(np.allclose(x, y, rtol=1e-6, atol=1e-9, equal_nan=True))
