"""Longitudinal analyses: annualised thalamic volume change, EDSS worsening, and a linear
mixed model of volume over time by group."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import xarray as xr
from scipy import stats

from thaldask.errors import ConvergenceWarning, StatsError
from thaldask.stats import _data
from thaldask.stats._select import baseline_followup
from thaldask.stats._tables import as_result
from thaldask.stats.kernels import auc_batched, logit_batched
from thaldask.stats.multitest import p_adjust

__all__ = ["fit_longitudinal", "edss_worsening", "annualised_change", "subject_annualised_change", "hedges_g"]

CHANGE_FORMULA = "100 * (volume[follow-up] - volume[baseline]) / volume[baseline] / years"

COLUMNS = [
    "analysis", "method", "contrast", "side", "term", "estimate", "estimate_name", "se",
    "ci_lower", "ci_upper", "p", "p_fdr", "n", "n_events", "auc", "converged", "optimizer",
    "random_effects", "formula",
]


def edss_worsening(edss0, edss1, *, cut: float = 5.5) -> np.ndarray:
    """Confirmed-style EDSS worsening by the baseline-dependent rule.

    Worsening is an increase of ≥ 1.5 from a baseline of 0, ≥ 1.0 from a baseline up to
    ``cut`` (usually 5.0 or 5.5, inclusive), and ≥ 0.5 above it. Returns float 1/0, NaN
    where either score is missing.

    >>> edss_worsening([0, 0, 2.0, 5.5, 6.0], [1.0, 1.5, 3.0, 6.0, 6.5]).tolist()
    [0.0, 1.0, 1.0, 0.0, 1.0]
    """
    if cut not in (5.0, 5.5):
        warnings.warn(f"EDSS cut {cut} is unusual; the rule uses 5.0 or 5.5", stacklevel=2)
    e0 = np.asarray(edss0, float)
    e1 = np.asarray(edss1, float)
    need = np.where(e0 == 0, 1.5, np.where(e0 <= cut, 1.0, 0.5))
    out = ((e1 - e0) >= need - 1e-9).astype(float)
    return np.where(np.isfinite(e0) & np.isfinite(e1), out, np.nan)


def annualised_change(v0, v1, years) -> np.ndarray:
    """Annualised percentage change ``100 (v1 - v0) / v0 / years`` (% per year).

    >>> float(annualised_change(10000.0, 9900.0, 2.0))
    -0.5
    """
    v0 = np.asarray(v0, float)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = 100 * (np.asarray(v1, float) - v0) / v0 / np.asarray(years, float)
    return np.where(np.isfinite(out), out, np.nan)


def hedges_g(a, b, *, alpha: float = 0.05) -> tuple[float, float, float]:
    """Hedges' g (mean(a) - mean(b), pooled SD, small-sample corrected) with a normal CI."""
    a = np.asarray(a, float)
    b = np.asarray(b, float)
    a, b = a[np.isfinite(a)], b[np.isfinite(b)]
    n1, n2 = a.size, b.size
    if n1 < 2 or n2 < 2:
        return (np.nan, np.nan, np.nan)
    sp = np.sqrt(((n1 - 1) * a.var(ddof=1) + (n2 - 1) * b.var(ddof=1)) / (n1 + n2 - 2))
    if sp == 0:
        return (np.nan, np.nan, np.nan)
    j = 1 - 3 / (4 * (n1 + n2) - 9)
    g = j * (a.mean() - b.mean()) / sp
    se = np.sqrt((n1 + n2) / (n1 * n2) + g**2 / (2 * (n1 + n2)))
    q = stats.norm.ppf(1 - alpha / 2)
    return (float(g), float(g - q * se), float(g + q * se))


