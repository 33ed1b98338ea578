"""The sections of the HTML report (overview, agreement, clinical, harmonisation, visual
QC, tables) and the helpers they share; :mod:`thaldask.report.build` assembles the page.

Every section function takes the page being built, the inputs it draws and the progress
bar, writes its figures under the page's folder and returns its HTML. A section whose inputs
are absent says so (``absent_html``) instead of drawing an empty figure. Figures draw what
the statistics stage computed and stored; nothing here recomputes a statistic.
"""

from __future__ import annotations

import datetime as _dt
import json
import platform
import uuid
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr
from dask.sizeof import sizeof

from thaldask import config
from thaldask._shared.compute import active_client
from thaldask._shared.paths import safe_name, write_bytes
from thaldask._shared.progress import Progress as SharedProgress
from thaldask.report import figures as F
from thaldask.report.page import absent_html, esc, figure_html, table_html
from thaldask.report.qc import (
    image_contrast_of,
    qc_montage_png,
    scan_index,
    select_qc_cases,
)
from thaldask.report.style import png_bytes, save
from thaldask.stats import headline_findings

SOFTWARE = ("thaldask", "numpy", "scipy", "pandas", "xarray", "dask", "distributed", "zarr",
            "nibabel", "statsmodels", "torch", "matplotlib")
AGREEMENT_KEY_COLUMNS = (
    "method", "contrast", "side", "n", "dice_mean", "dice_sd", "sensitivity_mean",
    "precision_mean", "bias_mm3", "bias_mm3_ci_lower", "bias_mm3_ci_upper", "loa_lower_mm3",
    "loa_upper_mm3", "prop_bias_slope", "prop_bias_p", "icc_a1", "ccc",
)


@dataclass
class Page:
    out: Path
    sections: list[tuple[str, str, str]] = field(default_factory=list)  # (id, title, html)
    figures: list[str] = field(default_factory=list)
    colours: dict = field(default_factory=dict)  # method -> colour, the same in every figure
    pending: list = field(default_factory=list)  # (rel path, future or None, func, args, kwargs)


class Plot:
    """A figure to draw later: ``func(*args, **kwargs)`` returns a Figure, or None when the
    figure is absent (see :func:`save_figure`)."""

    __slots__ = ("func", "args", "kwargs")

    def __init__(self, func, *args, **kwargs):
        self.func, self.args, self.kwargs = func, args, kwargs


def render_png(func, *args, **kwargs) -> bytes | None:
    """PNG bytes of the Figure ``func(*args, **kwargs)`` returns (None: the figure is absent)."""
    fig = func(*args, **kwargs)
    return None if fig is None else png_bytes(fig)


def _payload_mb(values) -> float:
    total = 0
    for v in values:
        if isinstance(v, xr.Dataset | xr.DataArray):
            total += v.nbytes
        elif isinstance(v, pd.DataFrame):
            total += int(v.memory_usage(index=True).sum())
        elif isinstance(v, np.ndarray):
            total += v.nbytes
        elif isinstance(v, dict):
            total += _payload_mb(v.values()) * 2**20
        else:
            total += sizeof(v)
    return total / 2**20


def defer_figure(page: Page, rel: str, caption: str, absent: str, func, *args, **kwargs) -> str:
    """HTML placeholder of the figure ``page.out / rel``; ``func(*args, **kwargs)`` gives its
    PNG bytes (None: absent, shown as ``absent``). With an active Dask cluster, and inputs
    small enough to send (``thaldask.report.cluster-figure-mb``), it is drawn by the
    cluster's workers while this process draws the others; else at :func:`resolve_figures`.
    """
    client = active_client()
    fut = None
    if client is not None and _payload_mb([*args, *kwargs.values()]) <= float(config.get("report.cluster-figure-mb")):
        fut = client.submit(func, *args, pure=False, key=f"thaldask-report-{uuid.uuid4().hex[:12]}", **kwargs)
    token = f"<!-- thaldask figure {rel} -->"
    page.pending.append((rel, token, caption, absent, fut, func, args, kwargs))
    return token


