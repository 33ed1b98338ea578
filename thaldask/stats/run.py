"""The statistical stage as one call: results dataset -> tables (+ stats dataset in the store)."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from thaldask import __version__
from thaldask import config as _config
from thaldask._shared.paths import check_may_write, check_writable_dir, is_remote, write_text
from thaldask.errors import ConfigError, OutputError, StatsError, StatsStageWarning
from thaldask.schema import STATS_TABLES
from thaldask.stats._select import visits_only
from thaldask.stats._tables import table_to_xarray, tables_to_dataset
from thaldask.stats.agreement import fit_agreement
from thaldask.stats.clinical import fit_clinical
from thaldask.stats.combat import DEFAULT_PROTECT, harmonise
from thaldask.stats.comparison import fit_method_comparison
from thaldask.stats.longitudinal import fit_longitudinal, subject_annualised_change
from thaldask.stats.qc_flags import QC_DEFAULTS, fit_qc_flags
from thaldask.stats.reliability import fit_reliability, retest_pairs
from thaldask.stats.trial import (
    TRIAL_DEFAULTS,
    fit_atrophy_recovery,
    fit_trial_design,
    reference_change,
)
from thaldask.store import open_store
from thaldask.store.format import table_file

__all__ = [
    "run_stats",
    "write_stats",
    "headline_findings",
    "load_stats_config",
    "tables_to_dataset",
    "table_to_xarray",
]

DEFAULTS = {
    "side": None,  # None: total only; "all": left, right, total
    "outcomes": None,  # None: edss, sdmt where present
    "covariates": ["age", "sex"],
    "extra_covariates": [],
    "head_size": "residual",
    "clinical_timepoint": None,  # None: baseline; "all": every timepoint, subject random effect
    "clinical_groups": None,
    "edss_cut": None,  # None: thaldask.stats.edss-cut (5.5)
    "fdr_method": None,  # None: thaldask.stats.fdr-method (fdr_bh)
    "mixed": True,
    "harmonise": "auto",  # auto: when there are >= 2 sites; True / False
    "combat": {"eb": True, "mean_only": False, "protect": list(DEFAULT_PROTECT), "min_site_size": 5},
    "bootstrap": None,  # None: thaldask.stats.bootstrap (0 = off)
    "alpha": 0.05,
    # trial design (trial_design.csv): slowing, years, power, alpha, bootstrap, seed,
    # control_groups, patient_groups; see thaldask.stats.trial.TRIAL_DEFAULTS
    "trial": {},
    # QC flags (qc_flags.csv): z_warning, z_error, min_n, dice_min, swap_dice,
    # swap_total_dice, covariates, min_*, uncertainty_*; see thaldask.stats.qc_flags.QC_DEFAULTS
    "qc": {},
}


def load_stats_config(path) -> dict:
    """Read a stats YAML file (keys as :data:`DEFAULTS`, optionally under a ``stats:`` key)."""
    import yaml

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: stats config file not found")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: expected a mapping, got {type(data).__name__}")
    data = data.get("stats", data)
    unknown = sorted(set(data) - set(DEFAULTS))
    if unknown:
        raise ConfigError(f"{p}: unknown stats option(s) {unknown}; allowed: {sorted(DEFAULTS)}")
    return data


def _resolve(config) -> dict:
    cfg = {k: (dict(v) if isinstance(v, dict) else v) for k, v in DEFAULTS.items()}
    for k, v in (config or {}).items():
        if k not in DEFAULTS:
            raise ConfigError(f"unknown stats option {k!r}; allowed: {sorted(DEFAULTS)}")
        if k in ("combat", "trial", "qc"):
            cfg[k].update(v or {})
        else:
            cfg[k] = v
    if cfg["edss_cut"] is None:
        cfg["edss_cut"] = float(_config.get("stats.edss-cut", 5.5))
    if cfg["fdr_method"] is None:
        cfg["fdr_method"] = _config.get("stats.fdr-method", "fdr_bh")
    if cfg["bootstrap"] is None:
        cfg["bootstrap"] = int(_config.get("stats.bootstrap", 0) or 0)
    cfg["trial"] = {"bootstrap": int(_config.get("stats.trial-bootstrap", TRIAL_DEFAULTS["bootstrap"]))} | cfg["trial"]
    unknown = sorted(set(cfg["trial"]) - set(TRIAL_DEFAULTS))
    if unknown:
        raise ConfigError(f"unknown stats trial option(s) {unknown}; allowed: {sorted(TRIAL_DEFAULTS)}")
    unknown = sorted(set(cfg["qc"]) - set(QC_DEFAULTS))
    if unknown:
        raise ConfigError(f"unknown stats qc option(s) {unknown}; allowed: {sorted(QC_DEFAULTS)}")
    return cfg


def _failed(name: str, exc: Exception) -> pd.DataFrame:
    warnings.warn(f"stats: {name} not computed: {exc}", StatsStageWarning, stacklevel=3)
    return pd.DataFrame([{"note": f"not computed: {exc}"}])


def run_stats(ds: xr.Dataset, config: dict | None = None) -> dict[str, pd.DataFrame]:
    """Run every analysis of the statistical stage on a results dataset.

    Parameters
    ----------
    ds : xarray.Dataset
        Results dataset (PLAN/DESIGN schema), in memory.
    config : dict, optional
        Options (see :data:`DEFAULTS`); a YAML file can be read with :func:`load_stats_config`.

    Returns
    -------
    dict of str -> pandas.DataFrame
        ``agreement``, ``method_comparison``, ``clinical_cross``, ``longitudinal``,
        ``harmonisation``. Agreement and method comparison use the raw volumes (method and
        ground truth come from the same scan); clinical and longitudinal models use ComBat-
        harmonised volumes when harmonisation ran. An analysis the data cannot support (no
        ground truth, one timepoint, ...) gives a one-row table with a ``note`` instead of
        stopping the stage.
    """
    return _run(ds, _resolve(config))[0]


def _run(ds: xr.Dataset, cfg: dict) -> tuple[dict[str, pd.DataFrame], xr.Dataset | None]:
    """:func:`run_stats` with resolved options; also returns the ComBat-harmonised dataset
    the clinical and longitudinal models used (None when harmonisation did not run)."""
    alpha = cfg["alpha"]
    side = cfg["side"]
    tables: dict[str, pd.DataFrame] = {}
    try:  # scan-rescan repeats: reliability only; every other analysis sees visits
        tables["reliability"] = fit_reliability(ds, side=side, alpha=alpha, as_frame=True)
        if not len(tables["reliability"]):
            tables["reliability"] = pd.DataFrame([{"note": "no scan-rescan repeats (or fewer than 3 pairs)"}])
    except StatsError as exc:
        tables["reliability"] = _failed("reliability", exc)
    full = ds
    try:
        tables["qc_flags"] = fit_qc_flags(full, options=cfg["qc"])
        if not len(tables["qc_flags"]):
            tables["qc_flags"] = pd.DataFrame([{"note": "no scan flagged"}])
    except StatsError as exc:
        tables["qc_flags"] = _failed("QC flags", exc)
    ds = visits_only(full)
    has_gt = "gt_volume_mm3" in ds and bool(np.isfinite(ds["gt_volume_mm3"].values).any())
    if has_gt:
        try:
            tables["agreement"] = fit_agreement(ds, side=side, alpha=alpha, as_frame=True)
        except StatsError as exc:
            tables["agreement"] = _failed("agreement", exc)
        try:
            tables["method_comparison"] = fit_method_comparison(ds, side=side, as_frame=True)
        except StatsError as exc:
            tables["method_comparison"] = _failed("method comparison", exc)
    else:
        tables["agreement"] = pd.DataFrame([{"note": "no ground-truth volumes"}])
        tables["method_comparison"] = pd.DataFrame([{"note": "no ground-truth volumes"}])

    work = ds
    n_sites = 0
    if "site" in ds:
        vals = pd.Series(np.asarray(ds["site"].values).ravel()).dropna().astype(str)
        n_sites = vals[~vals.isin(["", "nan", "None"])].nunique()
    do_harm = cfg["harmonise"]
    if do_harm == "auto":
        do_harm = n_sites >= 2
    if do_harm:
        cb = cfg["combat"]
        try:
            work, tables["harmonisation"] = harmonise(
                ds, protect=cb["protect"], eb=cb["eb"], mean_only=cb["mean_only"],
                min_site_size=cb["min_site_size"],
            )
        except StatsError as exc:
            tables["harmonisation"] = _failed("harmonisation", exc)
            work = ds
    else:
        note = "single site: nothing to harmonise" if n_sites < 2 else "harmonisation switched off"
        tables["harmonisation"] = pd.DataFrame([{"note": note, "n_sites": n_sites}])

    head_size, head_note = cfg["head_size"], ""
    if head_size != "none" and "icv_mm3" not in work:  # an optional column: adjust without it
        head_size = "none"
        head_note = (f"head-size adjustment ({cfg['head_size']}) skipped: the clinical table has "
                     "no icv_mm3")
        warnings.warn(f"stats: {head_note}", StatsStageWarning, stacklevel=2)
    try:
        tables["clinical_cross"] = fit_clinical(
            work, outcomes=cfg["outcomes"], covariates=cfg["covariates"],
            extra_covariates=cfg["extra_covariates"], head_size=head_size,
            timepoint=cfg["clinical_timepoint"], side=side, groups=cfg["clinical_groups"],
            fdr_method=cfg["fdr_method"], alpha=alpha, bootstrap=cfg["bootstrap"], as_frame=True,
        )
        tables["clinical_cross"]["harmonised"] = work is not ds
        if head_note:
            cc = tables["clinical_cross"]
            old = cc["note"].fillna("").astype(str) if "note" in cc else ""
            cc["note"] = (old + "; " if "note" in cc else "") + head_note
            cc["note"] = cc["note"].str.lstrip("; ")
    except StatsError as exc:
        tables["clinical_cross"] = _failed("clinical associations", exc)
    try:
        tables["longitudinal"] = fit_longitudinal(
            work, edss_cut=cfg["edss_cut"], covariates=cfg["covariates"], side=side,
            mixed=cfg["mixed"], fdr_method=cfg["fdr_method"], alpha=alpha, as_frame=True,
        )
        tables["longitudinal"]["harmonised"] = work is not ds
    except StatsError as exc:
        tables["longitudinal"] = _failed("longitudinal", exc)
    try:
        tables["atrophy_recovery"] = fit_atrophy_recovery(ds, side=side, alpha=alpha, as_frame=True)
        if not len(tables["atrophy_recovery"]):
            tables["atrophy_recovery"] = pd.DataFrame([{"note": "fewer than 3 subjects with ground truth at baseline and follow-up"}])
    except StatsError as exc:
        tables["atrophy_recovery"] = _failed("atrophy recovery", exc)
    try:
        rel = _trial_reliability(full, side, alpha) if "method" in tables["reliability"] else None
        tables["trial_design"] = fit_trial_design(work, reliability=rel, side=side, options=cfg["trial"],
                                                  as_frame=True)
        if not len(tables["trial_design"]):
            tables["trial_design"] = pd.DataFrame([{"note": "fewer than 3 patients with a follow-up (no annualised change to power a trial on)"}])
    except StatsError as exc:
        tables["trial_design"] = _failed("trial design", exc)
    return {k: tables[k] for k in STATS_TABLES}, (work if work is not ds else None)


def _trial_reliability(full: xr.Dataset, side, alpha) -> pd.DataFrame:
    """The scan error a trial sees: same-site repeat pairs (a trial scans a patient on one
    scanner) where a method has ≥ 3 of them, else all its pairs; ``pairs`` says which."""
    every = fit_reliability(full, side=side, alpha=alpha, as_frame=True).assign(pairs="all repeats")
    same = fit_reliability(full, side=side, alpha=alpha, same_site=True, as_frame=True).assign(
        pairs="same-site repeats")
    keys = ["method", "contrast", "side"]
    rest = every.merge(same[keys], on=keys, how="left", indicator=True)
    rest = every[(rest["_merge"] == "left_only").to_numpy()]
    return pd.concat([same, rest], ignore_index=True)


def write_stats(store_path, *, out=None, config=None) -> dict[str, Path | str]:
    """Run :func:`run_stats` on a store's results and write the tables.

    Parameters
    ----------
    store_path : str or path
        Cohort store holding a ``results`` dataset.
    out : str or path, optional
        Folder for the CSV files (default: inside the store folder, or inside the store on
        object storage, so that tables of two stores never collide).
    config : dict or path, optional
        Options, or a YAML file (see :func:`load_stats_config`).

    Returns
    -------
    dict of str -> Path (a URL string for a store on object storage)
        The CSV written per table; the same tables are stored as the ``stats`` dataset
        in the store (``open_store(path).open_results("stats")``), with the per-scan
        numbers behind them that the report draws: ``annualised_change_pct`` (subject,
        method, contrast, side; % per year) with ``annualised_change_years``,
        ``annualised_change_group``, ``baseline_timepoint`` and ``followup_timepoint``
        (subject) when the longitudinal models ran
        (:func:`thaldask.stats.longitudinal.subject_annualised_change` of the volumes they
        used), and ``harmonised_volume_mm3`` (subject, timepoint, method, contrast, side)
        when ComBat ran.
    """
    if config is not None and not isinstance(config, dict):
        config = load_stats_config(config)
    cfg = _resolve(config)
    st = open_store(store_path)
    ds = st.open_results()
    if out is not None:
        folder = check_writable_dir(out)
    elif is_remote(store_path):  # inside the store on object storage too
        folder = None
    else:  # inside the store: two stores in one folder never share tables
        folder = Path(os.fspath(store_path)).resolve()
        if not os.access(folder, os.W_OK):
            raise OutputError(f"{store_path}: the store is read-only; give a folder for the "
                              "tables (--out DIR)")
    for name in STATS_TABLES if folder is not None else ():  # before any work: never replace
        check_may_write(folder / f"{name}.csv")  # a file thaldask did not write
    tables, harmonised = _run(ds, cfg)
    paths = {}
    full = ds
    ds = visits_only(ds)
    for name, df in tables.items():
        p = folder / f"{name}.csv" if folder is not None else table_file(store_path, name)
        paths[name] = write_text(p, df.to_csv(index=False), storage_options=st.storage_options)
    sds = tables_to_dataset(tables, {"thaldask_version": __version__, "source": "results"})
    sds = xr.merge([sds, *_per_subject(ds, harmonised, tables, cfg, full)], combine_attrs="override")
    if is_remote(st.path) or os.access(os.fspath(st.path), os.W_OK):
        st.write_results(sds, name="stats")
    else:  # a read-only store (an archive, another group's data): the tables are the output
        warnings.warn(f"stats: {st.path} is read-only; the stats dataset was not stored in it "
                      f"(tables in {folder})", StatsStageWarning, stacklevel=2)
    return paths


def _per_subject(ds: xr.Dataset, harmonised: xr.Dataset | None, tables, cfg, full=None) -> list[xr.Dataset]:
    """The per-scan numbers behind the tables, stored beside them so the report draws them
    instead of recomputing: the per-subject annualised change that ``longitudinal.csv``
    summarises (from the volumes its models used), the ComBat-harmonised volumes, the
    test-retest pairs behind ``reliability.csv`` and the ground-truth change behind
    ``atrophy_recovery.csv``."""
    parts = []
    if full is not None and "method" in tables["reliability"]:
        parts.append(retest_pairs(full, side=cfg["side"]))
    if "method" in tables["atrophy_recovery"]:
        parts.append(reference_change(ds, side=cfg["side"]).to_dataset())
    if harmonised is not None:
        h = harmonised["volume_mm3"].rename("harmonised_volume_mm3")
        h.attrs = {"units": "mm³", "harmonisation": harmonised.attrs.get("harmonisation", "ComBat")}
        parts.append(h.to_dataset())
    if "method" in tables["longitudinal"]:  # the longitudinal models ran
        ch = subject_annualised_change(harmonised if harmonised is not None else ds, side=cfg["side"])
        ch["annualised_change_pct"].attrs["harmonised"] = int(harmonised is not None)
        parts.append(ch)
    return parts


# --------------------------------------------------------------------------------------------
def _fmt_p(p):
    if not np.isfinite(p):
        return "n/a"
    return f"{p:.1e}" if p < 1e-3 else f"{p:.3f}"


def _is_alt(contrast: str) -> bool:
    """R1 or an ensemble (several contrasts joined by '+')."""
    return "R1" in contrast.split("+") or "+" in contrast


def _label(row) -> str:
    return f"{row['method']} ({row['contrast']})"


def _n(row) -> str:
    n = float(row.get("n", np.nan))
    return str(int(n)) if np.isfinite(n) else "n/a"


def _ci(row, prefix: str, fmt: str, lo_col=None, hi_col=None) -> str:
    """`` [lo, hi]`` of a row's CI columns, or `` (no CI)`` where they are missing (too
    few subjects), so a line never shows a blank or ``nan`` interval."""
    lo = row.get(lo_col or f"{prefix}_lower", np.nan)
    hi = row.get(hi_col or f"{prefix}_upper", np.nan)
    try:
        lo, hi = float(lo), float(hi)
    except (TypeError, ValueError):
        lo = hi = np.nan
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return " (no CI)"
    return f" [{fmt.format(lo)}, {fmt.format(hi)}]"


def headline_findings(tables: dict[str, pd.DataFrame]) -> list[str]:
    """One-line headline findings from the stage's tables (printed by the demo).

    Which method has the best Dice, the least volume bias (and where proportional bias is),
    the strongest EDSS and SDMT associations and the strongest link of atrophy with EDSS
    worsening; for each, whether R1 or multi-contrast ensembles change the answer compared
    with T1w-only methods.
    """
    lines: list[str] = []

    def total(df):
        if df is None or "side" not in df:
            return None
        d = df[df["side"] == "total"]
        return d if len(d) else None

    mc = tables.get("method_comparison")
    paired = None
    if mc is not None and "test" in mc and "p_holm" in mc:
        paired = mc[(mc["test"] == "wilcoxon") & (mc["side"] == "total")]

    def paired_p(metric, a, b) -> float:
        """Holm-corrected Wilcoxon p of the paired comparison of a and b on ``metric``."""
        if paired is None or metric is None:
            return np.nan
        pa, pb = (a["method"], a["contrast"]), (b["method"], b["contrast"])
        for _, r in paired[paired["metric"] == metric].iterrows():
            if {(r["method_a"], r["contrast_a"]), (r["method_b"], r["contrast_b"])} == {pa, pb}:
                return float(r["p_holm"])
        return np.nan

    def compare_alt(d, col, pick, what, fmt, metric=None):
        """Whether R1/ensembles change the answer: a claim of a difference only when the
        paired test (Wilcoxon, Holm-corrected) of ``metric`` finds one."""
        best = pick(d, col)
        base = d[~d["contrast"].map(_is_alt)]
        if best is None or not d["contrast"].map(_is_alt).any() or not len(base):
            return ""
        b0 = pick(base, col)
        if b0 is None:
            return ""
        if not _is_alt(best["contrast"]):
            return "; R1/ensembles do not change it"
        other = f"{_label(b0)}, {fmt(b0)}"
        p = paired_p(metric, best, b0)
        if not np.isfinite(p):
            return (f"; an R1/ensemble method ranks first, but no paired test compares them "
                    f"(best without R1/ensembles: {other})")
        if p < 0.05:
            return f"; R1/ensembles change it (best without them: {other}; paired Wilcoxon, Holm p {_fmt_p(p)})"
        return (f"; no detectable difference from the best without R1/ensembles ({other}; paired "
                f"Wilcoxon, Holm p {_fmt_p(p)})")

    def argmax(d, col):
        d = d[np.isfinite(d[col].astype(float))]
        return None if not len(d) else d.loc[d[col].astype(float).idxmax()]

    def argmin_abs(d, col):
        d = d[np.isfinite(d[col].astype(float))]
        return None if not len(d) else d.loc[d[col].astype(float).abs().idxmin()]

    ag = total(tables.get("agreement"))
    if ag is not None and "dice_mean" in ag:
        ag = ag[ag["method"] != "gt"]
        b = argmax(ag, "dice_mean")
        if b is not None:
            f = lambda r: f"Dice {r['dice_mean']:.3f}"  # noqa: E731
            lines.append(
                f"Best Dice: {_label(b)}, mean {b['dice_mean']:.3f}"
                + _ci(b, "dice_mean_ci", "{:.3f}") + f", n = {_n(b)}"
                + compare_alt(ag, "dice_mean", argmax, "Dice", f, "dice")
            )
        b = argmin_abs(ag, "bias_mm3")
        if b is not None:
            f = lambda r: f"bias {r['bias_mm3']:+.0f} mm³"  # noqa: E731
            lines.append(
                f"Least volume bias: {_label(b)}, {b['bias_mm3']:+.0f} mm³"
                + _ci(b, "bias_mm3_ci", "{:+.0f}") + ", limits of agreement "
                + (f"{b['loa_lower_mm3']:+.0f} to {b['loa_upper_mm3']:+.0f} mm³"
                   if np.isfinite(float(b["loa_lower_mm3"])) else "n/a")
                + compare_alt(ag, "bias_mm3", argmin_abs, "bias", f, "abs_volume_error_mm3")
            )
        pb = ag[ag.get("prop_bias", False) == True]  # noqa: E712
        if len(pb):
            parts = [f"{_label(r)} slope {r['prop_bias_slope']:+.3f} (p {_fmt_p(r['prop_bias_p'])})"
                     for _, r in pb.iterrows()]
            lines.append("Proportional bias: " + "; ".join(parts))
        else:
            lines.append("Proportional bias: none detected")
    cc = total(tables.get("clinical_cross"))
    if cc is not None and "beta_std" in cc:
        for outcome in ("edss", "sdmt"):
            d = cc[cc["outcome"] == outcome]
            if not len(d):
                continue
            b = d.assign(absb=d["beta_std"].abs())
            r = argmax(b, "absb")
            if r is None:
                continue
            f = lambda r: f"β {r['beta_std']:+.3f}"  # noqa: E731
            lines.append(
                f"Strongest {outcome.upper()} association: {_label(r)}, standardised β "
                f"{r['beta_std']:+.3f}" + _ci(r, "beta_std_ci", "{:+.3f}") + ", "
                f"FDR q {_fmt_p(r['p_fdr'])}, n = {_n(r)}"
                + compare_alt(b, "absb", argmax, outcome, f)
            )
    lo = total(tables.get("longitudinal"))
    if lo is not None and "analysis" in lo:
        d = lo[(lo["analysis"] == "worsening_logistic") & np.isfinite(lo["estimate"].astype(float))]
        if len(d):
            d = d.assign(strength=np.abs(np.log(d["estimate"].astype(float))))
            r = argmax(d, "strength")
            f = lambda r: f"OR {r['estimate']:.2f}"  # noqa: E731
            lines.append(
                f"Strongest atrophy–EDSS worsening link: {_label(r)}, OR per 1 %/year "
                f"{r['estimate']:.2f}" + _ci(r, "ci", "{:.2f}", "ci_lower", "ci_upper") + f", p {_fmt_p(r['p'])}, "
                f"AUC {r['auc']:.2f}, {int(r['n_events'])}/{int(r['n'])} worsened"
                + compare_alt(d, "strength", argmax, "OR", f)
            )
    rel = total(tables.get("reliability"))
    if rel is not None and "sdc_pct" in rel:
        r = argmin_abs(rel, "sdc_pct")
        if r is not None:
            lines.append(
                f"Most repeatable (scan-rescan): {_label(r)}, smallest detectable change "
                f"{r['sdc_pct']:.1f} % ({r['sdc_mm3']:.0f} mm³), wCV {r['wcv_pct']:.2f} %, ICC "
                f"{r['icc']:.3f}" + _ci(r, "icc_ci", "{:.3f}") + f", n = {_n(r)} pairs"
            )
    td = total(tables.get("trial_design"))
    if td is not None and "n_per_arm" in td:
        d = td[(td["effect"] == "to_control_rate") & (td["power"].astype(float) == 0.8)]
        if len(d):
            d = d[d["years"].astype(float) == d["years"].astype(float).max()]
            r = argmin_abs(d, "n_per_arm")
            if r is not None:
                lines.append(
                    f"Smallest trial to slow atrophy to the control rate ({float(r['years']):g} years, "
                    f"80 % power): {_label(r)}, {int(r['n_per_arm'])} patients per arm"
                    + _ci(r, "n_per_arm_ci", "{:.0f}")
                    + f", from {int(r['n_patients'])} patients and {int(r['n_controls'])} controls"
                )
    hm = tables.get("harmonisation")
    if hm is not None and "site_p_before" in hm:
        t = hm[hm["side"] == "total"] if "side" in hm else hm
        if len(t):
            lines.append(
                f"ComBat harmonisation over {t['site'].nunique()} sites: median site p "
                f"{_fmt_p(float(t['site_p_before'].median()))} before, "
                f"{_fmt_p(float(t['site_p_after'].median()))} after"
            )
    return lines
