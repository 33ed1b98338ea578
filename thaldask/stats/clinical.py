"""Cross-sectional associations of thalamic volume with clinical outcomes.

``outcome ~ head-size-adjusted volume + age + sex (+ covariates)``, one model per outcome ×
method × contrast × side, all methods of an outcome fitted on the same rows, batched
(:func:`thaldask.stats.kernels.ols_batched`). Volume and outcome are standardised on those
rows, so the volume coefficient is the standardised beta.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import xarray as xr

from thaldask.errors import ConvergenceWarning, StatsError
from thaldask.stats import _data
from thaldask.stats._select import first_timepoint
from thaldask.stats._tables import as_result
from thaldask.stats.kernels import ols_batched, ols_shared_design
from thaldask.stats.multitest import p_adjust

__all__ = ["fit_clinical", "adjust_head_size", "bootstrap_beta", "bootstrap_betas"]

HEAD_SIZE = ("residual", "ratio", "none")


def adjust_head_size(vol, head, *, method: str = "residual", weights=None) -> np.ndarray:
    """Adjust volumes for head size.

    Parameters
    ----------
    vol : array_like (..., n)
        Volumes (mm³); leading axes are separate volume series (e.g. methods).
    head : array_like (n,)
        Head size (intracranial volume, mm³).
    method : {"residual", "ratio", "none"}
        ``residual``: ``vol - b (head - mean(head))`` with ``b`` the OLS slope of vol on head
        over the rows used (the volume a subject would have at the mean head size);
        ``ratio``: ``vol / head``; ``none``: unchanged.
    weights : array_like of bool (n,), optional
        Rows that define ``b`` and the mean; other rows are adjusted with them.

    >>> adjust_head_size([[3.0, 5.0, 7.0]], [1.0, 2.0, 3.0]).round(9).tolist()
    [[5.0, 5.0, 5.0]]
    """
    vol = np.asarray(vol, float)
    head = np.asarray(head, float)
    if method == "none":
        return vol
    if method == "ratio":
        return vol / head
    if method != "residual":
        raise StatsError(f"head-size adjustment {method!r} unknown; allowed: {list(HEAD_SIZE)}")
    if head.size == 0:  # no subject with every covariate: nothing to adjust
        return vol
    w = np.isfinite(head) if weights is None else (np.asarray(weights, bool) & np.isfinite(head))
    w = w & np.isfinite(vol)
    X = np.broadcast_to(np.c_[np.ones(head.size), head], (*vol.shape[:-1], head.size, 2))
    r = ols_batched(X, vol, weights=w)
    hbar = np.array([head[wi].mean() if wi.any() else np.nan for wi in w.reshape(-1, head.size)])
    hbar = hbar.reshape(vol.shape[:-1])
    return vol - r.params[..., 1:2] * (head - hbar[..., None])


def _formula(outcome, covs, adjust, head_var, mixed):
    vol = {
        "residual": f"volume_mm3 residualised on {head_var}",
        "ratio": f"volume_mm3 / {head_var}",
        "none": "volume_mm3",
    }[adjust]
    rhs = " + ".join([f"z({vol})", *covs])
    f = f"z({outcome}) ~ {rhs}"
    return f + " + (1 | subject)" if mixed else f


def fit_clinical(
    ds: xr.Dataset,
    *,
    outcomes=None,
    covariates=("age", "sex"),
    extra_covariates=(),
    head_size: str = "residual",
    head_size_var: str = "icv_mm3",
    timepoint=None,
    side=None,
    methods=None,
    groups=None,
    fdr_method: str = "fdr_bh",
    alpha: float = 0.05,
    bootstrap: int = 0,
    rng=0,
    as_frame: bool = False,
) -> xr.Dataset | pd.DataFrame:
    """Association of each method's thalamic volume with each clinical outcome.

    Parameters
    ----------
    ds : xarray.Dataset
        Results dataset with clinical covariates.
    outcomes : sequence of str, optional
        Outcome variables (default: those of ``edss``, ``sdmt`` present).
    covariates, extra_covariates : sequence of str
        Adjustment covariates; categorical ones (e.g. ``sex``, ``group``) enter as dummies.
    head_size : {"residual", "ratio", "none"}
        Head-size adjustment of the volume (see :func:`adjust_head_size`).
    timepoint : str or "all", optional
        A timepoint (default: baseline) for ordinary least squares, or ``"all"`` for every
        timepoint with a subject random intercept (statsmodels MixedLM, ML fit).
    side : str, list or "all", optional
        Default ``"total"``.
    methods : list of (method, contrast), optional
        Default: every pair with volumes.
    groups : sequence of str, optional
        Restrict to these diagnostic groups (e.g. ``["MS"]``).
    fdr_method : str
        Adjustment across the whole table (``fdr_bh`` or ``holm``), NaN-safe.
    bootstrap : int
        Number of bootstrap replicates (rows resampled with replacement, outcome and volume
        re-standardised in each) for percentile CIs ``beta_std_boot_ci_lower``/``_upper``
        (cross-sectional OLS only; 0 = off). The head-size adjustment is held fixed.
    rng : int or numpy.random.Generator
        Seed of the bootstrap.
    as_frame : bool
        Return the table as a pandas DataFrame instead of an xarray Dataset.

    Returns
    -------
    xarray.Dataset
        Default: an ``xarray.Dataset`` (:func:`thaldask.stats.table_to_xarray`) with dims
        ``outcome``, ``method``, ``contrast``, ``side``; every other column below is a
        variable over them (NaN where a combination has no row), including ``n``,
        ``timepoint`` and the model ``formula``. ``attrs`` hold ``table``
        (``"clinical_cross"``), ``head_size``, ``fdr_method``, ``alpha``, ``bootstrap`` and
        ``timepoint`` (when given).
        Select with a dict (``x.sel({"method": "thalnet"})``): ``method`` is also an
        argument of ``Dataset.sel``.
    pandas.DataFrame
        With ``as_frame=True``: one row per outcome/method/contrast/side: ``n``, ``beta_std`` with
        ``beta_std_ci_lower``/``_upper``, ``se``, ``p``, ``p_fdr``, ``partial_r2``, ``r2``,
        ``delta_r2`` (over the covariates-only model on the same rows), ``aic``,
        ``aic_covariates``, ``converged`` and the model ``formula``. Mixed models report
        ``partial_r2``/``r2``/``delta_r2`` as NaN.
    """
    _data.require(ds, "volume_mm3")
    if head_size not in HEAD_SIZE:
        raise StatsError(f"head-size adjustment {head_size!r} unknown; allowed: {list(HEAD_SIZE)}")
    outcomes = list(outcomes) if outcomes is not None else [o for o in ("edss", "sdmt") if o in ds]
    if not outcomes:
        raise StatsError("no clinical outcome in the results dataset (looked for edss, sdmt)")
    _data.require(ds, *outcomes)
    covs = list(covariates) + [c for c in extra_covariates if c not in covariates]
    covs = [c for c in covs if c in ds or c in covariates]
    if head_size != "none":
        _data.require(ds, head_size_var)
    keys = methods or _data.method_contrasts(ds, "volume_mm3")
    mixed = timepoint == "all"
    tp = None if mixed else (timepoint or first_timepoint(ds))
    if tp is not None and tp not in [str(t) for t in ds["timepoint"].values]:
        raise StatsError(
            f"timepoint {tp!r} not in the results dataset; has {[str(t) for t in ds['timepoint'].values]} "
            "(or use 'all')"
        )
    clin = _data.clinical_frame(ds)
    rows = []
    meths = [str(m) for m in ds["method"].values]
    cons = [str(c) for c in ds["contrast"].values]
    for side_name in _data.sides(ds, side):
        v = ds["volume_mm3"].sel(side=side_name).transpose("subject", "timepoint", "method", "contrast").values
        vol = np.stack([v[:, :, meths.index(m), cons.index(c)] for m, c in keys], axis=-1)
        vol = vol.reshape(-1, len(keys))  # (subject*timepoint, K), same order as clin
        frame = clin
        sel = np.ones(len(frame), bool)
        if tp is not None:
            sel &= frame.index.get_level_values("timepoint") == tp
        if groups is not None:
            sel &= frame["group"].astype(str).isin(list(groups)).to_numpy()
        for outcome in outcomes:
            y_all = pd.to_numeric(frame[outcome], errors="coerce").to_numpy(float)
            Xc_all, cov_names = _data.design_columns(frame, covs)
            head = frame[head_size_var].to_numpy(float) if head_size != "none" else np.ones(len(frame))
            used = (
                sel & np.isfinite(y_all) & np.isfinite(Xc_all).all(axis=1) & np.isfinite(head)
                & np.isfinite(vol).all(axis=1)
            )
            n = int(used.sum())
            # design on the used rows only (a dummy constant there would be rank-deficient)
            Xc, cov_names = _data.design_columns(frame[used], covs)
            varying = Xc.std(axis=0) > 0 if n else np.zeros(Xc.shape[1], bool)
            Xc, cov_names = Xc[:, varying], [c for c, k in zip(cov_names, varying, strict=True) if k]
            y = _data.zscore(y_all[used])
            va = adjust_head_size(vol[used].T, head[used], method=head_size)
            z = _data.zscore(va, axis=-1)  # (K, n)
            formula = _formula(outcome, cov_names, head_size, head_size_var, mixed)
            base = [
                {"outcome": outcome, "method": m, "contrast": c, "side": side_name, "n": n,
                 "timepoint": tp or "all", "formula": formula}
                for m, c in keys
            ]
            if mixed:
                subj = frame.index.get_level_values("subject").to_numpy()[used]
                res = _mixed(y, z, Xc, subj, alpha)
            else:
                res = _ols(y, z, Xc, alpha)
                if bootstrap:
                    lo_b, hi_b = bootstrap_beta(y, z, Xc, n_boot=bootstrap, alpha=alpha, rng=rng)
                    for k, r in enumerate(res):
                        r["beta_std_boot_ci_lower"] = lo_b[k]
                        r["beta_std_boot_ci_upper"] = hi_b[k]
            for b, r in zip(base, res, strict=True):
                b.update(r)
            rows.extend(base)
    out = pd.DataFrame(rows)
    if len(out):
        out["p_fdr"] = p_adjust(out["p"].to_numpy(float), fdr_method)
        cols = ["outcome", "method", "contrast", "side", "timepoint", "n", "n_subjects",
                "beta_std", "beta_std_ci_lower", "beta_std_ci_upper", "beta_std_boot_ci_lower",
                "beta_std_boot_ci_upper", "se", "p", "p_fdr",
                "partial_r2", "r2", "delta_r2", "aic", "aic_covariates", "converged", "formula"]
        out = out[[c for c in cols if c in out] + [c for c in out if c not in cols]]
    return as_result("clinical_cross", out, as_frame=as_frame, attrs={
        "head_size": head_size, "fdr_method": fdr_method, "alpha": alpha,
        "bootstrap": int(bootstrap), "timepoint": timepoint,
    })


def _ols(y, z, Xc, alpha):
    K, n = z.shape
    if n < Xc.shape[1] + 3:
        return [_empty(n) for _ in range(K)]
    fit = ols_shared_design(np.c_[np.ones(n), Xc], y, z)
    lo, hi = fit.conf_int(alpha)
    return [
        {"n_subjects": n, "beta_std": fit.beta[k], "beta_std_ci_lower": lo[k],
         "beta_std_ci_upper": hi[k], "se": fit.bse[k], "p": fit.pvalues[k],
         "partial_r2": fit.partial_r2[k], "r2": fit.rsquared[k],
         "delta_r2": fit.rsquared[k] - fit.rsquared_reduced, "aic": fit.aic[k],
         "aic_covariates": float(fit.aic_reduced), "converged": bool(np.isfinite(fit.beta[k]))}
        for k in range(K)
    ]


def _empty(n):
    return {"n_subjects": n, "beta_std": np.nan, "beta_std_ci_lower": np.nan,
            "beta_std_ci_upper": np.nan, "se": np.nan, "p": np.nan, "partial_r2": np.nan,
            "r2": np.nan, "delta_r2": np.nan, "aic": np.nan, "aic_covariates": np.nan,
            "converged": False}


def _mixed(y, z, Xc, subj, alpha):
    import statsmodels.api as sm
    from scipy import stats

    K, n = z.shape
    n_subj = len(np.unique(subj))
    if n < Xc.shape[1] + 3 or n_subj < 3:
        return [_empty(n) for _ in range(K)]
    one = np.ones((n, 1))

    def fit(X):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            m = sm.MixedLM(y, X, groups=subj)
            r = m.fit(reml=False, method=["lbfgs", "powell"])
        return r

    try:
        red = fit(np.c_[one, Xc])
        aic_red = red.aic
    except (np.linalg.LinAlgError, ValueError):
        aic_red = np.nan
    out = []
    q = stats.norm.ppf(1 - alpha / 2)
    for k in range(K):
        e = _empty(n)
        e["n_subjects"] = n_subj
        try:
            r = fit(np.c_[one, z[k][:, None], Xc])
        except (np.linalg.LinAlgError, ValueError):
            out.append(e)
            continue
        b, se = float(r.fe_params[1]), float(r.bse_fe[1])
        if not r.converged:
            warnings.warn(f"mixed model for volume series {k} did not converge", ConvergenceWarning, stacklevel=3)
        e.update(beta_std=b, se=se, beta_std_ci_lower=b - q * se, beta_std_ci_upper=b + q * se,
                 p=float(2 * stats.norm.sf(abs(b / se))), aic=float(r.aic), aic_covariates=aic_red,
                 converged=bool(r.converged))
        out.append(e)
    return out


def bootstrap_betas(y, z, Xc, *, n_boot: int = 1000, rng=0, chunk: int = 100) -> np.ndarray:
    """Standardised volume betas of ``n_boot`` bootstrap replicates, shape (n_boot, K).

    Rows are resampled with replacement (``rng.integers(0, n, (chunk, n))`` per chunk of
    replicates); outcome and volumes are re-standardised in each replicate; all replicates of
    a chunk and all K volume series are solved in one batched OLS call.

    Parameters
    ----------
    y : ndarray (n,)
        Outcome; ``z`` (K, n) volumes; ``Xc`` (n, q) covariate columns.
    """
    rng = np.random.default_rng(rng)
    K, n = z.shape
    betas = []
    for start in range(0, n_boot, chunk):
        b = min(chunk, n_boot - start)
        idx = rng.integers(0, n, size=(b, n))
        yb = y[idx]  # (b, n)
        vb = z[:, idx].transpose(1, 0, 2)  # (b, K, n)
        Xb = np.concatenate([np.ones((b, n, 1)), Xc[idx]], axis=-1)  # (b, n, 1 + q)
        # OLS is scale-equivariant and the intercept absorbs centring, so the beta of the
        # re-standardised replicate is the raw beta times sd(v) / sd(y) of that replicate
        with np.errstate(divide="ignore", invalid="ignore"):
            scale = vb.std(axis=-1, ddof=1) / yb.std(axis=-1, ddof=1)[:, None]
        betas.append(ols_shared_design(Xb, yb, vb).beta * scale)
    return np.concatenate(betas, axis=0)


def bootstrap_beta(y, z, Xc, *, n_boot: int = 1000, alpha: float = 0.05, rng=0, chunk: int = 100):
    """Percentile bootstrap CI of the standardised volume beta for K volume series at once
    (see :func:`bootstrap_betas`). Returns ``(lower, upper)``, each of shape (K,)."""
    betas = bootstrap_betas(y, z, Xc, n_boot=n_boot, rng=rng, chunk=chunk)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        lo, hi = np.nanpercentile(betas, [100 * alpha / 2, 100 * (1 - alpha / 2)], axis=0)
    return lo, hi