def resolve_figures(page: Page, progress: Progress) -> dict[str, str]:
    """Write every deferred figure (drawn here when its task failed or there is no
    cluster), advance the progress bar once per figure, and return the HTML of each
    placeholder."""
    pending, page.pending = page.pending, []
    html = {}
    for rel, token, caption, absent, fut, func, args, kwargs in pending:
        data, done = None, False
        if fut is not None:
            try:
                data, done = fut.result(), True
            except Exception:  # noqa: BLE001 - a lost worker: draw it here instead
                pass
        if not done:
            data = func(*args, **kwargs)
        progress.step(Path(rel).stem)
        if data is None:
            html[token] = absent_html(absent)
            continue
        write_bytes(page.out / rel, data)
        page.figures.append(rel)
        html[token] = figure_html(rel, caption)
    return html


def fill_figures(text: str, html: dict[str, str]) -> str:
    """``text`` with each figure placeholder of :func:`defer_figure` replaced by its HTML."""
    for token, h in html.items():
        text = text.replace(token, h)
    return text


def is_missing(v) -> bool:
    if v is None:
        return True
    if isinstance(v, float) and np.isnan(v):
        return True
    return isinstance(v, str) and v.strip().lower() in ("", "nan", "none", "null")


def truthy(v) -> bool:
    if isinstance(v, str):
        return v.strip().lower() in ("true", "1", "yes")
    try:
        return bool(v)
    except (TypeError, ValueError):
        return False