def subject_annualised_change(ds: xr.Dataset, *, side=None, group_var: str = "group") -> xr.Dataset:
    """Per-subject annualised % volume change, baseline to follow-up: the values that the
    ``annualised_change`` rows of :func:`fit_longitudinal` summarise and that its worsening
    models take as the predictor.

    Baseline and follow-up are :func:`thaldask.stats._select.baseline_followup`'s (the
    first timepoint in time order; the last later one with ``years_since_baseline > 0``).

    Parameters
    ----------
    ds : xarray.Dataset
        Results dataset with ``volume_mm3`` and ``years_since_baseline`` (≥ 2 timepoints).
    side : str, list or "all", optional
        As in :func:`fit_longitudinal`; default ``"total"``.
    group_var : str
        The clinical variable the table's ``annualised_change`` rows are grouped by.

    Returns
    -------
    xarray.Dataset
        ``annualised_change_pct`` (subject, method, contrast, side), % per year, NaN where a
        subject has no follow-up or a volume is missing; ``annualised_change_years``
        (subject), years between the two scans; ``baseline_timepoint`` and
        ``followup_timepoint`` (subject; ``""``: none) and, when the dataset has ``group_var``,
        ``annualised_change_group`` (subject), its value at baseline (the table's groups).
    """
    _data.require(ds, "volume_mm3")
    if ds.sizes.get("timepoint", 1) < 2:
        raise StatsError(f"longitudinal models need ≥ 2 timepoints; the dataset has {ds.sizes.get('timepoint', 1)}")
    t0, follow, years = baseline_followup(ds)
    sides = _data.sides(ds, side)
    S = ds.sizes["subject"]
    v = ds["volume_mm3"].sel(side=sides).transpose("subject", "timepoint", "method", "contrast", "side").values
    v1 = np.where(follow[:, None, None, None] >= 0, v[np.arange(S), np.maximum(follow, 0)], np.nan)
    chg = annualised_change(v[:, t0], v1, years[:, None, None, None])  # (S, M, C, D)
    tps = np.asarray([str(t) for t in ds["timepoint"].values], dtype=object)
    out = xr.Dataset(
        {
            "annualised_change_pct": (("subject", "method", "contrast", "side"), chg),
            "annualised_change_years": ("subject", years),
            "baseline_timepoint": ("subject", np.full(S, tps[t0], dtype=object)),
            "followup_timepoint": ("subject", np.where(follow >= 0, tps[np.maximum(follow, 0)], "").astype(object)),
        },
        coords={"subject": ds["subject"].values, "method": ds["method"].values,
                "contrast": ds["contrast"].values, "side": sides},
    )
    base = _data.clinical_frame(ds).iloc[np.arange(S) * ds.sizes["timepoint"] + t0]
    if group_var in base:
        out["annualised_change_group"] = ("subject", base[group_var].astype(str).to_numpy(dtype=object))
        out["annualised_change_group"].attrs["variable"] = group_var
    out["annualised_change_pct"].attrs["units"] = "% per year"
    out["annualised_change_pct"].attrs["formula"] = CHANGE_FORMULA
    return out


