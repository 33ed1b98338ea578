"""Which method should a trial use: how much true atrophy a method recovers, and how many
patients per arm a two-arm trial needs with its measurements.

Both take the per-subject annualised % change that the longitudinal models use
(:func:`thaldask.stats.longitudinal.subject_annualised_change`, baseline to the last
follow-up, scan-rescan repeats excluded) and, for the sample size, the measurement error
from test-retest repeats (:func:`thaldask.stats.reliability.fit_reliability`) to project the
SD of individual change to other trial durations.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import xarray as xr
from scipy import stats

from thaldask.errors import StatsError
from thaldask.stats import _data
from thaldask.stats._select import baseline_followup, visits_only
from thaldask.stats._tables import as_result
from thaldask.stats.kernels import n_per_arm_batched, ols_batched
from thaldask.stats.longitudinal import annualised_change, subject_annualised_change

__all__ = [
    "fit_atrophy_recovery",
    "fit_trial_design",
    "reference_change",
    "TRIAL_DEFAULTS",
    "RECOVERY_COLUMNS",
    "DESIGN_COLUMNS",
]

#: options of :func:`fit_trial_design` (the stats config's ``trial`` section)
TRIAL_DEFAULTS = {
    "slowing": [0.25, 0.5, "control"],  # fractions of the patients' rate, or "control"
    "years": [1, 2],
    "power": [0.8, 0.9],
    "alpha": 0.05,
    "bootstrap": 200,
    "seed": 0,
    "control_groups": ["HC"],
    "patient_groups": None,  # None: every group that is not a control group
}

RECOVERY_COLUMNS = [
    "method", "contrast", "side", "reference", "n", "reference_change_mean",
    "measured_change_mean", "bias_pct_per_year", "bias_ci_lower", "bias_ci_upper",
    "loa_lower", "loa_upper", "slope", "slope_ci_lower", "slope_ci_upper", "intercept",
    "pearson_r", "fraction_recovered", "fraction_recovered_ci_lower",
    "fraction_recovered_ci_upper", "formula",
]

DESIGN_COLUMNS = [
    "method", "contrast", "side", "effect", "years", "power", "alpha", "n_per_arm",
    "n_per_arm_ci_lower", "n_per_arm_ci_upper", "delta_pct_per_year", "patient_change_mean",
    "patient_change_sd", "control_change_mean", "sd_change_at_duration",
    "measurement_sd_pct", "measurement_sd_source", "n_patients", "n_controls", "formula",
]


def reference_change(ds: xr.Dataset, *, side=None) -> xr.DataArray:
    """Per-subject annualised % change of the ground-truth volume (subject, side), NaN
    where a subject lacks ground truth at its baseline or follow-up (the same scans as
    :func:`~thaldask.stats.longitudinal.subject_annualised_change`). In a synthetic cohort the
    ground truth is the planted label map, so this is the planted change of each scan pair."""
    ds = visits_only(ds)
    _data.require(ds, "gt_volume_mm3")
    t0, follow, years = baseline_followup(ds)
    sides = _data.sides(ds, side)
    g = ds["gt_volume_mm3"].sel(side=sides).transpose("subject", "timepoint", "side").values
    S = g.shape[0]
    g1 = np.where(follow[:, None] >= 0, g[np.arange(S), np.maximum(follow, 0)], np.nan)
    return xr.DataArray(annualised_change(g[:, t0], g1, years[:, None]), dims=("subject", "side"),
                        coords={"subject": ds["subject"].values, "side": sides},
                        name="reference_change_pct", attrs={"units": "% per year"})


def _ratio_ci(x, y, alpha, rng, n_boot=500):
    """Percentile bootstrap CI of mean(x) / mean(y) (paired rows), vectorised."""
    n = x.size
    if n < 3:
        return np.nan, np.nan
    idx = rng.integers(0, n, (n_boot, n))
    with np.errstate(all="ignore"):
        r = x[idx].mean(axis=1) / y[idx].mean(axis=1)
    r = r[np.isfinite(r)]
    if not r.size:
        return np.nan, np.nan
    return tuple(np.quantile(r, [alpha / 2, 1 - alpha / 2]))


def fit_atrophy_recovery(ds: xr.Dataset, *, side=None, alpha: float = 0.05, seed: int = 0,
                         as_frame: bool = False):
    """Measured vs true annualised thalamic change for every method × contrast × side.

    The true change is the ground truth's (:func:`reference_change`): subjects with ground
    truth at both baseline and follow-up. Per method: ``bias`` = mean(measured − true) with
    its t CI and limits of agreement (bias ± z SD), OLS ``slope`` and ``intercept`` of
    measured on true (slope 1: the method tracks individual change), Pearson r, and the
    ``fraction_recovered`` = mean measured / mean true change with a percentile bootstrap CI
    (1: the group's atrophy is measured in full). All in % per year. Empty when no subject
    has ground truth at two visits.
    """
    visits = visits_only(ds)
    if "gt_volume_mm3" not in visits or visits.sizes.get("timepoint", 1) < 2:
        return as_result("atrophy_recovery", pd.DataFrame(columns=RECOVERY_COLUMNS), as_frame=as_frame)
    ref = reference_change(visits, side=side)
    chg = subject_annualised_change(visits, side=side)["annualised_change_pct"]
    rng = np.random.default_rng(seed)
    z = stats.norm.ppf(1 - alpha / 2)
    rows = []
    for m, c in _data.method_contrasts(visits, "volume_mm3"):
        for s in [str(x) for x in ref["side"].values]:
            y = chg.sel({"method": m, "contrast": c, "side": s}).values
            x = ref.sel(side=s).values
            ok = np.isfinite(x) & np.isfinite(y)
            n = int(ok.sum())
            if n < 3:
                continue
            x, y = x[ok], y[ok]
            d = y - x
            sd = d.std(ddof=1)
            tq = stats.t.ppf(1 - alpha / 2, n - 1)
            fit = ols_batched(np.c_[np.ones(n), x], y)
            lo, hi = fit.conf_int(alpha)
            with np.errstate(all="ignore"):
                r = np.corrcoef(x, y)[0, 1] if x.std() > 0 and y.std() > 0 else np.nan
                frac = y.mean() / x.mean() if x.mean() != 0 else np.nan
            flo, fhi = _ratio_ci(y, x, alpha, rng)
            rows.append({
                "method": m, "contrast": c, "side": s, "reference": "gt", "n": n,
                "reference_change_mean": x.mean(), "measured_change_mean": y.mean(),
                "bias_pct_per_year": d.mean(), "bias_ci_lower": d.mean() - tq * sd / np.sqrt(n),
                "bias_ci_upper": d.mean() + tq * sd / np.sqrt(n), "loa_lower": d.mean() - z * sd,
                "loa_upper": d.mean() + z * sd, "slope": fit.params[1], "slope_ci_lower": lo[1],
                "slope_ci_upper": hi[1], "intercept": fit.params[0], "pearson_r": r,
                "fraction_recovered": frac, "fraction_recovered_ci_lower": flo,
                "fraction_recovered_ci_upper": fhi,
                "formula": "measured ~ 1 + true annualised % change (ground truth, same scans)",
            })
    return as_result("atrophy_recovery", pd.DataFrame(rows, columns=RECOVERY_COLUMNS), as_frame=as_frame,
                     attrs={"alpha": alpha})


def _effects(slowing) -> list[tuple[str, float | None]]:
    out = []
    for s in slowing:
        if isinstance(s, str):
            if s != "control":
                raise StatsError(f"trial slowing {s!r}: use a fraction (0.25) or 'control'")
            out.append(("to_control_rate", None))
        else:
            f = float(s)
            if not 0 < f <= 1:
                raise StatsError(f"trial slowing {s!r} must be a fraction in (0, 1] or 'control'")
            out.append((f"slow_{round(100 * f):d}pct", f))
    return out


def _sd_at(sd_obs, sigma_e, inv_y2, years):
    """SD of annualised change measured over ``years``: the true between-subject part of the
    observed SD plus measurement error 2 σ_e² / T² (σ_e: one scan's error, % of volume).
    The error variance is capped at the observed variance (σ_e² ≤ s² / (2 mean(1/y²))), so
    the projection always reproduces the observed SD over the observed intervals."""
    with np.errstate(all="ignore"):
        if not np.isfinite(sigma_e):
            return sd_obs
        e2 = np.minimum(sigma_e**2, sd_obs**2 / (2 * inv_y2))
        return np.sqrt(sd_obs**2 - 2 * e2 * inv_y2 + 2 * e2 / years**2)


def fit_trial_design(ds: xr.Dataset, *, reliability: pd.DataFrame | None = None, side=None,
                     options: dict | None = None, group_var: str = "group", as_frame: bool = False):
    """Patients per arm for a two-arm trial of a treatment that slows thalamic atrophy.

    For every method × contrast × side: from the patients' annualised % change (mean ``m_p``,
    SD ``s``) and the controls' mean ``m_c``, the treatment effect is a slowing by a fraction
    ``f`` of the patients' rate (``delta = f |m_p|``) or to the control rate
    (``delta = |m_p - m_c|``); ``n per arm = 2 ((t_{1-α/2} + t_power) s_T / delta)²``
    (:func:`~thaldask.stats.kernels.n_per_arm_batched`), where ``s_T`` is the SD of individual
    change over a trial of ``T`` years: the observed between-subject part plus the
    measurement error ``2 σ_e² / T²`` with ``σ_e`` the method's single-scan error in % of
    volume from test-retest repeats (``reliability`` table: ``sem_mm3 / mean_mm3``; its
    ``pairs`` column, if any, is reported as ``measurement_sd_source``), capped so that over
    the observed intervals ``s_T`` is the observed SD. Without repeats ``s_T`` is the
    observed SD for every ``T``. ``n_per_arm`` is rounded up; its CI
    is the percentile bootstrap over subjects (patients and controls resampled separately).

    ``options``: :data:`TRIAL_DEFAULTS` keys. Empty without a follow-up.
    """
    opt = dict(TRIAL_DEFAULTS) | dict(options or {})
    unknown = sorted(set(opt) - set(TRIAL_DEFAULTS))
    if unknown:
        raise StatsError(f"unknown trial option(s) {unknown}; allowed: {sorted(TRIAL_DEFAULTS)}")
    visits = visits_only(ds)
    empty = as_result("trial_design", pd.DataFrame(columns=DESIGN_COLUMNS), as_frame=as_frame)
    if visits.sizes.get("timepoint", 1) < 2 or "years_since_baseline" not in visits:
        return empty
    ch = subject_annualised_change(visits, side=side, group_var=group_var)
    chg = ch["annualised_change_pct"]
    yrs = ch["annualised_change_years"].values
    if "annualised_change_group" not in ch:
        raise StatsError(f"trial design needs the clinical variable {group_var!r} (patients vs controls)")
    grp = ch["annualised_change_group"].values.astype(str)
    controls = np.isin(grp, list(opt["control_groups"]))
    patients = (np.isin(grp, list(opt["patient_groups"])) if opt["patient_groups"] is not None
                else ~controls & ~np.isin(grp, ["", "nan", "None"]))
    effects = _effects(opt["slowing"])
    years = np.asarray(opt["years"], float)
    powers = np.asarray(opt["power"], float)
    alpha = float(opt["alpha"])
    B = int(opt["bootstrap"])
    rng = np.random.default_rng(opt["seed"])
    rel = reliability if reliability is not None and "sem_mm3" in reliability else None
    rows = []
    for m, c in _data.method_contrasts(visits, "volume_mm3"):
        for s in [str(x) for x in chg["side"].values]:
            v = chg.sel({"method": m, "contrast": c, "side": s}).values
            p_ok = patients & np.isfinite(v)
            c_ok = controls & np.isfinite(v)
            xp, xc = v[p_ok], v[c_ok]
            if xp.size < 3:
                continue
            inv_y2 = float(np.mean(1 / yrs[p_ok] ** 2))
            sigma_e, source = np.nan, "none (no repeats): observed SD at every duration"
            if rel is not None:
                r = rel[(rel["method"] == m) & (rel["contrast"] == c) & (rel["side"] == s)]
                if len(r):
                    sigma_e = float(100 * r["sem_mm3"].iloc[0] / r["mean_mm3"].iloc[0])
                    source = str(r["pairs"].iloc[0]) if "pairs" in r else "repeats"
            # bootstrap replicates of (m_p, s_p, m_c); column 0 is the sample itself
            ip = np.c_[np.arange(xp.size), rng.integers(0, xp.size, (xp.size, B))] if B else np.arange(xp.size)[:, None]
            mp = xp[ip].mean(axis=0)
            sp = xp[ip].std(axis=0, ddof=1)
            if xc.size >= 2:
                ic = np.c_[np.arange(xc.size), rng.integers(0, xc.size, (xc.size, B))] if B else np.arange(xc.size)[:, None]
                mc = xc[ic].mean(axis=0)
            else:
                mc = np.full(mp.shape, np.nan)
            for name, f in effects:
                delta = f * np.abs(mp) if f is not None else np.abs(mp - mc)
                for T in years:
                    sdT = _sd_at(sp, sigma_e, inv_y2, T)
                    for pw in powers:
                        n = n_per_arm_batched(delta, sdT, alpha=alpha, power=pw)
                        boot = n[1:][np.isfinite(n[1:])]
                        lo, hi = (np.quantile(boot, [alpha / 2, 1 - alpha / 2]) if boot.size
                                  else (np.nan, np.nan))
                        rows.append({
                            "method": m, "contrast": c, "side": s, "effect": name, "years": T,
                            "power": pw, "alpha": alpha,
                            "n_per_arm": float(np.ceil(n[0])) if np.isfinite(n[0]) else np.nan,
                            "n_per_arm_ci_lower": float(np.ceil(lo)) if np.isfinite(lo) else np.nan,
                            "n_per_arm_ci_upper": float(np.ceil(hi)) if np.isfinite(hi) else np.nan,
                            "delta_pct_per_year": delta[0], "patient_change_mean": mp[0],
                            "patient_change_sd": sp[0], "control_change_mean": mc[0],
                            "sd_change_at_duration": sdT[0], "measurement_sd_pct": sigma_e,
                            "measurement_sd_source": source,
                            "n_patients": int(xp.size), "n_controls": int(xc.size),
                            "formula": "n = 2((t_{1-a/2,2n-2} + t_{power,2n-2}) sd_T / delta)^2; "
                                       "sd_T^2 = sd_obs^2 - 2 se^2 mean(1/y^2) + 2 se^2 / T^2",
                        })
    out = pd.DataFrame(rows, columns=DESIGN_COLUMNS)
    return as_result("trial_design", out, as_frame=as_frame,
                     attrs={"alpha": alpha, "bootstrap": B})
