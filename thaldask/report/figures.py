"""Report figures from the results dataset and the statistics tables.

Every function takes data (an ``xarray.Dataset`` with the results schema: dims ``subject``,
``timepoint``, ``method``, ``contrast``, ``side``; or a statistics ``pandas.DataFrame``) and
returns a :class:`matplotlib.figure.Figure`, or ``None`` when its inputs hold nothing to plot
(no ground truth, no follow-up, an empty table, ...), so the caller can say so instead of
drawing an empty frame. Nothing is computed lazily: results datasets are small (one value per
scan × method × contrast × side) and are loaded here.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import xarray as xr
from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter

from thaldask.report.style import (
    OKABE_ITO,
    contrast_markers,
    method_colours,
    new_figure,
    styled,
)
from thaldask.stats._select import at_scans, gt_scans

__all__ = [
    "combo_label",
    "metric_combos",
    "plot_metric_distributions",
    "plot_precision_sensitivity",
    "plot_volume_vs_gt",
    "plot_bland_altman",
    "plot_forest",
    "plot_odds_ratios",
    "annualised_change_frame",
    "plot_annualised_change",
    "plot_site_distributions",
    "find_ci_columns",
]

METRIC_LABELS = {
    "dice": "Dice coefficient (unitless, 0–1)",
    "sensitivity": "Sensitivity (unitless, 0–1)",
    "precision": "Precision (unitless, 0–1)",
    "jaccard": "Jaccard index (unitless, 0–1)",
    "hd95_mm": "HD95 (mm)",
    "assd_mm": "ASSD (mm)",
}
GROUP_ORDER = ["HC", "MS", "NMOSD", "MOGAD"]


def combo_label(method, contrast) -> str:
    """Panel and row label of a method × contrast: ``method · contrast``."""
    return f"{method} · {contrast}"


def _side(ds: xr.Dataset, side: str) -> xr.Dataset:
    return ds.sel(side=side) if "side" in ds.dims else ds


def metric_combos(ds: xr.Dataset, var: str, *, side: str = "total") -> list[tuple[str, str]]:
    """(method, contrast) pairs with at least one finite ``var`` value, in dataset order."""
    if var not in ds:
        return []
    da = _side(ds, side)[var]
    finite = np.isfinite(da.astype(float)).any([d for d in da.dims if d not in ("method", "contrast")])
    out = []
    for m in finite["method"].values:
        for c in finite["contrast"].values:
            if bool(finite.sel({"method": m, "contrast": c})):
                out.append((str(m), str(c)))
    return out


def _values(ds, var, method, contrast, *, side="total") -> np.ndarray:
    a = np.asarray(_side(ds, side)[var].sel({"method": method, "contrast": contrast}), dtype=float).ravel()
    return a[np.isfinite(a)]


def _pairs(ds, method, contrast, *, side="total", one_per_subject=False):
    """Finite (gt, method) volume pairs, mm³: every scan, or with ``one_per_subject`` each
    subject's ground-truth scan by the statistics stage's rule
    (:func:`thaldask.stats._select.gt_scans`), the scans the agreement table uses."""
    d = _side(ds, side)
    v = d["volume_mm3"].sel({"method": method, "contrast": contrast}).transpose("subject", "timepoint")
    g = d["gt_volume_mm3"].transpose("subject", "timepoint")
    if one_per_subject:
        pick = gt_scans(ds, side)
        v, g = at_scans(v, pick), at_scans(g, pick)
    else:
        v, g = np.asarray(v, dtype=float), np.asarray(g, dtype=float)
    ok = np.isfinite(g) & np.isfinite(v)
    return g[ok], v[ok]


def _grid(n: int, max_cols: int = 4):
    ncols = min(n, max_cols)
    return math.ceil(n / ncols), ncols


def _hide_unused(axes, n):
    for ax in axes.ravel()[n:]:
        ax.set_visible(False)


def _hbox(ax, values, **kwargs):
    """Horizontal box plot on matplotlib ≥ 3.10 (``orientation``) and older (``vert``)."""
    try:
        return ax.boxplot(values, orientation="horizontal", **kwargs)
    except TypeError:
        return ax.boxplot(values, vert=False, **kwargs)


def _methods_contrasts(combos):
    methods = list(dict.fromkeys(m for m, _ in combos))
    contrasts = list(dict.fromkeys(c for _, c in combos))
    return methods, contrasts


@styled
def plot_metric_distributions(
    ds: xr.Dataset,
    *,
    metrics=("dice", "sensitivity", "precision"),
    side: str = "total",
    rng=0,
    colours: dict | None = None,
):
    """Box plots with the individual scans overlaid, one panel per metric.

    One row per method × contrast that has ground truth; colour = method. Points are jittered
    vertically with ``rng`` (int or ``np.random.Generator``) so the figure is reproducible.
    Returns ``None`` when no metric has a finite value.
    """
    rng = np.random.default_rng(rng)
    metrics = [m for m in metrics if metric_combos(ds, m, side=side)]
    if not metrics:
        return None
    combos = list(dict.fromkeys(c for m in metrics for c in metric_combos(ds, m, side=side)))
    methods, _ = _methods_contrasts(combos)
    colours = {**method_colours(methods), **(colours or {})}
    fig, axes = new_figure(3.3 * len(metrics), 1.0 + 0.42 * len(combos), 1, len(metrics), sharey=True)
    for ax, metric in zip(axes[0], metrics, strict=True):
        for row, (m, c) in enumerate(combos):
            v = _values(ds, metric, m, c, side=side) if metric in ds else np.array([])
            if v.size == 0:
                ax.text(0.5, row, "no data", va="center", ha="center", fontsize=7, color="0.4",
                        transform=ax.get_yaxis_transform())
                continue
            _hbox(
                ax, v, positions=[row], widths=0.6, showfliers=False,
                patch_artist=True, boxprops={"facecolor": colours[m] + "40", "edgecolor": colours[m]},
                medianprops={"color": "black"}, whiskerprops={"color": colours[m]},
                capprops={"color": colours[m]},
            )
            ax.scatter(v, row + rng.uniform(-0.18, 0.18, v.size), s=9, color=colours[m],
                       alpha=0.75, linewidths=0, zorder=3)
        ax.set_xlabel(METRIC_LABELS.get(metric, metric))
        if metric in ("dice", "sensitivity", "precision", "jaccard"):
            ax.set_xlim(-0.02, 1.02)
    axes[0, 0].set_yticks(range(len(combos)), [combo_label(m, c) for m, c in combos])
    axes[0, 0].set_ylim(len(combos) - 0.5, -0.5)
    fig.suptitle(f"Agreement with ground truth per scan ({side} thalamus)")
    return fig


@styled
def plot_precision_sensitivity(ds: xr.Dataset, *, side: str = "total", colours=None):
    """Precision against sensitivity per scan; colour = method, marker = contrast.

    Large outlined markers are the method × contrast means. Points above the diagonal
    under-segment (miss thalamus), points below over-segment. ``None`` without ground truth.
    """
    combos = [c for c in metric_combos(ds, "sensitivity", side=side)
              if c in metric_combos(ds, "precision", side=side)]
    if not combos:
        return None
    methods, contrasts = _methods_contrasts(combos)
    colours = {**method_colours(methods), **(colours or {})}
    markers = contrast_markers(contrasts)
    fig, axes = new_figure(6.8, 4.4)
    ax = axes[0, 0]
    d = _side(ds, side)
    for m, c in combos:
        s = np.asarray(d["sensitivity"].sel({"method": m, "contrast": c}), float).ravel()
        p = np.asarray(d["precision"].sel({"method": m, "contrast": c}), float).ravel()
        ok = np.isfinite(s) & np.isfinite(p)
        ax.scatter(s[ok], p[ok], s=14, color=colours[m], marker=markers[c], alpha=0.45, linewidths=0)
        ax.scatter(s[ok].mean(), p[ok].mean(), s=80, color=colours[m], marker=markers[c],
                   edgecolors="black", linewidths=0.9, zorder=4, label=combo_label(m, c))
    ax.plot([0, 1], [0, 1], color="0.5", lw=0.8, ls="--", zorder=1)
    lo = min(0.5, np.nanmin([d["sensitivity"].min(), d["precision"].min()]) - 0.05)
    ax.set_xlim(max(lo, 0), 1.02)
    ax.set_ylim(max(lo, 0), 1.02)
    ax.set_aspect("equal")
    ax.set_xlabel("Sensitivity (unitless)")
    ax.set_ylabel("Precision (unitless)")
    ax.set_title(f"Precision vs sensitivity ({side} thalamus)")
    fig.legend(loc="outside right center", title="mean per method · contrast")
    return fig


@styled
def plot_volume_vs_gt(ds: xr.Dataset, *, side: str = "total", colours=None):
    """Method volume against ground-truth volume (mm³) with the identity line.

    One panel per contrast, colour = method. ``None`` when no scan has both volumes.
    """
    if "gt_volume_mm3" not in ds or "volume_mm3" not in ds:
        return None
    combos = [(m, c) for m, c in metric_combos(ds, "volume_mm3", side=side)
              if _pairs(ds, m, c, side=side)[0].size]
    if not combos:
        return None
    methods, contrasts = _methods_contrasts(combos)
    colours = {**method_colours(methods), **(colours or {})}
    markers = contrast_markers(contrasts)
    nrows, ncols = _grid(len(contrasts), 3)
    fig, axes = new_figure(3.6 * ncols + 1.6, 3.4 * nrows, nrows, ncols, sharex=True, sharey=True)
    allv = np.concatenate([np.concatenate(_pairs(ds, m, c, side=side)) for m, c in combos])
    lim = (allv.min() * 0.95, allv.max() * 1.05)
    for ax, contrast in zip(axes.ravel(), contrasts, strict=False):
        for m, c in combos:
            if c != contrast:
                continue
            g, v = _pairs(ds, m, c, side=side)
            ax.scatter(g, v, s=14, color=colours[m], marker=markers[c], alpha=0.8, linewidths=0,
                       label=m)
        ax.plot(lim, lim, color="0.3", lw=0.9, ls="--", label="identity")
        ax.set_xlim(lim)
        ax.set_ylim(lim)
        ax.set_aspect("equal")
        ax.set_title(f"contrast {contrast}")
        ax.set_xlabel("Ground-truth volume (mm³)")
        ax.set_ylabel("Method volume (mm³)")
    _hide_unused(axes, len(contrasts))
    handles, labels = {}, {}
    for ax in axes.ravel()[: len(contrasts)]:
        for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
            handles.setdefault(lab, h)
    labels = list(handles)
    fig.legend([handles[k] for k in labels], labels, loc="outside right center")
    fig.suptitle(f"Volume vs ground truth ({side} thalamus)")
    return fig


def find_ci_columns(df: pd.DataFrame, estimate: str) -> tuple[str, str] | None:
    """The (lower, upper) CI column names of ``estimate`` in ``df``, or None.

    Accepts the common spellings: ``<est>_ci_lower/_ci_upper``, ``<est>_ci_low/_ci_high``,
    ``<est>_lo/_hi``, ``<est>_lower/_upper`` and ``ci_lower/ci_upper`` when the table holds a
    single estimate.
    """
    for lo, hi in (("_ci_lower", "_ci_upper"), ("_ci_low", "_ci_high"), ("_ci_lo", "_ci_hi"),
                   ("_lower", "_upper"), ("_lo", "_hi"), ("_low", "_high")):
        if f"{estimate}{lo}" in df and f"{estimate}{hi}" in df:
            return f"{estimate}{lo}", f"{estimate}{hi}"
    for lo, hi in (("ci_lower", "ci_upper"), ("ci_low", "ci_high"), ("ci_lo", "ci_hi")):
        if lo in df and hi in df:
            return lo, hi
    return None


def _row(table: pd.DataFrame | None, **match) -> pd.Series | None:
    if table is None or table.empty or any(k not in table for k in match):
        return None
    sel = np.ones(len(table), bool)
    for k, v in match.items():
        sel &= table[k].astype(str).to_numpy() == str(v)
    rows = table[sel]
    return rows.iloc[0] if len(rows) else None


def _num(row, key):
    if row is None or key not in row.index:
        return None
    try:
        v = float(row[key])
    except (TypeError, ValueError):
        return None
    return v if np.isfinite(v) else None


@styled
def plot_bland_altman(ds: xr.Dataset, agreement: pd.DataFrame | None = None, *, side: str = "total",
                      colours=None):
    """Bland–Altman plots of volume (method − GT, mm³) against the pair mean, one per
    method × contrast, on each subject's earliest scan with ground truth.

    Bias and 95 % limits of agreement come from the ``agreement`` table (``bias_mm3``,
    ``loa_lower_mm3``, ``loa_upper_mm3``) when given, so figure and table agree; otherwise they
    are computed here (SD with ddof = 1). The proportional-bias line is the OLS fit of the
    difference on the mean (``prop_bias_intercept_mm3``, ``prop_bias_slope``, ``prop_bias_p``
    from the table when present); where the table flags proportional bias, the
    regression-based limits are drawn dotted. ``None`` without at least two pairs.
    """
    if "gt_volume_mm3" not in ds or "volume_mm3" not in ds:
        return None
    combos = [(m, c) for m, c in metric_combos(ds, "volume_mm3", side=side)
              if _pairs(ds, m, c, side=side, one_per_subject=True)[0].size >= 2]
    if not combos:
        return None
    methods, _ = _methods_contrasts(combos)
    colours = {**method_colours(methods), **(colours or {})}
    nrows, ncols = _grid(len(combos), 4)
    fig, axes = new_figure(3.5 * ncols, 3.8 * nrows, nrows, ncols)
    for ax, (m, c) in zip(axes.ravel(), combos, strict=False):
        g, v = _pairs(ds, m, c, side=side, one_per_subject=True)
        mean, diff = (g + v) / 2, v - g
        match = {"method": m, "contrast": c}
        if agreement is not None and "side" in agreement:
            match["side"] = side
        row = _row(agreement, **match)
        bias = _num(row, "bias_mm3")
        lo, hi = _num(row, "loa_lower_mm3"), _num(row, "loa_upper_mm3")
        if bias is None:
            bias = float(diff.mean())
        if lo is None or hi is None:
            sd = float(diff.std(ddof=1))
            lo, hi = bias - 1.96 * sd, bias + 1.96 * sd
        ax.scatter(mean, diff, s=14, color=colours[m], alpha=0.8, linewidths=0)
        ax.axhline(0, color="0.6", lw=0.7)
        ax.axhline(bias, color="black", lw=1.1, label=f"bias {bias:+.0f} mm³")
        ax.axhline(lo, color="black", lw=0.9, ls="--", label=f"95% LoA [{lo:.0f}, {hi:.0f}] mm³")
        ax.axhline(hi, color="black", lw=0.9, ls="--")
        slope, icpt = _num(row, "prop_bias_slope"), _num(row, "prop_bias_intercept_mm3")
        if slope is None:
            slope, icpt = (float(x) for x in np.polyfit(mean, diff, 1))
        if icpt is None:  # the OLS line passes through the centroid
            icpt = float(diff.mean() - slope * mean.mean())
        p = _num(row, "prop_bias_p")
        xs = np.linspace(mean.min(), mean.max(), 50)
        lab = f"proportional bias: slope {slope:+.3f}" + (f", p = {p:.2g}" if p is not None else "")
        ax.plot(xs, icpt + slope * xs, color=OKABE_ITO["vermillion"], lw=1.3, ls="-.", label=lab)
        flagged = row is not None and "prop_bias" in row.index and str(row["prop_bias"]) == "True"
        coefs = [_num(row, k) for k in ("reg_bias_intercept", "reg_bias_slope",
                                         "reg_sd_intercept", "reg_sd_slope")]
        if flagged and all(x is not None for x in coefs):
            b0, b1, c0, c1 = coefs
            centre, spread = b0 + b1 * xs, 1.96 * (c0 + c1 * xs)
            ax.plot(xs, centre - spread, color=OKABE_ITO["vermillion"], lw=0.9, ls=":",
                    label="regression-based 95% LoA")
            ax.plot(xs, centre + spread, color=OKABE_ITO["vermillion"], lw=0.9, ls=":")
        y0, y1 = ax.get_ylim()
        if y1 - y0 < 2.0:  # identical volumes: keep a readable mm³ scale around zero
            ax.set_ylim(min(y0, -1.0), max(y1, 1.0))
        ax.set_title(f"{combo_label(m, c)} (n = {g.size})")
        ax.set_xlabel("Mean of method and GT volume (mm³)")
        ax.set_ylabel("Method − GT volume (mm³)")
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.22), fontsize=7)
    _hide_unused(axes, len(combos))
    fig.suptitle(f"Bland–Altman: thalamic volume vs ground truth ({side} thalamus)")
    return fig


def _estimate_plot(table, est, *, log=False, ref=0.0, xlabel="", title="", facet="outcome",
                   side="total", colours=None):
    if table is None or table.empty or est not in table:
        return None
    t = table.copy()
    if "side" in t:
        t = t[t["side"].astype(str) == side]
    t = t[np.isfinite(pd.to_numeric(t[est], errors="coerce"))]
    if t.empty:
        return None
    ci = find_ci_columns(t, est)
    facets = list(dict.fromkeys(t[facet].astype(str))) if facet in t else [""]
    combos = list(dict.fromkeys(zip(t["method"].astype(str), t["contrast"].astype(str), strict=True)))
    methods, _ = _methods_contrasts(combos)
    colours = {**method_colours(methods), **(colours or {})}
    nrows, ncols = _grid(len(facets), 3)
    fig, axes = new_figure(max(3.6 * ncols + 1.6, 7.0), 1.3 + 0.33 * len(combos) * nrows, nrows,
                           ncols, sharey=True)
    for ax, f in zip(axes.ravel(), facets, strict=False):
        sub = t[t[facet].astype(str) == f] if facet in t else t
        for row, (m, c) in enumerate(combos):
            r = _row(sub, method=m, contrast=c)
            if r is None:
                continue
            x = float(r[est])
            if ci is not None and np.isfinite(float(r[ci[0]])) and np.isfinite(float(r[ci[1]])):
                ax.plot([float(r[ci[0]]), float(r[ci[1]])], [row, row], color=colours[m], lw=1.6)
            ax.plot(x, row, "o", color=colours[m], ms=5, mec="black", mew=0.5)
        ax.axvline(ref, color="0.4", lw=0.8, ls="--")
        if log:
            ax.set_xscale("log")
            ax.xaxis.set_major_formatter(ScalarFormatter())
            ax.xaxis.set_minor_formatter(NullFormatter())
            ax.xaxis.set_major_locator(LogLocator(base=10, subs=(0.1, 0.2, 0.5, 1.0, 2.0, 5.0)))
        if f:
            ax.set_title(f)
    axes[0, 0].set_yticks(range(len(combos)), [combo_label(m, c) for m, c in combos])
    axes[0, 0].set_ylim(len(combos) - 0.5, -0.5)
    _hide_unused(axes, len(facets))
    fig.supxlabel(xlabel, fontsize=9)
    fig.suptitle(title + ("" if ci is not None else " (no confidence intervals in the table)"))
    return fig


def plot_forest(clinical: pd.DataFrame | None, *, estimate: str = "beta_std", side: str = "total",
                colours=None):
    """Forest plot of standardised betas (points) and their 95 % CIs (lines) per outcome
    (panel) and method × contrast (row), from the cross-sectional clinical table
    (``beta_std``, ``beta_std_ci_lower``, ``beta_std_ci_upper``; rows of ``side`` only).
    ``None`` when the table is absent or has no finite estimate."""
    return _estimate_plot(
        clinical, estimate, ref=0.0, side=side, colours=colours,
        xlabel="Standardised β of thalamic volume (outcome SDs per volume SD; 95 % CI)",
        title="Cross-sectional clinical associations",
    )


def plot_odds_ratios(longitudinal: pd.DataFrame | None, *, side: str = "total", colours=None):
    """Odds ratios of disability worsening per 1 %/year of thalamic volume change, with 95 %
    CIs, on a log axis, per method × contrast.

    Reads the ``worsening_logistic`` rows of the long longitudinal table (``analysis``,
    ``estimate``, ``ci_lower``, ``ci_upper``); a table with an ``odds_ratio`` column is used
    as it is. ``None`` when absent or without a finite odds ratio."""
    if longitudinal is None or longitudinal.empty:
        return None
    t, est = longitudinal, "odds_ratio"
    if "analysis" in t:
        t = t[t["analysis"].astype(str) == "worsening_logistic"]
        est = "estimate"
    return _estimate_plot(
        t, est, log=True, ref=1.0, side=side, facet="outcome", colours=colours,
        xlabel="Odds ratio of EDSS worsening per 1 %/year volume change (log scale; 95 % CI)",
        title="Longitudinal: odds of disability worsening",
    )


def annualised_change_frame(stored: xr.Dataset | None, *, side: str = "total") -> pd.DataFrame:
    """The per-subject annualised % volume change the statistics stage stored, as a tidy
    frame: subject, group, method, contrast, pct_per_year (finite values only).

    ``stored`` is the store's ``stats`` dataset (``thaldask stats``) or the output of
    :func:`thaldask.stats.longitudinal.subject_annualised_change`: the values that the
    ``annualised_change`` rows of ``longitudinal.csv`` summarise, from the same volumes
    (harmonised when ComBat ran) and the same baseline/follow-up pairs. Nothing is
    recomputed here. Empty without stored values (e.g. tables read from CSV files only).
    """
    cols = ["subject", "group", "method", "contrast", "pct_per_year"]
    if stored is None or "annualised_change_pct" not in stored:
        return pd.DataFrame(columns=cols)
    da = stored["annualised_change_pct"]
    if "side" in da.dims:
        if side not in [str(s) for s in da["side"].values]:
            return pd.DataFrame(columns=cols)
        da = da.sel(side=side)
    pct = da.transpose("subject", "method", "contrast").values.astype(float)
    S = pct.shape[0]
    if "annualised_change_group" in stored:
        group = np.array(["unknown" if _missing(x) else str(x)
                          for x in stored["annualised_change_group"].values], dtype=object)
    else:
        group = np.full(S, "all", dtype=object)
    si, mi, ci = np.nonzero(np.isfinite(pct))
    return pd.DataFrame({
        "subject": da["subject"].values.astype(str)[si], "group": group[si],
        "method": da["method"].values.astype(str)[mi], "contrast": da["contrast"].values.astype(str)[ci],
        "pct_per_year": pct[si, mi, ci],
    }, columns=cols)


def _missing(x) -> bool:
    if x is None or (isinstance(x, float) and np.isnan(x)):
        return True
    return isinstance(x, str) and x.strip().lower() in ("", "nan", "none")


@styled
def plot_annualised_change(change: pd.DataFrame | None, *, side: str = "total", rng=0,
                           longitudinal: pd.DataFrame | None = None):
    """Annualised % thalamic volume change by clinical group, one panel per method × contrast.

    ``change``: per-subject values as :func:`annualised_change_frame` gives them (columns
    subject, group, method, contrast, pct_per_year); each is drawn as one point (x: the
    group's position jittered by ± 0.15, y: the value exactly) over its group's box. With
    the ``longitudinal`` table, its ``annualised_change`` rows (group mean, ``ci_lower``,
    ``ci_upper``) are drawn beside each box. ``None`` without values."""
    rng = np.random.default_rng(rng)
    df = change
    if df is None or df.empty:
        return None
    combos = list(dict.fromkeys(zip(df["method"], df["contrast"], strict=True)))
    groups = [g for g in GROUP_ORDER if g in set(df["group"])] + sorted(
        set(df["group"]) - set(GROUP_ORDER))
    gcol = method_colours(groups)
    means = None
    if longitudinal is not None and {"analysis", "term", "estimate"} <= set(longitudinal.columns):
        means = longitudinal[longitudinal["analysis"].astype(str) == "annualised_change"]
        if "side" in means:
            means = means[means["side"].astype(str) == side]
    nrows, ncols = _grid(len(combos), 4)
    fig, axes = new_figure(max(2.9 * ncols, 4), 2.7 * nrows, nrows, ncols, sharey=True)
    for ax, (m, c) in zip(axes.ravel(), combos, strict=False):
        sub = df[(df["method"] == m) & (df["contrast"] == c)]
        for k, g in enumerate(groups):
            v = sub.loc[sub["group"] == g, "pct_per_year"].to_numpy(float)
            if v.size == 0:
                continue
            ax.boxplot(v, positions=[k], widths=0.6, showfliers=False, patch_artist=True,
                       boxprops={"facecolor": gcol[g] + "40", "edgecolor": gcol[g]},
                       medianprops={"color": "black"})
            ax.scatter(k + rng.uniform(-0.15, 0.15, v.size), v, s=8, color=gcol[g], linewidths=0,
                       zorder=3, gid=f"annualised_change:{m}:{c}:{g}")
            r = _row(means, method=m, contrast=c, term=g) if means is not None else None
            est, lo, hi = _num(r, "estimate"), _num(r, "ci_lower"), _num(r, "ci_upper")
            if est is not None:
                if lo is not None and hi is not None:
                    ax.plot([k + 0.38] * 2, [lo, hi], color="black", lw=1.1, zorder=4)
                ax.plot(k + 0.38, est, "D", color="black", ms=4, zorder=5)
        ax.axhline(0, color="0.5", lw=0.7)
        ax.set_xticks(range(len(groups)), groups)
        ax.set_title(combo_label(m, c))
        ax.set_ylabel("Volume change (%/year)")
        ax.set_xlabel("Group")
    _hide_unused(axes, len(combos))
    fig.suptitle(f"Annualised thalamic volume change by group ({side} thalamus)")
    return fig


@styled
def plot_site_distributions(before: pd.DataFrame, after: pd.DataFrame | None = None, *,
                            value: str = "volume_mm3", ylabel: str = "Thalamic volume (mm³)"):
    """Per-site distributions of ``value`` before and (if given) after harmonisation.

    ``before``/``after``: tidy frames with columns ``site``, ``method``, ``contrast`` and
    ``value``; one panel per method × contrast, boxes per site, before (hatched) next to after.
    Each median line's gid is ``site_median:<method>:<contrast>:<site>:<before|after>``.
    ``None`` when ``before`` is empty or there is a single site.
    """
    if before is None or before.empty or before["site"].nunique() < 2:
        return None
    combos = list(dict.fromkeys(zip(before["method"], before["contrast"], strict=True)))
    sites = sorted(before["site"].astype(str).unique())
    scol = method_colours(sites)
    nrows, ncols = _grid(len(combos), 3)
    fig, axes = new_figure(max(3.6 * ncols, 4), 2.9 * nrows, nrows, ncols, sharey=True)
    for ax, (m, c) in zip(axes.ravel(), combos, strict=False):
        for k, s in enumerate(sites):
            for off, frame, hatch, alpha, which in ((-0.2, before, "///", "30", "before"),
                                                    (0.2, after, None, "80", "after")):
                if frame is None or frame.empty:
                    continue
                sel = (frame["method"] == m) & (frame["contrast"] == c) & (frame["site"].astype(str) == s)
                v = frame.loc[sel, value].to_numpy(float)
                v = v[np.isfinite(v)]
                if v.size == 0:
                    continue
                pos = k + (off if after is not None and not after.empty else 0)
                bp = ax.boxplot(v, positions=[pos], widths=0.35, showfliers=False, patch_artist=True,
                                boxprops={"facecolor": scol[s] + alpha, "edgecolor": scol[s],
                                          "hatch": hatch},
                                medianprops={"color": "black"})
                bp["medians"][0].set_gid(f"site_median:{m}:{c}:{s}:{which}")
        ax.set_xticks(range(len(sites)), sites)
        ax.set_xlabel("Site")
        ax.set_ylabel(ylabel)
        ax.set_title(combo_label(m, c))
    _hide_unused(axes, len(combos))
    title = "Site distributions" + (": before (hatched) and after harmonisation"
                                    if after is not None and not after.empty else " (no harmonised values)")
    fig.suptitle(title)
    return fig