def fit_longitudinal(
    ds: xr.Dataset,
    *,
    edss_cut: float = 5.5,
    covariates=("age", "sex"),
    side=None,
    methods=None,
    groups=None,
    mixed: bool = True,
    group_var: str = "group",
    fdr_method: str = "fdr_bh",
    alpha: float = 0.05,
    as_frame: bool = False,
) -> xr.Dataset | pd.DataFrame:
    """Longitudinal analyses for every method × contrast.

    Parameters
    ----------
    ds : xarray.Dataset
        Results dataset with at least two timepoints, ``years_since_baseline`` and ``edss``.
    edss_cut : float
        Baseline EDSS up to which worsening needs +1.0 (5.0 or 5.5).
    covariates : sequence of str
        Baseline covariates of the worsening model.
    side, methods, groups : optional
        As in :func:`thaldask.stats.fit_clinical`; ``groups`` restricts the worsening
        analyses (e.g. to patients).
    mixed : bool
        Also fit ``volume ~ years * group`` with a random intercept and slope per subject.
    as_frame : bool
        Return the table as a pandas DataFrame instead of an xarray Dataset.

    Returns
    -------
    xarray.Dataset
        Default: an ``xarray.Dataset`` (:func:`thaldask.stats.table_to_xarray`) with dims
        ``analysis``, ``method``, ``contrast``, ``side``, ``term``; every other column of the
        table below is a variable over them (NaN where a combination has no row), including
        ``n`` and the model ``formula``. ``attrs`` hold ``table`` (``"longitudinal"``),
        ``edss_cut``, ``mixed``, ``fdr_method`` and ``alpha``.
    pandas.DataFrame
        With ``as_frame=True``: long table with ``analysis`` one of:

        * ``annualised_change``: mean % change per year (``term`` = all or a group) with CI;
        * ``worsening_logistic``: ``worsened ~ annualised change + covariates`` (baseline to the
          last follow-up); odds ratio per 1 %/year with CI, p, model AUC; ``n_events``;
        * ``worsening_effect_size``: Hedges' g of the annualised change, worsened − stable,
          with CI and Mann–Whitney p;
        * ``mixed_volume``: fixed effects (mm³, mm³/year) of the mixed model with
          ``converged``, ``optimizer`` and ``random_effects`` (``intercept+slope`` or, if the
          slope model does not converge, ``intercept``).

        ``p_fdr`` adjusts within each analysis across methods/terms (NaN-safe).
    """
    _data.require(ds, "volume_mm3")
    if ds.sizes.get("timepoint", 1) < 2:
        raise StatsError(f"longitudinal models need ≥ 2 timepoints; the dataset has {ds.sizes.get('timepoint', 1)}")
    keys = methods or _data.method_contrasts(ds, "volume_mm3")
    t0, follow, years = baseline_followup(ds)
    change = subject_annualised_change(ds, side=side, group_var=group_var)["annualised_change_pct"]
    clin = _data.clinical_frame(ds)
    S = ds.sizes["subject"]
    T = ds.sizes["timepoint"]
    base = clin.iloc[np.arange(S) * T + t0]
    sel = np.ones(S, bool)
    if groups is not None:
        sel &= base[group_var].astype(str).isin(list(groups)).to_numpy()
    worse = np.full(S, np.nan)
    if "edss" in ds:
        e = ds["edss"].transpose("subject", "timepoint").values.astype(float)
        e1 = np.where(follow >= 0, e[np.arange(S), np.maximum(follow, 0)], np.nan)
        worse = edss_worsening(e[:, t0], e1, cut=edss_cut)
    meths = [str(m) for m in ds["method"].values]
    cons = [str(c) for c in ds["contrast"].values]
    attrs = {"edss_cut": edss_cut, "mixed": int(mixed), "fdr_method": fdr_method, "alpha": alpha}
    rows = []
    for side_name in _data.sides(ds, side):
        v = ds["volume_mm3"].sel(side=side_name).transpose("subject", "timepoint", "method", "contrast").values
        vol = np.stack([v[:, :, meths.index(m), cons.index(c)] for m, c in keys], axis=-1)  # S,T,K
        arr = change.sel(side=side_name).transpose("subject", "method", "contrast").values
        chg = np.stack([arr[:, meths.index(m), cons.index(c)] for m, c in keys], axis=-1)  # (S, K)
        rows += _change_rows(chg, base, keys, side_name, group_var, alpha)
        if np.isfinite(worse).any():
            rows += _worsening_rows(chg, worse, base, sel, covariates, keys, side_name, edss_cut, alpha)
        if mixed:
            rows += _mixed_rows(ds, vol, keys, side_name, group_var, alpha)
    out = pd.DataFrame(rows)
    if not len(out):
        return as_result("longitudinal", pd.DataFrame(columns=COLUMNS), as_frame=as_frame, attrs=attrs)
    out["p_fdr"] = np.nan
    for _, idx in out.groupby("analysis").groups.items():
        out.loc[idx, "p_fdr"] = p_adjust(out.loc[idx, "p"].to_numpy(float), fdr_method)
    for c in COLUMNS:
        if c not in out:
            out[c] = np.nan
    return as_result("longitudinal", out[COLUMNS], as_frame=as_frame, attrs=attrs)


def _row(**kw):
    return {c: kw.get(c, np.nan) for c in COLUMNS}


