"""ComBat harmonisation of multi-site volumes, on numpy.

The maintained ComBat packages pin numpy < 2, so this is a small reimplementation of
Johnson et al. (2007) as adapted to neuroimaging by Fortin et al. (2017/2018), following the
neuroCombat 0.2.12 algorithm step by step (and checked against it in the tests):

1. ``x = site + protected covariates`` by OLS per feature; the grand mean is the
   sample-size-weighted mean of the site intercepts; the pooled variance is the mean squared
   residual (1/n).
2. Standardise, estimate per-site location ``gamma_hat`` and scale ``delta_hat`` (ddof = 1).
3. Empirical Bayes (``eb=True``): shrink them towards priors pooled across features
   (normal prior on gamma, inverse-gamma prior on delta), iterated to a relative change of
   1e-4 as neuroCombat does; ``eb=False`` keeps the plain location/scale estimates
   (``mean_only=True`` also keeps delta = 1).
4. Remove the site effects and add back the grand mean and protected-covariate effects.

The model is fitted once (e.g. at baseline) and applied to other scans (e.g. follow-up) of
the same sites with their own covariate values.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import xarray as xr

from thaldask.errors import SmallSiteWarning, StatsError
from thaldask.stats import _data
from thaldask.stats._select import first_timepoint
from thaldask.stats.kernels import ols_batched

__all__ = ["CombatModel", "fit_combat", "apply_combat", "harmonise"]

OUTCOMES = ("edss", "sdmt")
DEFAULT_PROTECT = ("age", "sex", "icv_mm3", "group")


@dataclass
class CombatModel:
    """A fitted ComBat model (features along the last axis).

    Attributes
    ----------
    sites : list of str
        Site levels (sorted), the rows of ``gamma_*``/``delta_*``.
    n_per_site : ndarray (B,)
    grand_mean, var_pooled : ndarray (v,)
    beta_covariates : ndarray (q, v)
        Coefficients of the protected covariates' design columns.
    gamma_hat, delta_hat, gamma_star, delta_star : ndarray (B, v)
        Location/scale site effects before and after empirical Bayes shrinkage.
    covariates : list of str
        Protected covariate columns; ``levels`` holds each categorical one's levels.
    """

    sites: list
    n_per_site: np.ndarray
    grand_mean: np.ndarray
    var_pooled: np.ndarray
    beta_covariates: np.ndarray
    gamma_hat: np.ndarray
    delta_hat: np.ndarray
    gamma_star: np.ndarray
    delta_star: np.ndarray
    covariates: list
    levels: dict = field(default_factory=dict)
    eb: bool = True
    mean_only: bool = False
    n_iter: int = 0

    def design(self, covariates: pd.DataFrame | None) -> np.ndarray:
        """Covariate design columns (no site columns) coded as at fit time."""
        if not self.covariates:
            n = 0 if covariates is None else len(covariates)
            return np.empty((n, 0))
        cols = []
        for c in self.covariates:
            s = covariates[c]
            if c in self.levels:
                levs = self.levels[c]
                vals = s.astype(str).to_numpy()
                unknown = sorted(set(vals) - set(levs) - {"nan", "None"})
                if unknown:
                    raise StatsError(
                        f"covariate {c!r} has level(s) {_data.names(unknown)} not seen when ComBat "
                        f"was fitted; fitted levels: {_data.names(levs)}"
                    )
                for lev in levs[1:]:
                    col = (vals == lev).astype(float)
                    col[np.isin(vals, ["nan", "None"])] = np.nan
                    cols.append(col)
            else:
                cols.append(pd.to_numeric(s, errors="coerce").to_numpy(float))
        return np.column_stack(cols)


def _site_index(model_sites, sites):
    sites = np.asarray(sites).astype(str)
    unknown = sorted(set(sites) - set(model_sites))
    if unknown:
        raise StatsError(
            f"site(s) {_data.names(unknown)} were not in the data ComBat was fitted on; "
            f"fitted sites: {_data.names(model_sites)}"
        )
    return np.searchsorted(np.asarray(model_sites), sites)


def fit_combat(
    data,
    sites,
    covariates: pd.DataFrame | None = None,
    *,
    eb: bool = True,
    mean_only: bool = False,
    min_site_size: int = 5,
    conv: float = 1e-4,
    max_iter: int = 1000,
) -> CombatModel:
    """Fit ComBat on ``data`` (n samples, v features).

    Parameters
    ----------
    data : array_like (n, v)
        Feature values (e.g. volumes in mm³); rows with a NaN are left out of the fit.
    sites : array_like (n,)
        Site (batch) of each row.
    covariates : pandas.DataFrame, optional
        Protected covariates (n rows): numeric columns enter linearly, others as dummies.
        Never put outcomes here.
    eb : bool
        Empirical Bayes shrinkage (needs ≥ 2 features; with one feature the plain
        location/scale estimates are used and a warning is given).
    mean_only : bool
        Adjust location only.
    min_site_size : int
        Sites with fewer rows give a :class:`SmallSiteWarning`; a site with one row (two
        with ``mean_only=False`` would still be unstable) raises :class:`StatsError`.

    Returns
    -------
    CombatModel
    """
    X = np.asarray(data, float)
    if X.ndim == 1:
        X = X[:, None]
    sites = np.asarray(sites).astype(str)
    if sites.shape[0] != X.shape[0]:
        raise StatsError(f"ComBat: {X.shape[0]} rows of data but {sites.shape[0]} site labels")
    covariates = covariates.reset_index(drop=True) if covariates is not None else None
    cov_names = list(covariates.columns) if covariates is not None else []
    levels = {}
    for c in cov_names:
        if not pd.api.types.is_numeric_dtype(covariates[c]):
            vals = covariates[c].astype(str)
            levels[c] = sorted(set(vals) - {"nan", "None"})
    model = CombatModel(
        sites=[], n_per_site=np.empty(0), grand_mean=np.empty(0), var_pooled=np.empty(0),
        beta_covariates=np.empty(0), gamma_hat=np.empty(0), delta_hat=np.empty(0),
        gamma_star=np.empty(0), delta_star=np.empty(0), covariates=cov_names, levels=levels,
        eb=eb, mean_only=mean_only,
    )
    Z = model.design(covariates) if cov_names else np.empty((X.shape[0], 0))
    ok = np.isfinite(X).all(axis=1) & np.isfinite(Z).all(axis=1) & ~np.isin(sites, ["nan", "None", ""])
    X, Z, sites = X[ok], Z[ok], sites[ok]
    levs, idx, counts = np.unique(sites, return_inverse=True, return_counts=True)
    if len(levs) < 2:
        raise StatsError(f"ComBat needs ≥ 2 sites; the data has {len(levs)} ({_data.names(levs)})")
    tiny = [f"{s} (n={c})" for s, c in zip(levs, counts, strict=True) if c < 2]
    if tiny:
        raise StatsError(
            f"ComBat cannot estimate a site effect from one subject: site(s) {_data.names(tiny)}; "
            "merge or drop them"
        )
    small = [f"{s} (n={c})" for s, c in zip(levs, counts, strict=True) if c < min_site_size]
    if small:
        warnings.warn(
            f"ComBat: site(s) {_data.names(small)} have fewer than {min_site_size} subjects; their site "
            "effects are unstable", SmallSiteWarning, stacklevel=2,
        )
    n, v = X.shape
    B = len(levs)
    batch = np.zeros((n, B))
    batch[np.arange(n), idx] = 1
    design = np.c_[batch, Z]
    if np.linalg.matrix_rank(design) < design.shape[1]:
        raise StatsError(
            "ComBat design is rank-deficient: a protected covariate is confounded with site "
            f"(covariates {_data.names(cov_names)}; sites {_data.names(levs)})"
        )
    B_hat = np.linalg.solve(design.T @ design, design.T @ X)  # (B+q, v)
    grand_mean = (counts / n) @ B_hat[:B]
    var_pooled = ((X - design @ B_hat) ** 2).mean(axis=0)
    if (var_pooled == 0).any():
        nz = var_pooled[var_pooled > 0]
        var_pooled = np.where(var_pooled == 0, np.median(nz) if nz.size else 1.0, var_pooled)
    beta_cov = B_hat[B:]
    stand = grand_mean + Z @ beta_cov
    s = (X - stand) / np.sqrt(var_pooled)
    gamma_hat = np.linalg.solve(batch.T @ batch, batch.T @ s)  # (B, v)
    if mean_only:
        delta_hat = np.ones((B, v))
    else:
        delta_hat = np.stack([s[idx == b].var(axis=0, ddof=1) for b in range(B)])
        delta_hat = np.where(delta_hat == 0, 1.0, delta_hat)
    if eb and v < 2:
        warnings.warn(
            "ComBat empirical Bayes pools across features and there is only one; using plain "
            "location/scale estimates", SmallSiteWarning, stacklevel=2,
        )
        eb = False
    n_iter = 0
    if eb:
        gamma_bar = gamma_hat.mean(axis=1)
        t2 = gamma_hat.var(axis=1, ddof=1)
        gamma_star = np.empty_like(gamma_hat)
        delta_star = np.empty_like(delta_hat)
        for b in range(B):
            if mean_only:
                gamma_star[b] = (t2[b] * gamma_hat[b] + gamma_bar[b]) / (t2[b] + 1)
                delta_star[b] = 1.0
                continue
            m = delta_hat[b].mean()
            s2 = delta_hat[b].var(ddof=1)
            a_prior = (2 * s2 + m**2) / s2
            b_prior = (m * s2 + m**3) / s2
            sb = s[idx == b]
            nb = sb.shape[0]
            g_old, d_old = gamma_hat[b].copy(), delta_hat[b].copy()
            change, it = 1.0, 0
            while change > conv and it < max_iter:
                g_new = (t2[b] * nb * gamma_hat[b] + d_old * gamma_bar[b]) / (t2[b] * nb + d_old)
                sum2 = ((sb - g_new) ** 2).sum(axis=0)
                d_new = (0.5 * sum2 + b_prior) / (nb / 2.0 + a_prior - 1.0)
                with np.errstate(divide="ignore", invalid="ignore"):
                    change = max(np.max(np.abs(g_new - g_old) / g_old), np.max(np.abs(d_new - d_old) / d_old))
                g_old, d_old = g_new, d_new
                it += 1
            n_iter = max(n_iter, it)
            gamma_star[b], delta_star[b] = g_new, d_new
    else:
        gamma_star, delta_star = gamma_hat.copy(), delta_hat.copy()
    model.sites = [str(x) for x in levs]
    model.n_per_site = counts
    model.grand_mean = grand_mean
    model.var_pooled = var_pooled
    model.beta_covariates = beta_cov
    model.gamma_hat, model.delta_hat = gamma_hat, delta_hat
    model.gamma_star, model.delta_star = gamma_star, delta_star
    model.eb = eb
    model.n_iter = n_iter
    return model


def apply_combat(model: CombatModel, data, sites, covariates: pd.DataFrame | None = None) -> np.ndarray:
    """Harmonise ``data`` (n, v) with a fitted model; NaN stays NaN (elementwise).

    Rows from sites the model was not fitted on raise :class:`StatsError`.
    """
    X = np.asarray(data, float)
    squeeze = X.ndim == 1
    if squeeze:
        X = X[:, None]
    b = _site_index(model.sites, sites)
    Z = model.design(covariates.reset_index(drop=True) if covariates is not None else None)
    if Z.shape[0] == 0:
        Z = np.empty((X.shape[0], 0))
    stand = model.grand_mean + Z @ model.beta_covariates
    sd = np.sqrt(model.var_pooled)
    s = (X - stand) / sd
    out = (s - model.gamma_star[b]) / np.sqrt(model.delta_star[b]) * sd + stand
    return out[:, 0] if squeeze else out


def _site_f_test(vals, site, Z):
    """p-value of site in ``feature ~ covariates + site`` (F-test), one per feature column."""
    levs = sorted(set(site))
    if len(levs) < 2:
        return np.full(vals.shape[1], np.nan)
    D = np.column_stack([(site == lev).astype(float) for lev in levs[1:]])
    n = vals.shape[0]
    Xr = np.c_[np.ones(n), Z]
    Xf = np.c_[Xr, D]
    fr = ols_batched(Xr, vals.T)
    ff = ols_batched(Xf, vals.T)
    from scipy import stats

    k = D.shape[1]
    with np.errstate(all="ignore"):
        F = (fr.ssr - ff.ssr) / k / (ff.ssr / ff.df_resid)
        return stats.f.sf(F, k, ff.df_resid)


def harmonise(
    ds: xr.Dataset,
    *,
    protect=DEFAULT_PROTECT,
    eb: bool = True,
    mean_only: bool = False,
    reference_timepoint=None,
    site_var: str = "site",
    min_site_size: int = 5,
    min_coverage: float = 0.5,
) -> tuple[xr.Dataset, pd.DataFrame]:
    """ComBat-harmonise ``volume_mm3`` across sites.

    Every method × contrast × side is one feature. The model is fitted at
    ``reference_timepoint`` (default baseline) on subjects with every feature, then applied to
    every timepoint with that scan's covariates. Features present for fewer than
    ``min_coverage`` of the baseline subjects are left as they are (reported).

    Parameters
    ----------
    protect : sequence of str
        Covariates whose effects are kept (those present in ``ds``). Outcomes (EDSS, SDMT)
        are refused: protecting them would leak the outcome into the volumes.

    Returns
    -------
    (xarray.Dataset, pandas.DataFrame)
        A copy of ``ds`` with harmonised ``volume_mm3`` (the original kept as
        ``volume_mm3_raw``), and a table with, per feature and site, ``n_fit``, ``gamma_hat``,
        ``delta_hat``, ``gamma_star``, ``delta_star`` and the F-test p-value of site
        (``volume ~ protected + site`` at the reference timepoint) before and after.
    """
    bad = [p for p in protect if p in OUTCOMES]
    if bad:
        raise StatsError(f"ComBat must not protect outcomes {bad}; protect covariates such as {list(DEFAULT_PROTECT)}")
    _data.require(ds, "volume_mm3", site_var)
    clin = _data.clinical_frame(ds)
    tp = reference_timepoint or first_timepoint(ds)
    covs = [p for p in protect if p in clin]
    vol = ds["volume_mm3"].transpose("subject", "timepoint", "method", "contrast", "side")
    S, T, M, C, D = vol.shape
    flat = vol.values.reshape(S * T, M * C * D)
    names = [(str(m), str(c), str(d)) for m in ds["method"].values for c in ds["contrast"].values
             for d in ds["side"].values]
    is_ref = (clin.index.get_level_values("timepoint") == tp)
    site = clin[site_var].astype(str).to_numpy()
    ref_site = site[is_ref]
    n_sites = len(set(ref_site) - {"nan", "None", ""})
    formula = " + ".join(["volume_mm3 ~ site", *covs])
    if n_sites < 2:
        table = pd.DataFrame([{"method": m, "contrast": c, "side": d, "site": ref_site[0] if len(ref_site) else "",
                               "n_fit": int(is_ref.sum()), "harmonised": False,
                               "note": "single site: nothing to harmonise", "formula": formula}
                              for (m, c, d) in names])
        return ds, table
    ref = flat[is_ref]
    coverage = np.isfinite(ref).mean(axis=0)
    feats = np.flatnonzero(coverage >= min_coverage)
    cov_ref = clin.loc[is_ref, covs].reset_index(drop=True)
    model = fit_combat(ref[:, feats], ref_site, cov_ref, eb=eb, mean_only=mean_only, min_site_size=min_site_size)
    harm = flat.copy()
    known = np.isin(site, model.sites)
    unseen = sorted(set(site[~known]) - {"nan", "None", ""})
    if unseen:
        warnings.warn(
            f"ComBat: site(s) {unseen} have no {tp} scans to fit on; their scans are left "
            "unharmonised", SmallSiteWarning, stacklevel=2,
        )
    cov_ok = np.isfinite(model.design(clin[covs].reset_index(drop=True))).all(axis=1)
    n_nocov = int((known & ~cov_ok & np.isfinite(flat).any(axis=1)).sum())
    if n_nocov:
        warnings.warn(
            f"ComBat: {n_nocov} scan(s) lack a protected covariate ({covs}); their volumes are "
            "left unharmonised", SmallSiteWarning, stacklevel=2,
        )
    known &= cov_ok
    harm_feats = apply_combat(model, flat[known][:, feats], site[known], clin.loc[known, covs])
    sub = harm[known]
    sub[:, feats] = harm_feats
    harm[known] = sub
    out = ds.copy()
    out["volume_mm3_raw"] = ds["volume_mm3"]
    out["volume_mm3"] = (vol.dims, harm.reshape(S, T, M, C, D))
    out["volume_mm3"] = out["volume_mm3"].transpose(*ds["volume_mm3"].dims)
    out.attrs["harmonisation"] = f"ComBat ({'EB' if model.eb else 'L/S'}) fitted at {tp}; protected {covs}"
    # site effect before/after at the reference timepoint, on the rows used for the fit
    Zf = model.design(cov_ref)
    rows_ok = np.isfinite(ref[:, feats]).all(axis=1) & np.isfinite(Zf).all(axis=1)
    p_before = _site_f_test(ref[rows_ok][:, feats], ref_site[rows_ok], Zf[rows_ok])
    p_after = _site_f_test(harm[is_ref][rows_ok][:, feats], ref_site[rows_ok], Zf[rows_ok])
    rows = []
    for j, f in enumerate(feats):
        m, c, d = names[f]
        for b, s in enumerate(model.sites):
            rows.append({
                "method": m, "contrast": c, "side": d, "site": s, "n_fit": int(model.n_per_site[b]),
                "harmonised": True, "method_combat": "eb" if model.eb else "location_scale",
                "gamma_hat": model.gamma_hat[b, j], "delta_hat": model.delta_hat[b, j],
                "gamma_star": model.gamma_star[b, j], "delta_star": model.delta_star[b, j],
                "site_p_before": p_before[j], "site_p_after": p_after[j],
                "reference_timepoint": tp, "note": "", "formula": formula,
            })
    for f in np.setdiff1d(np.arange(len(names)), feats):
        m, c, d = names[f]
        if coverage[f] == 0:
            continue
        rows.append({"method": m, "contrast": c, "side": d, "site": "", "n_fit": 0, "harmonised": False,
                     "note": f"present for {coverage[f]:.0%} of {tp} scans (< {min_coverage:.0%}); left as is",
                     "formula": formula})
    return out, pd.DataFrame(rows)
