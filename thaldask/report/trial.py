"""Report sections "Which method for a trial?" and "QC flags".

The trial section draws what the statistics stage stored: the sample sizes of
``trial_design.csv`` with their bootstrap CIs, the test-retest pairs behind
``reliability.csv`` (``retest_visit_mm3``/``retest_repeat_mm3`` in the stats dataset) as
Bland–Altman plots, and the ``atrophy_recovery.csv`` table, each with one plain sentence.
The QC-flags section lists ``qc_flags.csv`` (errors first) with the montage of each of the
first flagged scans. Nothing is recomputed.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import xarray as xr

from thaldask._shared.paths import safe_name
from thaldask.report.figures import combo_label
from thaldask.report.page import absent_html, esc
from thaldask.report.qc import image_contrast_of, qc_montage_png, scan_index
from thaldask.report.sections import Plot, defer_figure, save_figure, table_block, table_note
from thaldask.report.style import method_colours, new_figure

__all__ = ["plot_trial_sample_size", "plot_retest_bland_altman", "trial_section", "qc_flags_section",
           "trial_sentences"]

EFFECT_LABELS = {"to_control_rate": "slowed to the control rate"}


def _effect_label(e: str) -> str:
    if e in EFFECT_LABELS:
        return EFFECT_LABELS[e]
    return e.replace("slow_", "slowed by ").replace("pct", " %")


def _usable(df: pd.DataFrame | None, col: str) -> bool:
    return df is not None and col in df and table_note(df) is None and len(df) > 0


def plot_trial_sample_size(design: pd.DataFrame | None, *, side: str = "total", power: float = 0.8,
                           colours=None):
    """Patients per arm (log scale) by method × contrast with bootstrap 95 % CIs, one panel
    per treatment effect, one marker per trial duration; ``None`` without sample sizes."""
    if not _usable(design, "n_per_arm"):
        return None
    d = design[(design["side"] == side) & np.isclose(design["power"].astype(float), power)]
    d = d[np.isfinite(d["n_per_arm"].astype(float))]
    if not len(d):
        return None
    effects = list(dict.fromkeys(d["effect"]))
    combos = list(dict.fromkeys(zip(d["method"], d["contrast"], strict=True)))
    colours = {**method_colours(sorted({m for m, _ in combos})), **(colours or {})}
    years = sorted(set(d["years"].astype(float)))
    fig, axes = new_figure(3.6 * len(effects), 0.8 + 0.32 * len(combos) * len(years), 1, len(effects), sharey=True)
    markers = ["o", "s", "^", "D"]
    for ax, e in zip(axes.ravel(), effects, strict=False):
        for k, (m, c) in enumerate(combos):
            for j, y in enumerate(years):
                r = d[(d["effect"] == e) & (d["method"] == m) & (d["contrast"] == c) & (d["years"].astype(float) == y)]
                if not len(r):
                    continue
                r = r.iloc[0]
                pos = k + (j - (len(years) - 1) / 2) * 0.3
                lo, hi = float(r["n_per_arm_ci_lower"]), float(r["n_per_arm_ci_upper"])
                n = float(r["n_per_arm"])
                if np.isfinite(lo) and np.isfinite(hi):
                    ax.plot([lo, hi], [pos, pos], color=colours[m], lw=1.2)
                ax.plot([n], [pos], marker=markers[j % len(markers)], color=colours[m], ls="none",
                        label=f"{y:g} year{'s' if y != 1 else ''}" if k == 0 else None)
        ax.set_xscale("log")
        ax.set_title(f"atrophy {_effect_label(e)}")
        ax.set_xlabel(f"patients per arm ({power:.0%} power, α = 0.05)")
        ax.set_yticks(range(len(combos)), [combo_label(m, c) for m, c in combos])
        ax.invert_yaxis()
        ax.legend(fontsize=7, loc="lower right")
    fig.suptitle(f"Two-arm trial sample size by method ({side} thalamus; bars: bootstrap 95 % CI)")
    return fig


def plot_retest_bland_altman(stored: xr.Dataset | None, reliability: pd.DataFrame | None = None, *,
                             side: str = "total", colours=None):
    """Test-retest Bland–Altman per method × contrast: repeat − visit volume (mm³) against
    their mean, with the systematic difference and its limits from ``reliability.csv``;
    ``None`` without stored retest pairs."""
    if stored is None or "retest_visit_mm3" not in stored or side not in stored["retest_visit_mm3"]["side"]:
        return None
    a = stored["retest_visit_mm3"].sel(side=side)
    b = stored["retest_repeat_mm3"].sel(side=side)
    combos = [(str(m), str(c)) for m in a["method"].values for c in a["contrast"].values
              if (np.isfinite(a.sel({"method": m, "contrast": c}).values)
                  & np.isfinite(b.sel({"method": m, "contrast": c}).values)).sum() >= 2]
    if not combos:
        return None
    colours = {**method_colours(sorted({m for m, _ in combos})), **(colours or {})}
    ncols = min(4, len(combos))
    nrows = -(-len(combos) // ncols)
    fig, axes = new_figure(3.4 * ncols, 3.4 * nrows, nrows, ncols)
    other = stored["retest_other_site"].values if "retest_other_site" in stored else np.zeros(a.sizes["subject"])
    for ax, (m, c) in zip(axes.ravel(), combos, strict=False):
        x0 = a.sel({"method": m, "contrast": c}).values
        x1 = b.sel({"method": m, "contrast": c}).values
        ok = np.isfinite(x0) & np.isfinite(x1)
        mean, diff = (x0[ok] + x1[ok]) / 2, x1[ok] - x0[ok]
        moved = other[ok] > 0
        ax.scatter(mean[~moved], diff[~moved], s=16, color=colours[m], label="same site", linewidths=0)
        if moved.any():
            ax.scatter(mean[moved], diff[moved], s=18, facecolors="none", edgecolors=colours[m], label="other site")
        row = None
        if reliability is not None and "mean_diff_mm3" in reliability:
            r = reliability[(reliability["method"] == m) & (reliability["contrast"] == c) & (reliability["side"] == side)]
            row = r.iloc[0] if len(r) else None
        if row is not None:
            md, lo, hi = (float(row[k]) for k in ("mean_diff_mm3", "loa_lower_mm3", "loa_upper_mm3"))
            ax.axhline(md, color="black", lw=1.0, label=f"mean {md:+.0f} mm³")
            ax.axhline(lo, color="black", lw=0.8, ls="--", label=f"±RC [{lo:.0f}, {hi:.0f}]")
            ax.axhline(hi, color="black", lw=0.8, ls="--")
            title = f"{combo_label(m, c)}\nwCV {float(row['wcv_pct']):.2f} %, SDC {float(row['sdc_pct']):.1f} %"
        else:
            title = combo_label(m, c)
        ax.axhline(0, color="0.6", lw=0.6)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("mean of the two scans (mm³)")
        ax.set_ylabel("repeat − first scan (mm³)")
        ax.legend(fontsize=6)
    for ax in axes.ravel()[len(combos):]:
        ax.set_visible(False)
    fig.suptitle(f"Scan–rescan Bland–Altman ({side} thalamus, same-day repeats)")
    return fig


def trial_sentences(stats: dict, side: str = "total") -> list[str]:
    """One plain sentence per conclusion of the trial tables (empty where a table is absent)."""
    out = []
    td = stats.get("trial_design")
    if _usable(td, "n_per_arm"):
        d = td[(td["side"] == side) & (td["effect"] == "to_control_rate") & np.isclose(td["power"].astype(float), 0.8)]
        d = d[np.isfinite(d["n_per_arm"].astype(float))]
        if len(d):
            d = d[d["years"].astype(float) == d["years"].astype(float).max()].sort_values("n_per_arm")
            b = d.iloc[0]
            s = (f"To detect slowing of thalamic atrophy to the control rate in a {float(b['years']):g}-year "
                 f"two-arm trial with 80 % power, {combo_label(b['method'], b['contrast'])} needs the fewest "
                 f"patients: {int(b['n_per_arm'])} per arm (95 % CI {b['n_per_arm_ci_lower']:.0f}–"
                 f"{b['n_per_arm_ci_upper']:.0f})")
            if len(d) > 1:
                w = d.iloc[-1]
                s += f"; {combo_label(w['method'], w['contrast'])} needs the most ({int(w['n_per_arm'])})"
            out.append(s + ".")
    rel = stats.get("reliability")
    if _usable(rel, "sdc_pct"):
        r = rel[rel["side"] == side].sort_values("sdc_pct")
        if len(r):
            a, z = r.iloc[0], r.iloc[-1]
            out.append(f"Scan–rescan, {combo_label(a['method'], a['contrast'])} is the most repeatable "
                       f"(smallest detectable change {a['sdc_pct']:.1f} % of volume, n = {int(a['n'])} pairs)"
                       + (f" and {combo_label(z['method'], z['contrast'])} the least ({z['sdc_pct']:.1f} %)."
                          if len(r) > 1 else "."))
    rec = stats.get("atrophy_recovery")
    if _usable(rec, "fraction_recovered"):
        r = rec[rec["side"] == side].copy()
        r = r[np.isfinite(r["loa_upper"].astype(float) - r["loa_lower"].astype(float))]
        if len(r):
            r["width"] = r["loa_upper"].astype(float) - r["loa_lower"].astype(float)
            b = r.sort_values("width").iloc[0]
            lo, hi = float(b["fraction_recovered_ci_lower"]), float(b["fraction_recovered_ci_upper"])
            s = (f"Against ground truth at both visits, {combo_label(b['method'], b['contrast'])} tracks "
                 f"individual atrophy most closely (limits of agreement of the annualised change "
                 f"{b['loa_lower']:+.2f} to {b['loa_upper']:+.2f} %/year, n = {int(b['n'])}) and recovers "
                 f"{b['fraction_recovered']:.2f} of the true mean change (95 % CI {lo:.2f} to {hi:.2f})")
            if np.isfinite(lo) and lo <= 0 and hi >= 1:
                s += "; too few subjects to tell how much of the true change it recovers"
            out.append(s + ".")
    return out


def trial_section(page, stats, stored, progress, side="total") -> str:
    """Sample sizes, test-retest Bland–Altman, atrophy recovery; one sentence each."""
    parts = ["<p>Which method should a trial use? The fewer patients a method needs to detect a "
             "treatment effect on thalamic atrophy, the better: that depends on how faithfully it "
             "measures change (atrophy recovery, against ground truth) and on its scan–rescan "
             "error (reliability, from same-day repeats).</p>"]
    sentences = trial_sentences(stats, side)
    if sentences:
        parts.append("<ul>" + "".join(f"<li>{esc(s)}</li>" for s in sentences) + "</ul>")
    parts.append(save_figure(page, Plot(plot_trial_sample_size, stats.get("trial_design"), side=side,
                                                          colours=page.colours),
                             "trial_sample_size", "Patients per arm by method × contrast (log scale), "
                             "bootstrap 95 % CIs; from trial_design.csv.", progress,
                             absent="No sample sizes: trial_design.csv is absent or has no follow-up."))
    parts.append(table_block(page, "trial_design", stats.get("trial_design"), caption="Trial design",
                             columns=["method", "contrast", "side", "effect", "years", "power", "n_per_arm",
                                      "n_per_arm_ci_lower", "n_per_arm_ci_upper", "delta_pct_per_year",
                                      "sd_change_at_duration", "measurement_sd_pct"]))
    parts.append(save_figure(page, Plot(plot_retest_bland_altman, stored, stats.get("reliability"), side=side,
                                                            colours=page.colours),
                             "retest_bland_altman", "Scan–rescan Bland–Altman per method × contrast; "
                             "open circles: repeat on another site's scanner.", progress,
                             absent="No scan–rescan repeats: declare them with the clinical column "
                                    "repeat_of (or timepoint <visit>-rescan)."))
    parts.append(table_block(page, "reliability", stats.get("reliability"), caption="Test–retest reliability",
                             columns=["method", "contrast", "side", "n", "n_other_site", "wcv_pct", "icc",
                                      "icc_ci_lower", "icc_ci_upper", "sem_mm3", "sdc_mm3", "sdc_pct", "rc_mm3"]))
    parts.append(table_block(page, "atrophy_recovery", stats.get("atrophy_recovery"),
                             caption="Measured vs true annualised change (% per year)",
                             columns=["method", "contrast", "side", "n", "reference_change_mean",
                                      "measured_change_mean", "bias_pct_per_year", "loa_lower", "loa_upper",
                                      "slope", "slope_ci_lower", "slope_ci_upper", "fraction_recovered",
                                      "fraction_recovered_ci_lower", "fraction_recovered_ci_upper"]))
    return "\n".join(parts)


def qc_flags_section(page, st, stats, progress, *, n_montages: int = 6) -> str:
    """The flagged scans of ``qc_flags.csv`` (errors first) and the montage of each of the
    first ``n_montages`` flagged (scan, method, contrast)."""
    flags = stats.get("qc_flags")
    if flags is None:
        progress.step("qc flags (absent)")
        return absent_html("No qc_flags.csv: the statistics stage did not produce it.")
    if table_note(flags) is not None or not len(flags) or "flag" not in flags:
        progress.step("qc flags (none)")
        return absent_html("No scan was flagged at the configured thresholds.")
    counts = flags.groupby(["flag", "severity"]).size().rename("scans").reset_index()
    parts = ["<p>Automated QC flags per scan × method (robust z within each method × contrast; "
             "thresholds in the stats config's <code>qc</code> section). "
             + esc(", ".join(f"{r.flag} ({r.severity}): {r.scans}" for r in counts.itertuples())) + ".</p>",
             table_block(page, "qc_flags", flags, caption="Flagged scans (errors first)")]
    if st is None:
        progress.step("qc flags (no store)")
        return "\n".join(parts)
    first = flags.drop_duplicates(["subject", "timepoint", "method", "contrast"]).head(n_montages)
    progress.add(max(len(first) - 1, 0))
    for r in first.itertuples(index=False):
        i = scan_index(st, r.subject, r.timepoint)
        ic = image_contrast_of(st, r.contrast)
        name = f"qcflag_{safe_name(r.subject)}_{safe_name(r.timepoint)}_{safe_name(r.method)}_{safe_name(r.contrast)}"
        if (i is not None and ic is not None and (r.method, r.contrast) in st.methods
                and bool(st.has_mask(r.method, r.contrast)[i]) and bool(st.has_image(ic)[i])):
            parts.append(defer_figure(
                page, f"qc/{name}.png", f"{r.flag} ({r.severity}): {r.reason}",
                f"{r.subject}/{r.timepoint} {r.method} · {r.contrast}: no stored mask to show ({r.reason}).",
                qc_montage_png, st, r.method, r.contrast, ic, [(f"{r.flag}\n{r.subject}/{r.timepoint}", i)],
                title=f"{combo_label(r.method, r.contrast)} · {r.subject}/{r.timepoint}"))
        else:
            parts.append(save_figure(page, None, name, "", progress,
                                     absent=f"{r.subject}/{r.timepoint} {r.method} · {r.contrast}: "
                                            f"no stored mask to show ({r.reason}).", sub="qc"))
    return "\n".join(parts)