def _change_rows(chg, base, keys, side, group_var, alpha):
    rows = []
    grp = base[group_var].astype(str).to_numpy() if group_var in base else np.full(len(base), "all")
    for k, (m, c) in enumerate(keys):
        for g in ["all", *sorted(set(grp) - {"nan", "None"})]:
            x = chg[:, k] if g == "all" else chg[grp == g, k]
            x = x[np.isfinite(x)]
            n = x.size
            if n == 0:
                continue
            mean = x.mean()
            se = x.std(ddof=1) / np.sqrt(n) if n > 1 else np.nan
            q = stats.t.ppf(1 - alpha / 2, n - 1) if n > 1 else np.nan
            p = 2 * stats.t.sf(abs(mean / se), n - 1) if n > 1 and se > 0 else np.nan
            rows.append(_row(
                analysis="annualised_change", method=m, contrast=c, side=side, term=g,
                estimate=mean, estimate_name="mean_pct_per_year", se=se, ci_lower=mean - q * se,
                ci_upper=mean + q * se, p=p, n=n,
                formula=CHANGE_FORMULA,
            ))
    return rows


def _worsening_rows(chg, worse, base, sel, covariates, keys, side, cut, alpha):
    covs = [c for c in covariates if c in base]
    Xc_all, _ = _data.design_columns(base, covs)
    used = sel & np.isfinite(worse) & np.isfinite(chg).all(axis=1) & np.isfinite(Xc_all).all(axis=1)
    n = int(used.sum())
    Xc, names = _data.design_columns(base[used], covs)
    keep = Xc.std(axis=0) > 0 if n else np.zeros(Xc.shape[1], bool)
    Xc, names = Xc[:, keep], [a for a, k in zip(names, keep, strict=True) if k]
    y = worse[used]
    n_ev = int(y.sum())
    K = len(keys)
    formula = " + ".join(["worsened ~ annualised_pct_change", *names]) + f" (logit; EDSS rule cut {cut})"
    rows = []
    if n >= Xc.shape[1] + 4 and 2 <= n_ev <= n - 2:
        X = np.concatenate([np.ones((K, n, 1)), chg[used].T[..., None],
                            np.broadcast_to(Xc, (K, *Xc.shape))], axis=-1)
        fit = logit_batched(X, np.broadcast_to(y, (K, n)))
        lo, hi = fit.conf_int(alpha)
        auc = auc_batched(fit.fitted, np.broadcast_to(y, (K, n)))
    else:
        fit = None
    for k, (m, c) in enumerate(keys):
        if fit is not None and np.isfinite(fit.params[k, 1]):
            b = fit.params[k, 1]
            rows.append(_row(
                analysis="worsening_logistic", method=m, contrast=c, side=side,
                term="annualised_pct_change", estimate=np.exp(b), estimate_name="odds_ratio_per_pct_per_year",
                se=fit.bse[k, 1], ci_lower=np.exp(lo[k, 1]), ci_upper=np.exp(hi[k, 1]),
                p=fit.pvalues[k, 1], n=n, n_events=n_ev, auc=auc[k], converged=True,
                optimizer="newton", formula=formula,
            ))
        else:
            rows.append(_row(
                analysis="worsening_logistic", method=m, contrast=c, side=side,
                term="annualised_pct_change", estimate_name="odds_ratio_per_pct_per_year", n=n,
                n_events=n_ev, converged=False, optimizer="newton", formula=formula,
            ))
        x = chg[used, k]
        g, glo, ghi = hedges_g(x[y == 1], x[y == 0], alpha=alpha)
        try:
            mw = stats.mannwhitneyu(x[y == 1], x[y == 0]).pvalue if 0 < n_ev < n else np.nan
        except ValueError:
            mw = np.nan
        rows.append(_row(
            analysis="worsening_effect_size", method=m, contrast=c, side=side,
            term="worsened_vs_stable", estimate=g, estimate_name="hedges_g", ci_lower=glo,
            ci_upper=ghi, p=mw, n=n, n_events=n_ev,
            formula="annualised_pct_change[worsened] vs [stable]; Mann-Whitney p",
        ))
    return rows


