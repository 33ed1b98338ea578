"""Batched numpy kernels for many small regression models that share a layout.

A cohort study fits the same model for every method × contrast × side × outcome: hundreds of
ordinary least squares (OLS) or logistic fits on a few hundred rows each. A loop of statsmodels
formula fits spends almost all its time building formulas and result objects; stacking the
designs into one array and solving them together gives the same numbers (checked against
statsmodels to 1e-8 in the tests) hundreds of times faster.

Rows that are missing for one model are handled with a 0/1 weight: a zero-weight row
contributes nothing to the normal equations, and ``n`` / degrees of freedom count only rows
with weight 1.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import special, stats

__all__ = [
    "OLSResult",
    "SharedDesignResult",
    "LogitResult",
    "ols_batched",
    "ols_shared_design",
    "logit_batched",
    "auc_batched",
    "retest_batched",
    "n_per_arm_batched",
    "signed_rank_test",
]


@dataclass
class OLSResult:
    """Stacked OLS results; leading axes are the batch shape ``B``.

    Attributes
    ----------
    params, bse, tvalues, pvalues : ndarray (*B, p)
        Coefficients, standard errors (non-robust), t statistics and two-sided p-values.
    nobs, df_resid : ndarray (*B,)
        Rows used and residual degrees of freedom (``nobs - p``).
    ssr, rsquared, llf, aic : ndarray (*B,)
        Residual sum of squares, R² (centred; the design must hold an intercept), Gaussian
        log-likelihood and AIC, defined as in statsmodels (``aic = -2 llf + 2 p``).
    """

    params: np.ndarray
    bse: np.ndarray
    tvalues: np.ndarray
    pvalues: np.ndarray
    nobs: np.ndarray
    df_resid: np.ndarray
    ssr: np.ndarray
    rsquared: np.ndarray
    llf: np.ndarray
    aic: np.ndarray

    def conf_int(self, alpha: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
        """Lower and upper ``1 - alpha`` confidence limits, each of shape (*B, p)."""
        q = stats.t.ppf(1 - alpha / 2, self.df_resid)[..., None]
        return self.params - q * self.bse, self.params + q * self.bse

    def partial_r2(self) -> np.ndarray:
        """Partial R² of each coefficient, ``t² / (t² + df_resid)``, shape (*B, p)."""
        t2 = self.tvalues**2
        return t2 / (t2 + self.df_resid[..., None])


def _prepare(X, y, weights):
    X = np.asarray(X, dtype=float)
    y = np.asarray(y, dtype=float)
    if X.ndim < 2:
        raise ValueError(f"design must have shape (..., n, p); got {X.shape}")
    batch = np.broadcast_shapes(X.shape[:-2], y.shape[:-1])
    n, p = X.shape[-2:]
    X = np.broadcast_to(X, (*batch, n, p))
    y = np.broadcast_to(y, (*batch, n))
    ok = np.isfinite(y) & np.isfinite(X).all(axis=-1)
    if weights is not None:
        ok &= np.broadcast_to(np.asarray(weights, dtype=bool), (*batch, n))
    w = ok.astype(float)
    Xw = np.where(ok[..., None], X, 0.0)
    yw = np.where(ok, y, 0.0)
    return Xw, yw, w, batch, n, p


def ols_batched(X, y, *, weights=None) -> OLSResult:
    """Fit many OLS models at once.

    Parameters
    ----------
    X : array_like (*B, n, p)
        Design matrices (include the intercept column yourself); may broadcast against ``y``,
        e.g. one shared (n, p) design for a stack of outcomes.
    y : array_like (*B, n)
        Outcomes.
    weights : array_like of bool (*B, n), optional
        Rows to use. Rows with a NaN in ``y`` or in their design row are always left out.

    Returns
    -------
    OLSResult
        Models with fewer rows than ``p + 1`` or a rank-deficient design get NaN everywhere.

    Examples
    --------
    >>> X = np.c_[np.ones(4), [0.0, 1, 2, 3]]
    >>> ols_batched(X, [1.0, 3, 5, 7]).params.round(6).tolist()
    [1.0, 2.0]
    """
    Xw, yw, w, batch, n, p = _prepare(X, y, weights)
    nobs = w.sum(axis=-1)
    df = nobs - p
    if n <= p:  # fewer rows than coefficients: nothing can be estimated
        nan_p, nan_b = np.full((*batch, p), np.nan), np.full(batch, np.nan)
        return OLSResult(nan_p, nan_p.copy(), nan_p.copy(), nan_p.copy(), nobs, df.astype(float),
                         nan_b, nan_b.copy(), nan_b.copy(), nan_b.copy())
    # QR of the zero-filled design: zero rows add nothing, so this is the fit on used rows.
    Q, R = np.linalg.qr(Xw)
    diag = np.abs(np.diagonal(R, axis1=-2, axis2=-1))
    scale = np.maximum(diag.max(axis=-1, initial=0.0), 1e-300)
    good = (diag > 1e-10 * scale[..., None]).all(axis=-1) & (df > 0)
    Rs = np.where(good[..., None, None], R, np.eye(p))
    qty = np.einsum("...np,...n->...p", Q, yw)
    beta = np.linalg.solve(Rs, qty[..., None])[..., 0]
    resid = (yw - np.einsum("...np,...p->...n", Xw, beta)) * w
    ssr = (resid**2).sum(axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        sigma2 = ssr / df
        Rinv = np.linalg.inv(Rs)
        cov_diag = (Rinv**2).sum(axis=-1)  # diag((R'R)^-1) = row sums of Rinv²
        bse = np.sqrt(cov_diag * sigma2[..., None])
        tv = beta / bse
        pv = 2 * stats.t.sf(np.abs(tv), df[..., None])
        ybar = (yw * w).sum(axis=-1) / nobs
        tss = (((yw - ybar[..., None]) * w) ** 2).sum(axis=-1)
        r2 = 1 - ssr / tss
        llf = -nobs / 2 * (np.log(2 * np.pi) + np.log(ssr / nobs) + 1)
    aic = -2 * llf + 2 * p
    bad = ~good
    beta, bse, tv, pv = (np.where(bad[..., None], np.nan, a) for a in (beta, bse, tv, pv))
    ssr, r2, llf, aic = (np.where(bad, np.nan, a) for a in (ssr, r2, llf, aic))
    return OLSResult(beta, bse, tv, pv, nobs, df.astype(float), ssr, r2, llf, aic)


@dataclass
class SharedDesignResult:
    """Results of :func:`ols_shared_design` for the K candidate columns.

    ``beta``, ``bse``, ``tvalues``, ``pvalues``, ``ssr``, ``rsquared``, ``llf``, ``aic``,
    ``partial_r2``: shape (*B, K), the coefficient of ``v_k`` and its full model's fit;
    ``nobs``, ``df_resid``: (*B,); ``ssr_reduced``, ``rsquared_reduced``, ``aic_reduced``:
    (*B,) for the covariates-only model on the same rows.
    """

    beta: np.ndarray
    bse: np.ndarray
    tvalues: np.ndarray
    pvalues: np.ndarray
    nobs: np.ndarray
    df_resid: np.ndarray
    ssr: np.ndarray
    rsquared: np.ndarray
    llf: np.ndarray
    aic: np.ndarray
    partial_r2: np.ndarray
    ssr_reduced: np.ndarray
    rsquared_reduced: np.ndarray
    aic_reduced: np.ndarray

    def conf_int(self, alpha: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
        q = stats.t.ppf(1 - alpha / 2, self.df_resid)[..., None]
        return self.beta - q * self.bse, self.beta + q * self.bse


def ols_shared_design(Xc, y, V, *, weights=None) -> SharedDesignResult:
    """OLS of ``y ~ Xc + v_k`` for K candidate columns ``v_k`` that share the rest of the design.

    By the Frisch–Waugh–Lovell theorem the coefficient of ``v_k`` equals the regression of
    the residual of ``y`` on the residual of ``v_k``, both after projecting out ``Xc``; the
    projection is computed once (QR of ``Xc``) for all K models, so K models cost little
    more than one. This is the layout of "every method × contrast against one outcome with
    the same covariates", and of each bootstrap replicate of it.

    Parameters
    ----------
    Xc : array_like (*B, n, q)
        Shared design (include the intercept column).
    y : array_like (*B, n)
    V : array_like (*B, K, n)
        Candidate columns.
    weights : array_like of bool (*B, n), optional
        Rows to use (rows with a NaN in ``y`` or ``Xc`` are always dropped); a model whose
        ``v_k`` is NaN on a used row is NaN.

    Examples
    --------
    >>> Xc = np.ones((5, 1))
    >>> r = ols_shared_design(Xc, [1.0, 3, 5, 7, 9], [[0.0, 1, 2, 3, 4]])
    >>> float(r.beta[0].round(6))
    2.0
    """
    Xc = np.asarray(Xc, float)
    y = np.asarray(y, float)
    V = np.asarray(V, float)
    batch = np.broadcast_shapes(Xc.shape[:-2], y.shape[:-1], V.shape[:-2])
    n, q = Xc.shape[-2:]
    K = V.shape[-2]
    Xc = np.broadcast_to(Xc, (*batch, n, q))
    y = np.broadcast_to(y, (*batch, n))
    V = np.broadcast_to(V, (*batch, K, n))
    ok = np.isfinite(y) & np.isfinite(Xc).all(axis=-1)
    if weights is not None:
        ok = ok & np.broadcast_to(np.asarray(weights, bool), (*batch, n))
    w = ok.astype(float)
    Xw = Xc * w[..., None] if ok.all() else np.where(ok[..., None], Xc, 0.0)
    yw = y if ok.all() else np.where(ok, y, 0.0)
    Vw = V if ok.all() else np.where(ok[..., None, :], V, 0.0)
    nobs = w.sum(axis=-1)
    p = q + 1
    df = nobs - p
    if n <= p:  # fewer rows than coefficients: nothing can be estimated
        nk, nb = np.full((*batch, K), np.nan), np.full(batch, np.nan)
        return SharedDesignResult(nk, nk, nk, nk, nobs, df.astype(float), nk, nk, nk, nk, nk, nb, nb, nb)
    Q, R = np.linalg.qr(Xw)
    Qt = np.swapaxes(Q, -1, -2)
    # projections as BLAS matmuls: (..., K, n) @ (..., n, q) @ (..., q, n)
    ry = (yw - ((yw[..., None, :] @ Q) @ Qt)[..., 0, :]) * w
    rv = (Vw - (Vw @ Q) @ Qt) * w[..., None, :]
    svv = (rv * rv).sum(axis=-1)
    svy = (rv @ ry[..., :, None])[..., 0]
    syy = (ry * ry).sum(axis=-1)
    ybar = (yw * w).sum(axis=-1) / np.maximum(nobs, 1)
    tss = (((yw - ybar[..., None]) * w) ** 2).sum(axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        beta = svy / svv
        ssr = syy[..., None] - beta * svy
        sigma2 = ssr / df[..., None]
        bse = np.sqrt(sigma2 / svv)
        tv = beta / bse
        pv = 2 * stats.t.sf(np.abs(tv), df[..., None])
        r2 = 1 - ssr / tss[..., None]
        llf = -nobs[..., None] / 2 * (np.log(2 * np.pi) + np.log(ssr / nobs[..., None]) + 1)
        llf_red = -nobs / 2 * (np.log(2 * np.pi) + np.log(syy / nobs) + 1)
        pr2 = tv**2 / (tv**2 + df[..., None])
    diag = np.abs(np.diagonal(R, axis1=-2, axis2=-1))
    good_c = (diag > 1e-10 * np.maximum(diag.max(axis=-1, initial=0.0), 1e-300)[..., None]).all(axis=-1) & (df > 0)
    vnan = (~np.isfinite(V) & ok[..., None, :]).any(axis=-1)
    good = good_c[..., None] & ~vnan & (svv > 1e-12 * np.maximum((Vw**2).sum(axis=-1), 1e-300))
    nanify = lambda a: np.where(good, a, np.nan)  # noqa: E731
    return SharedDesignResult(
        beta=nanify(beta), bse=nanify(bse), tvalues=nanify(tv), pvalues=nanify(pv), nobs=nobs,
        df_resid=df.astype(float), ssr=nanify(ssr), rsquared=nanify(r2), llf=nanify(llf),
        aic=nanify(-2 * llf + 2 * p), partial_r2=nanify(pr2),
        ssr_reduced=np.where(good_c, syy, np.nan), rsquared_reduced=np.where(good_c, 1 - syy / tss, np.nan),
        aic_reduced=np.where(good_c, -2 * llf_red + 2 * q, np.nan),
    )


@dataclass
class LogitResult:
    """Stacked logistic-regression results (maximum likelihood, Newton–Raphson).

    ``params``, ``bse``, ``zvalues``, ``pvalues`` have shape (*B, p); ``nobs``, ``llf``,
    ``converged`` and ``n_iter`` shape (*B,). ``fitted`` (*B, n) holds fitted probabilities
    (NaN on unused rows). p-values use the normal distribution, as statsmodels' Logit does.
    """

    params: np.ndarray
    bse: np.ndarray
    zvalues: np.ndarray
    pvalues: np.ndarray
    nobs: np.ndarray
    llf: np.ndarray
    converged: np.ndarray
    n_iter: np.ndarray
    fitted: np.ndarray

    def conf_int(self, alpha: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
        q = stats.norm.ppf(1 - alpha / 2)
        return self.params - q * self.bse, self.params + q * self.bse


def logit_batched(X, y, *, weights=None, max_iter: int = 100, tol: float = 1e-12) -> LogitResult:
    """Fit many logistic regressions at once by Newton–Raphson.

    Parameters as :func:`ols_batched`; ``y`` holds 0/1. A model whose estimates diverge
    (perfect separation) or that does not converge in ``max_iter`` steps is flagged
    ``converged = False`` and its estimates are NaN.

    Examples
    --------
    >>> X = np.c_[np.ones(6), [0.0, 1, 2, 3, 4, 5]]
    >>> r = logit_batched(X, [0, 0, 1, 0, 1, 1])
    >>> bool(r.converged), round(float(r.params[1]), 4)
    (True, 1.214)
    """
    Xw, yw, w, batch, n, p = _prepare(X, y, weights)
    beta = np.zeros((*batch, p))
    converged = np.zeros(batch, dtype=bool)
    n_iter = np.zeros(batch, dtype=int)
    for it in range(max_iter):
        eta = np.einsum("...np,...p->...n", Xw, beta)
        mu = special.expit(eta)
        W = mu * (1 - mu) * w
        grad = np.einsum("...np,...n->...p", Xw, (yw - mu) * w)
        H = np.einsum("...np,...n,...nq->...pq", Xw, W, Xw)
        try:
            step = np.linalg.solve(H, grad[..., None])[..., 0]
        except np.linalg.LinAlgError:  # one singular model: fall back for the whole batch
            step = np.einsum("...pq,...q->...p", np.linalg.pinv(H), grad)
        active = ~converged
        beta = np.where(active[..., None], beta + step, beta)
        n_iter = np.where(active, it + 1, n_iter)
        done = np.abs(step).max(axis=-1) < tol * (1 + np.abs(beta).max(axis=-1))
        converged |= done & np.isfinite(beta).all(axis=-1)
        if converged.all():
            break
    eta = np.einsum("...np,...p->...n", Xw, beta)
    mu = special.expit(eta)
    W = mu * (1 - mu) * w
    H = np.einsum("...np,...n,...nq->...pq", Xw, W, Xw)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        cov = np.linalg.pinv(H)
        bse = np.sqrt(np.diagonal(cov, axis1=-2, axis2=-1))
        zv = beta / bse
        pv = 2 * stats.norm.sf(np.abs(zv))
        llf = (w * (yw * np.log(mu) + (1 - yw) * np.log1p(-mu))).sum(axis=-1)
    # separation: fitted probabilities of exactly 0/1 or huge coefficients
    sep = (np.abs(beta) > 50).any(axis=-1)
    bad = ~converged | sep
    beta, bse, zv, pv = (np.where(bad[..., None], np.nan, a) for a in (beta, bse, zv, pv))
    llf = np.where(bad, np.nan, llf)
    fitted = np.where((w > 0) & ~bad[..., None], mu, np.nan)
    return LogitResult(beta, bse, zv, pv, w.sum(axis=-1), llf, converged & ~sep, n_iter, fitted)


def auc_batched(score, label) -> np.ndarray:
    """Area under the ROC curve of ``score`` for binary ``label`` along the last axis.

    Equals the Mann–Whitney probability P(score of a positive > score of a negative), ties
    counted one half. NaN scores or labels are left out; NaN if a class is absent.

    >>> float(auc_batched(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1])))
    0.75
    """
    score = np.asarray(score, dtype=float)
    label = np.asarray(label, dtype=float)
    score, label = np.broadcast_arrays(score, label)
    ok = np.isfinite(score) & np.isfinite(label)
    out = np.full(score.shape[:-1], np.nan)
    for idx in np.ndindex(out.shape):
        s = score[idx][ok[idx]]
        lab = label[idx][ok[idx]] > 0.5
        n1, n0 = lab.sum(), (~lab).sum()
        if n1 == 0 or n0 == 0:
            continue
        r = stats.rankdata(s)
        out[idx] = (r[lab].sum() - n1 * (n1 + 1) / 2) / (n1 * n0)
    return out


def retest_batched(x0, x1, *, alpha: float = 0.05) -> dict[str, np.ndarray]:
    """Test-retest reliability of many (visit, repeat) pair sets along the last axis.

    Parameters
    ----------
    x0, x1 : array_like (*B, n)
        First and repeated measurement of the same n subjects (e.g. volume in mm³); pairs
        with a NaN are left out.
    alpha : float
        ``1 - alpha`` intervals and the ``1 - alpha`` quantile of SDC and RC.

    Returns
    -------
    dict of str -> ndarray (*B,)
        ``n``; ``mean`` (mean of both scans); ``mean_diff`` (repeat − first) with
        ``mean_diff_ci_lower/upper`` (t) and ``sd_diff``; ``wsd`` within-subject SD
        ``sqrt(Σd²/2n)``; ``wcv_pct`` root-mean-square within-subject CV
        ``100 sqrt(mean((|d|/√2 / m_i)²))`` (Glüer 1995); ``icc`` ICC(A,1) (two-way,
        absolute agreement, single scan; McGraw & Wong 1996 case 2A) with
        ``icc_ci_lower/upper``; ``sem`` the agreement standard error of measurement
        ``sqrt(σ²_scan + σ²_error)`` from the ICC's variance components (de Vet 2006);
        ``sdc`` smallest detectable change ``z √2 SEM`` and ``sdc_pct`` (% of ``mean``);
        ``rc`` repeatability coefficient ``z SD(d)`` (Bland & Altman 1986: repeat
        differences lie within ``mean_diff ± rc`` with probability ``1 - alpha``).
        NaN where fewer than 3 complete pairs.

    Examples
    --------
    >>> r = retest_batched([10.0, 20, 30, 40], [11.0, 19, 31, 41])
    >>> round(float(r["wsd"]), 4), round(float(r["mean_diff"]), 2)
    (0.7071, 0.5)
    """
    x0, x1 = np.broadcast_arrays(np.asarray(x0, float), np.asarray(x1, float))
    ok = np.isfinite(x0) & np.isfinite(x1)
    n = ok.sum(axis=-1).astype(float)
    a = np.where(ok, x0, 0.0)
    b = np.where(ok, x1, 0.0)
    d = b - a
    m_i = (a + b) / 2
    with np.errstate(all="ignore"):
        mean = m_i.sum(axis=-1) / n
        dbar = d.sum(axis=-1) / n
        sd_d = np.sqrt((np.where(ok, d - dbar[..., None], 0.0) ** 2).sum(axis=-1) / (n - 1))
        wsd = np.sqrt((d**2).sum(axis=-1) / (2 * n))
        cv2 = np.where(ok, (d**2 / 2) / np.where(ok, m_i, 1.0) ** 2, 0.0)
        wcv = 100 * np.sqrt(cv2.sum(axis=-1) / n)
        # two-way ANOVA of the n x 2 table (k = 2 scans)
        k = 2.0
        ssr = k * (np.where(ok, m_i - mean[..., None], 0.0) ** 2).sum(axis=-1)
        col0 = a.sum(axis=-1) / n
        col1 = b.sum(axis=-1) / n
        ssc = n * ((col0 - mean) ** 2 + (col1 - mean) ** 2)
        sst = (np.where(ok, a - mean[..., None], 0.0) ** 2 + np.where(ok, b - mean[..., None], 0.0) ** 2).sum(axis=-1)
        sse = sst - ssr - ssc
        msr, msc, mse = ssr / (n - 1), ssc / (k - 1), sse / ((n - 1) * (k - 1))
        icc = (msr - mse) / (msr + (k - 1) * mse + k * (msc - mse) / n)
        aa = k * icc / (n * (1 - icc))
        bb = 1 + k * icc * (n - 1) / (n * (1 - icc))
        v = (aa * msc + bb * mse) ** 2 / ((aa * msc) ** 2 / (k - 1) + (bb * mse) ** 2 / ((n - 1) * (k - 1)))
        f_lo = stats.f.ppf(1 - alpha / 2, n - 1, v)
        f_hi = stats.f.ppf(1 - alpha / 2, v, n - 1)
        lo = n * (msr - f_lo * mse) / (f_lo * (k * msc + (k * n - k - n) * mse) + n * msr)
        hi = n * (f_hi * msr - mse) / (k * msc + (k * n - k - n) * mse + n * f_hi * msr)
        sem = np.sqrt(np.maximum((msc - mse) / n, 0.0) + mse)
        z = stats.norm.ppf(1 - alpha / 2)
        tq = stats.t.ppf(1 - alpha / 2, n - 1)
        out = {
            "n": n, "mean": mean, "mean_diff": dbar,
            "mean_diff_ci_lower": dbar - tq * sd_d / np.sqrt(n),
            "mean_diff_ci_upper": dbar + tq * sd_d / np.sqrt(n),
            "sd_diff": sd_d, "wsd": wsd, "wcv_pct": wcv, "icc": icc, "icc_ci_lower": lo,
            "icc_ci_upper": hi, "sem": sem, "sdc": z * np.sqrt(2) * sem,
            "sdc_pct": 100 * z * np.sqrt(2) * sem / mean, "rc": z * sd_d,
        }
    few = n < 3
    return {key: (val if key == "n" else np.where(few, np.nan, val)) for key, val in out.items()}


def n_per_arm_batched(delta, sd, *, alpha: float = 0.05, power: float = 0.8) -> np.ndarray:
    """Subjects per arm of a two-arm parallel trial (equal arms, two-sided t-test) to detect
    a difference ``delta`` in mean change when the individual change has SD ``sd``.

    Solves ``n = 2 ((t_{1-α/2, 2n-2} + t_{power, 2n-2}) sd / delta)²`` by fixed-point
    iteration from the normal-approximation start (the noncentral-t answer of
    ``statsmodels.stats.power.TTestIndPower`` to within one subject; a t-test ignores the
    negligible other tail). Returns the (unrounded) n, ≥ 2; NaN where ``delta`` is 0 or
    not finite or ``sd`` not positive. Any broadcastable shapes.

    >>> round(float(n_per_arm_batched(0.5, 1.0)), 1)
    63.8
    """
    delta = np.abs(np.asarray(delta, float))
    sd = np.asarray(sd, float)
    with np.errstate(all="ignore"):
        es = delta / sd
        za, zb = stats.norm.ppf(1 - alpha / 2), stats.norm.ppf(power)
        n = 2 * ((za + zb) / es) ** 2
        for _ in range(20):
            df = np.maximum(2 * n - 2, 1.0)
            n = 2 * ((stats.t.ppf(1 - alpha / 2, df) + stats.t.ppf(power, df)) / es) ** 2
        bad = ~np.isfinite(es) | (es <= 0) | ~(sd > 0)
    return np.where(bad, np.nan, np.maximum(n, 2.0))


def signed_rank_test(d) -> tuple[float, float]:
    """Two-sided Wilcoxon signed-rank test of paired differences ``d`` (zeros dropped).

    The same statistic and p-value as ``scipy.stats.wilcoxon(d, zero_method="wilcox")``.
    Where scipy enumerates all 2**n sign flips (n <= 13 with ties or zeros: the exact
    permutation distribution), the distribution of the signed rank sum is counted here
    directly, in milliseconds instead of about a second; elsewhere scipy is called.

    >>> stat, p = signed_rank_test([1.0, 2.0, 2.0, 0.0, -1.0, 3.0])
    >>> round(stat, 1), round(p, 4)
    (1.5, 0.1875)
    """
    d = np.asarray(d, dtype=float).ravel()
    nz = d[d != 0]
    if nz.size == 0:
        raise ValueError("every paired difference is zero")
    ties = np.unique(np.abs(nz)).size < nz.size
    if d.size > 13 or not (ties or nz.size < d.size):
        res = stats.wilcoxon(d, zero_method="wilcox")
        return float(res.statistic), float(res.pvalue)
    r = stats.rankdata(np.abs(nz))
    r_plus = float(r[nz > 0].sum())
    stat = min(r_plus, float(r[nz < 0].sum()))
    twice = np.rint(2 * r).astype(np.int64)  # midranks are multiples of 1/2
    counts = np.zeros(int(twice.sum()) + 1)
    counts[0] = 1.0
    for v in twice:  # each rank's sign flips independently under the null
        counts[v:] = counts[v:] + counts[:-v].copy()
    t = int(np.rint(2 * r_plus))
    total = counts.sum()
    p = 2 * min(counts[: t + 1].sum() / total, counts[t:].sum() / total)
    return stat, float(min(p, 1.0))