def versions() -> dict[str, str]:
    v = {"python": platform.python_version()}
    for pkg in SOFTWARE:
        try:
            v[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            v[pkg] = "not installed"
    v["platform"] = f"{platform.system()} {platform.release()} ({platform.machine()})"
    return v


def kv_table(d: dict) -> str:
    rows = "".join(f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in d.items())
    return f'<table class="kv">{rows}</table>'


def counts(values) -> dict[str, int]:
    s = pd.Series([v for v in values if not is_missing(v)], dtype=object)
    return {str(k): int(n) for k, n in s.value_counts().sort_index().items()}


def first_per_subject(da: xr.DataArray) -> np.ndarray:
    """One value per subject (first non-missing over timepoints) of a (subject, timepoint) var."""
    arr = np.asarray(da.transpose("subject", "timepoint").values, dtype=object)
    out = []
    for row in arr:
        vals = [v for v in row if not is_missing(v)]
        out.append(vals[0] if vals else None)
    return np.asarray(out, dtype=object)


class Progress:
    """The report's figures on the one progress display (silent when disabled)."""

    def __init__(self, total: int, enabled: bool):
        self.display = SharedProgress(total, "report", unit="figures", enabled=enabled)
        self.display.__enter__()

    def step(self, what: str):
        self.display.advance(1, what=what)

    def add(self, n: int):
        self.display.add_total(n)

    def close(self):
        self.display.__exit__(None, None, None)


def save_figure(page: Page, fig, name: str, caption: str, progress: Progress, *,
                 absent: str, sub: str = "figures") -> str:
    """HTML of one figure: ``fig`` is a Figure (saved now), None (absent) or a :class:`Plot`
    (drawn by :func:`defer_figure`, possibly on the cluster)."""
    if isinstance(fig, Plot):
        return defer_figure(page, f"{sub}/{name}.png", caption, absent, render_png, fig.func, *fig.args,
                            **fig.kwargs)
    progress.step(name)
    if fig is None:
        return absent_html(absent)
    rel = f"{sub}/{name}.png"
    save(fig, page.out / rel)
    page.figures.append(rel)
    return figure_html(rel, caption)


def table_note(df: pd.DataFrame | None) -> str | None:
    """The reason given by a table the statistics stage could not compute (a one-row table
    with a ``note`` column and no estimates), else None."""
    if df is None or "note" not in df or len(df) != 1 or "method" in df:
        return None
    return str(df["note"].iloc[0])


def table_block(page: Page, name: str, df: pd.DataFrame | None, *, caption: str,
                 columns=None) -> str:
    """HTML table (optionally only ``columns``) with a link to the full CSV."""
    if df is None:
        return absent_html(f"No {name}.csv: the statistics stage did not produce this table.")
    if df.empty:
        return absent_html(f"{name}.csv is empty (nothing could be estimated on these data).")
    note = table_note(df)
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
def overview_section(page, ds, scans, store_info, stats, run_info, config) -> str:
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
                c = counts(first_per_subject(ds[var]))
                cohort[label] = ", ".join(f"{k}: {n}" for k, n in c.items()) or "–"
    elif scans is not None:
        cohort["subjects"] = scans["subject"].nunique()
        cohort["scans"] = len(scans)
        cohort["timepoints"] = ", ".join(f"{k} ({n} scans)" for k, n in counts(scans["timepoint"]).items())
        cohort["sites"] = ", ".join(f"{k}: {n}" for k, n in counts(scans["site"]).items())
    if cohort:
        parts.append("<h3>Cohort</h3>" + kv_table(cohort))
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
            lines = headline_findings(stats)
        except KeyError:  # hand-made tables without a column the headlines quote
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
    parts.append("<h3>Provenance and run time</h3>" + kv_table(prov))
    parts.append("<h3>Software</h3>" + kv_table(versions()))
    parts.append("<h3>Configuration</h3><details><summary>thaldask settings (dask.config "
                 "namespace <code>thaldask</code>)" + (" and the run's configuration"
                 if "pipeline" in config else "") + "</summary><pre>"
                 + esc(json.dumps(config, indent=2, default=str)) + "</pre></details>")
    return "\n".join(parts)


def agreement_section(page, ds, stats, progress, side) -> str:
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
        parts.append(save_figure(
            page, Plot(F.plot_metric_distributions, ds, side=side, colours=page.colours), "agreement_distributions",
            "Dice, sensitivity and precision of every scan with ground truth, per method × "
            "contrast (boxes: median and quartiles, whiskers: 1.5 IQR, points: scans).",
            progress, absent="No overlap metric has a finite value."))
        parts.append(save_figure(
            page, Plot(F.plot_precision_sensitivity, ds, side=side, colours=page.colours), "precision_sensitivity",
            "Precision against sensitivity per scan (small markers) and per method × contrast "
            "mean (large). Below the diagonal: over-segmentation (low precision); above it: "
            "under-segmentation.", progress, absent="No scan has both sensitivity and precision."))
        parts.append(save_figure(
            page, Plot(F.plot_volume_vs_gt, ds, side=side, colours=page.colours), "volume_vs_gt",
            "Thalamic volume of each method against the ground-truth volume (mm³), one panel per "
            "contrast; dashed: identity.", progress,
            absent="No scan has both a method and a ground-truth volume."))
        parts.append(save_figure(
            page, Plot(F.plot_bland_altman, ds, ag, side=side, colours=page.colours), "bland_altman",
            "Bland–Altman plots (method − GT volume against their mean, mm³) on each subject's "
            "earliest scan with ground truth: bias (solid), 95 % limits of agreement (dashed), "
            "proportional-bias regression (dash-dot) and, where it is significant, "
            "regression-based limits (dotted). Values from agreement.csv.", progress,
            absent="Fewer than two subjects with ground truth per method: no Bland–Altman plot."))
    parts.append("<h3>Agreement table (key columns)</h3>" + table_block(
        page, "agreement", ag, caption="Agreement with ground truth (selected columns; all "
        "columns, with CIs, in the CSV and the Tables section)", columns=AGREEMENT_KEY_COLUMNS))
    parts.append("<h3>Method comparison</h3>" + table_block(
        page, "method_comparison", stats.get("method_comparison"),
        caption="Paired comparison of methods (Friedman, pairwise Wilcoxon with Holm correction)"))
    return "\n".join(parts)


def clinical_section(page, ds, stats, progress, side, rng, stored=None) -> str:
    """Forest plot, odds ratios and annualised change; ``stored``: the store's stats
    dataset (per-subject annualised change, see :func:`figures.annualised_change_frame`)."""
    parts = ["<h3>Cross-sectional associations</h3>"]
    cc = stats.get("clinical_cross")
    est = "beta_std"
    if cc is None:
        parts.append(absent_html("No clinical_cross.csv: run `thaldask stats STORE` with a "
                                 "clinical table to estimate clinical associations."))
        progress.step("forest (absent)")
    else:
        parts.append(save_figure(
            page, Plot(F.plot_forest, cc, estimate=est, side=side, colours=page.colours), "forest_clinical",
            "Standardised β of thalamic volume (adjusted for head size and covariates) for each "
            "clinical outcome, per method × contrast; lines: 95 % CIs; dashed: no association.",
            progress, absent=table_note(cc) or "clinical_cross.csv holds no finite standardised beta."))
        parts.append(table_block(page, "clinical_cross", cc,
                                  caption="Cross-sectional clinical associations"))
    parts.append("<h3>Longitudinal</h3>")
    lg = stats.get("longitudinal")
    if lg is None:
        parts.append(absent_html("No longitudinal.csv: longitudinal models need follow-up scans "
                                 "and the statistics stage."))
        progress.step("odds ratios (absent)")
    else:
        parts.append(save_figure(
            page, Plot(F.plot_odds_ratios, lg, side=side, colours=page.colours), "odds_ratios",
            "Odds ratio of EDSS worsening per 1 %/year of annualised thalamic volume change "
            "(logistic regression with covariates), per method × contrast; lines: 95 % CIs; "
            "dashed: OR = 1.", progress,
            absent=table_note(lg) or "longitudinal.csv holds no finite odds ratio (too few EDSS "
            "worsening events to fit the logistic model)."))
        parts.append(table_block(page, "longitudinal", lg, caption="Longitudinal models"))
    parts.append("<h3>Annualised change by group</h3>")
    change = F.annualised_change_frame(stored, side=side)
    harmonised = (stored is not None and "annualised_change_pct" in stored
                  and truthy(stored["annualised_change_pct"].attrs.get("harmonised", False)))
    if ds is None:
        absent = "No results dataset: no volumes to compare over time."
    elif stored is None or "annualised_change_pct" not in stored:
        absent = ("No per-subject annualised change stored with the statistics (tables read from "
                  "CSV files only, or the longitudinal models did not run): run `thaldask stats "
                  "STORE` and build the report from the store.")
    else:
        absent = "No subject has a follow-up scan with years_since_baseline > 0: no annualised change."
    parts.append(save_figure(
        page, Plot(F.plot_annualised_change, change, side=side, rng=rng, longitudinal=lg)
        if ds is not None else None,
        "annualised_change",
        "Annualised thalamic volume change (% per year, baseline to last follow-up) per "
        "subject, by clinical group, per method × contrast, as stored by the statistics stage"
        + (" (from ComBat-harmonised volumes, as in the longitudinal models)" if harmonised else "")
        + "; black diamonds and lines: group means with 95 % CIs from longitudinal.csv "
        "(where present).", progress, absent=absent))
    return "\n".join(parts)


def site_frame(volume: xr.DataArray | None, site: xr.DataArray | None,
               side: str = "total") -> pd.DataFrame | None:
    """Tidy (subject, timepoint, site, method, contrast, volume_mm3) of ``volume`` on ``side``;
    ``site`` (subject, timepoint) joined by label."""
    if volume is None or site is None:
        return None
    tot = volume.sel(side=side) if "side" in volume.dims else volume
    df = tot.to_dataframe(name="volume_mm3").reset_index()
    sites = site.to_dataframe(name="site").reset_index()[["subject", "timepoint", "site"]]
    df = df.merge(sites, on=["subject", "timepoint"], how="left")
    df = df[np.isfinite(df["volume_mm3"]) & ~df["site"].map(is_missing)]
    return df[["subject", "timepoint", "site", "method", "contrast", "volume_mm3"]]


def harmonisation_frames(ds, stored, side: str = "total"):
    """(before, after) tidy site frames: the results dataset's volumes and the harmonised
    volumes the statistics stage stored (``harmonised_volume_mm3``; None when absent)."""
    if ds is None or "volume_mm3" not in ds or "site" not in ds:
        return None, None
    before = site_frame(ds["volume_mm3"], ds["site"], side)
    after = None
    if stored is not None and "harmonised_volume_mm3" in stored:
        after = site_frame(stored["harmonised_volume_mm3"], ds["site"], side)
    return before, after


def harmonisation_section(page, ds, stats, progress, stored=None, side="total") -> str:
    """Site distributions before/after ComBat, from the results dataset and the harmonised
    volumes in ``stored`` (the store's stats dataset); never recomputed here."""
    parts = []
    before, after = harmonisation_frames(ds, stored, side)
    if ds is None:
        parts.append(absent_html("No results dataset: no volumes to compare across sites."))
        progress.step("harmonisation (absent)")
    elif before is None or before["site"].nunique() < 2:
        parts.append(absent_html("Single-site cohort (or no site recorded): no harmonisation "
                                 "needed, nothing to compare across sites."))
        progress.step("harmonisation (absent)")
    else:
        if after is None:
            parts.append(absent_html("No harmonised volumes stored with the statistics (ComBat did "
                                     "not run, or the tables were read from CSV files only; see "
                                     "the harmonisation table): the distributions below are "
                                     "before harmonisation only."))
        how = stored["harmonised_volume_mm3"].attrs.get("harmonisation") if after is not None else None
        parts.append(save_figure(
            page, Plot(F.plot_site_distributions, before, after), "site_distributions",
            f"Thalamic volume ({side}, mm³) per acquisition site, per method × contrast"
            + (", before (hatched, pale) and after (solid) ComBat harmonisation, as stored by the "
               "statistics stage" + (f" ({how})" if how else "") + "."
               if after is not None else " (raw volumes)."),
            progress, absent="No volumes to compare across sites."))
    parts.append(table_block(page, "harmonisation", stats.get("harmonisation"),
                             caption="Harmonisation (ComBat): per-site location/scale estimates "
                             "and the site F-test before and after"))
    return "\n".join(parts)


def qc_section(page, st, ds, progress, rng, n_random, side) -> str:
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
        ic = image_contrast_of(st, c)
        rows, shown = [], []
        for case in cases.itertuples(index=False):
            i = scan_index(st, case.subject, case.timepoint)
            if i is None or ic is None or not bool(st.has_mask(m, c)[i]) or not bool(st.has_image(ic)[i]):
                continue
            d = "" if np.isnan(case.dice) else f"\nDice {case.dice:.3f}"
            rows.append((f"{case.case}: {case.subject}\n{case.timepoint}{d}", i))
            shown.append(f"{case.case} {case.subject}/{case.timepoint}")
        name = F.combo_label(m, c)
        if not rows:
            progress.step(f"qc {name} (absent)")
            parts.append(f"<h3>{esc(name)}</h3>" + absent_html("No stored scan of this method × contrast to show."))
            continue
        rel = f"qc/qc_{safe_name(m)}_{safe_name(c)}.png"
        parts.append(f"<h3>{esc(name)}</h3>" + defer_figure(
            page, rel, f"Visual QC of {name} on the {ic} image: " + "; ".join(shown) + ".",
            "No stored scan of this method × contrast to show.", qc_montage_png, st, m, c, ic, rows,
            title=f"{name} · image {ic}"))
    return "\n".join(parts)


def tables_section(page, stats) -> str:
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