def _mixed_rows(ds, vol, keys, side, group_var, alpha):
    import statsmodels.formula.api as smf

    S, T, K = vol.shape
    yrs = ds["years_since_baseline"].transpose("subject", "timepoint").values.astype(float)
    subj = np.repeat(ds["subject"].values.astype(str), T)
    has_group = group_var in ds
    grp = (
        ds[group_var].transpose("subject", "timepoint").values.astype(str).ravel()
        if has_group else np.full(S * T, "all")
    )
    rows = []
    q = stats.norm.ppf(1 - alpha / 2)
    for k, (m, c) in enumerate(keys):
        df = pd.DataFrame({"volume_cm3": vol[:, :, k].ravel() / 1000, "years": yrs.ravel(),
                           "group": grp, "subject": subj})
        df = df[np.isfinite(df.volume_cm3) & np.isfinite(df.years) & ~df.group.isin(["nan", "None"])]
        n_groups = df.group.nunique()
        rhs = "years * C(group)" if n_groups > 1 else "years"
        formula = f"volume_mm3 ~ {rhs}"
        if len(df) < 10 or df.subject.nunique() < 3:
            continue
        res, opt, re = None, "", ""
        # a random slope is identifiable only with ≥ 3 scans for some subjects
        per_subject = df.groupby("subject").size()
        structures = [("~1", "intercept")]
        if (per_subject >= 3).sum() >= 3:
            structures.insert(0, ("~years", "intercept+slope"))
        for re_formula, re_name in structures:
            for method in ("powell", "lbfgs"):
                try:
                    with warnings.catch_warnings(record=True) as caught:
                        warnings.simplefilter("always")
                        md = smf.mixedlm(f"volume_cm3 ~ {rhs}", df, groups=df["subject"], re_formula=re_formula)
                        r = md.fit(method=method, reml=True)
                except (np.linalg.LinAlgError, ValueError):
                    continue
                # statsmodels reports a non-positive-definite Hessian only as a warning, and
                # its boundary warning uses an absolute threshold (0.01, unit-dependent), so
                # check the boundary relative to the residual variance instead
                suspect = any(
                    "positive definite" in str(w.message) or "failed to converge" in str(w.message)
                    for w in caught
                ) or _on_boundary(r)
                if r.converged and not suspect and np.all(np.isfinite(r.bse_fe)):
                    res, opt, re = r, method, re_name
                    break
            if res is not None:
                break
        if res is None:
            warnings.warn(f"mixed model {formula} for {m}/{c}/{side} did not converge", ConvergenceWarning, stacklevel=3)
            rows.append(_row(analysis="mixed_volume", method=m, contrast=c, side=side, term="years",
                             n=len(df), converged=False, formula=f"{formula} + (1 + years | subject)"))
            continue
        for term in res.fe_params.index:
            b = float(res.fe_params[term]) * 1000
            se = float(res.bse_fe[term]) * 1000
            name = term.replace("C(group)", "group")
            rows.append(_row(
                analysis="mixed_volume", method=m, contrast=c, side=side, term=name,
                estimate=b, estimate_name="mm3" if "years" not in term else "mm3_per_year",
                se=se, ci_lower=b - q * se, ci_upper=b + q * se,
                p=float(2 * stats.norm.sf(abs(b / se))), n=len(df), converged=True,
                optimizer=opt, random_effects=re,
                formula=f"{formula} + ({'1 + years' if re == 'intercept+slope' else '1'} | subject)",
            ))
    return rows


def _on_boundary(res) -> bool:
    """A random-effect variance ~0 relative to the residual variance, or a random-effect
    correlation of ±1: the model is degenerate (fall back to a simpler one)."""
    cov = np.asarray(res.cov_re, float)
    if cov.size == 0 or not np.isfinite(cov).all():
        return True
    d = np.diag(cov)
    if (d <= 1e-6 * max(float(res.scale), 1e-300)).any():
        return True
    if cov.shape[0] > 1:
        corr = cov / np.sqrt(np.outer(d, d))
        if (np.abs(corr[np.triu_indices(cov.shape[0], 1)]) > 0.999).any():
            return True
    return False
