"""Statistical stage: batched numpy kernels vs a loop of statsmodels formula fits.

Workload (the study design scaled up): 10 methods × 6 contrasts × 4 outcomes on 300
subjects: for every outcome × method × contrast the cross-sectional model
``z(outcome) ~ z(volume residualised on ICV) + age + sex`` plus the covariates-only model,
then 1,000 bootstrap replicates of every model's standardised beta (percentile CIs).

- ``batched``: :func:`thaldask.stats.fit_clinical` (one call, ``bootstrap=1000``), which
  stacks all designs into batched OLS solves;
- ``statsmodels loop``: the textbook way, ``statsmodels.formula.api.ols`` per model and per
  bootstrap replicate on a pandas frame (head-size residual and z-scores recomputed the same
  way). The point fits are timed in full; the bootstrap loop is timed on the first
  ``--loop-replicates`` replicates of every model (same resampled rows as the batched run)
  and extrapolated linearly to 1,000 — the script says so in its output.

Coefficients of both paths are compared (point fits: beta, SE, p; bootstrap: every replicate
beta of the timed subset). Results print as a table and go to JSON (``--out``).

Usage::

    nice -n 10 python benchmarks/stats.py --out benchmarks/results/stats.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import time
import warnings

import numpy as np
import pandas as pd
import xarray as xr

N_METHODS, N_CONTRASTS, OUTCOMES = 10, 6, ["edss", "sdmt", "t25fw", "nfl"]


def make_dataset(n_subjects: int, seed: int = 0) -> xr.Dataset:
    """Results-schema dataset (baseline only) with planted associations."""
    rng = np.random.default_rng(seed)
    n = n_subjects
    methods = [f"method-{k}" for k in range(N_METHODS)]
    contrasts = ["T1w", "FLAIR", "R1", "T1w+FLAIR", "T1w+R1", "T1w+FLAIR+R1"]
    icv = rng.normal(1.5e6, 1.2e5, n)
    age = rng.normal(45, 10, n)
    sex = rng.choice(["F", "M"], n)
    u = rng.normal(0, 1200, n)
    vt = 15000 + 0.006 * (icv - 1.5e6) + u
    vol = (vt[:, None, None] + rng.normal(0, 300, (n, N_METHODS, N_CONTRASTS))
           + rng.normal(0, 500, (1, N_METHODS, N_CONTRASTS)))
    vol = np.stack([vol * 0.5, vol * 0.5, vol], axis=-1)[:, None]  # (subject, timepoint, m, c, side)
    z = u / 1200
    outs = {
        "edss": 3 - 0.8 * z + rng.normal(0, 1.2, n),
        "sdmt": 50 + 4 * z - 0.3 * (age - 45) + rng.normal(0, 8, n),
        "t25fw": 6 - 0.5 * z + rng.normal(0, 1.5, n),
        "nfl": 10 - 1.0 * z + 0.1 * (age - 45) + rng.normal(0, 3, n),
    }
    d2 = ("subject", "timepoint")
    data = {"volume_mm3": (("subject", "timepoint", "method", "contrast", "side"), vol),
            "age": (d2, age[:, None]), "sex": (d2, sex[:, None].astype(object)),
            "icv_mm3": (d2, icv[:, None])}
    data |= {k: (d2, v[:, None]) for k, v in outs.items()}
    return xr.Dataset(data, coords={"subject": [f"sub-{i:04d}" for i in range(n)],
                                    "timepoint": ["baseline"], "method": methods,
                                    "contrast": contrasts, "side": ["left", "right", "total"]})


def loop_point_fits(ds: xr.Dataset):
    """One statsmodels formula fit per model (plus the covariates-only fit per outcome)."""
    import statsmodels.formula.api as smf

    b = ds.sel(timepoint="baseline", side="total")
    base = pd.DataFrame({"icv": b.icv_mm3.values, "age": b.age.values, "sex": b.sex.values.astype(str)})
    rows = []
    for outcome in OUTCOMES:
        df = base.assign(y=b[outcome].values)
        df["zy"] = (df.y - df.y.mean()) / df.y.std(ddof=1)
        red = smf.ols("zy ~ age + sex", df).fit()
        for m in ds.method.values:
            for c in ds.contrast.values:
                d = df.assign(v=b.volume_mm3.sel({"method": m, "contrast": c}).values)
                slope = smf.ols("v ~ icv", d).fit().params["icv"]
                d["va"] = d.v - slope * (d.icv - d.icv.mean())
                d["zv"] = (d.va - d.va.mean()) / d.va.std(ddof=1)
                fit = smf.ols("zy ~ zv + age + sex", d).fit()
                rows.append({"outcome": outcome, "method": m, "contrast": c,
                             "beta": fit.params["zv"], "se": fit.bse["zv"], "p": fit.pvalues["zv"],
                             "delta_r2": fit.rsquared - red.rsquared, "aic": fit.aic})
    return pd.DataFrame(rows)


def loop_bootstrap(ds: xr.Dataset, n_rep: int, n_boot_total: int, seed: int):
    """The first ``n_rep`` bootstrap replicates of every model, one formula fit each, on the
    same resampled rows as the batched run (same generator, same chunking)."""
    import statsmodels.formula.api as smf

    from thaldask.stats import _data
    from thaldask.stats.clinical import adjust_head_size

    b = ds.sel(timepoint="baseline", side="total")
    n = b.sizes["subject"]
    K = N_METHODS * N_CONTRASTS
    vol = b.volume_mm3.transpose("subject", "method", "contrast").values.reshape(n, K)
    va = adjust_head_size(vol.T, b.icv_mm3.values)  # (K, n), as fit_clinical
    z = _data.zscore(va, axis=-1)
    out = np.empty((len(OUTCOMES), n_rep, K))
    for o, outcome in enumerate(OUTCOMES):
        y = _data.zscore(b[outcome].values)
        rng = np.random.default_rng(seed)
        idx = rng.integers(0, n, size=(min(100, n_boot_total), n))[:n_rep]
        for r in range(n_rep):
            ii = idx[r]
            base = pd.DataFrame({"age": b.age.values[ii], "sex": b.sex.values[ii].astype(str)})
            yb = y[ii]
            base["zy"] = (yb - yb.mean()) / yb.std(ddof=1)
            for k in range(K):
                vb = z[k, ii]
                d = base.assign(zv=(vb - vb.mean()) / vb.std(ddof=1))
                out[o, r, k] = smf.ols("zy ~ zv + age + sex", d).fit().params["zv"]
    return out


def batched_bootstrap_betas(ds: xr.Dataset, n_boot: int, seed: int):
    """Replicate betas of the batched path, (outcome, replicate, K)."""
    from thaldask.stats import _data
    from thaldask.stats.clinical import adjust_head_size, bootstrap_betas

    b = ds.sel(timepoint="baseline", side="total")
    n = b.sizes["subject"]
    K = N_METHODS * N_CONTRASTS
    vol = b.volume_mm3.transpose("subject", "method", "contrast").values.reshape(n, K)
    z = _data.zscore(adjust_head_size(vol.T, b.icv_mm3.values), axis=-1)
    Xc = np.c_[b.age.values, (b.sex.values.astype(str) == "M").astype(float)]
    return np.stack([bootstrap_betas(_data.zscore(b[o].values), z, Xc, n_boot=n_boot, rng=seed)
                     for o in OUTCOMES])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--subjects", type=int, default=300)
    ap.add_argument("--bootstrap", type=int, default=1000)
    ap.add_argument("--loop-replicates", type=int, default=10,
                    help="bootstrap replicates per model timed in the statsmodels loop (extrapolated)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="benchmarks/results/stats.json")
    args = ap.parse_args(argv)

    import statsmodels

    from thaldask import __version__
    from thaldask.stats import fit_clinical

    ds = make_dataset(args.subjects, args.seed)
    n_models = len(OUTCOMES) * N_METHODS * N_CONTRASTS
    warnings.simplefilter("ignore", RuntimeWarning)

    # batched: point fits alone, then point fits + bootstrap through the public API
    fit_clinical(ds, outcomes=OUTCOMES, as_frame=True)  # warm-up (imports)
    t0 = time.perf_counter()
    point = fit_clinical(ds, outcomes=OUTCOMES, as_frame=True)
    t_batched_point = time.perf_counter() - t0
    t0 = time.perf_counter()
    full = fit_clinical(ds, outcomes=OUTCOMES, bootstrap=args.bootstrap, rng=args.seed, as_frame=True)
    t_batched_all = time.perf_counter() - t0
    t_batched_boot = t_batched_all - t_batched_point

    # statsmodels loop: every point fit
    t0 = time.perf_counter()
    loop = loop_point_fits(ds)
    t_loop_point = time.perf_counter() - t0
    m = point.merge(loop, on=["outcome", "method", "contrast"])
    diff_point = {
        "beta": float(np.max(np.abs(m.beta_std - m.beta))),
        "se": float(np.max(np.abs(m.se_x - m.se_y))),
        "p": float(np.max(np.abs(m.p_x - m.p_y))),
        "delta_r2": float(np.max(np.abs(m.delta_r2_x - m.delta_r2_y))),
        "aic": float(np.max(np.abs(m.aic_x - m.aic_y))),
    }

    # statsmodels loop: a subset of bootstrap replicates, same resamples as the batched path
    r = args.loop_replicates
    t0 = time.perf_counter()
    loop_boot = loop_bootstrap(ds, r, args.bootstrap, args.seed)
    t_loop_boot_subset = time.perf_counter() - t0
    t_loop_boot = t_loop_boot_subset * args.bootstrap / r
    batched_boot = batched_bootstrap_betas(ds, args.bootstrap, args.seed)
    diff_boot = float(np.max(np.abs(batched_boot[:, :r] - loop_boot)))
    # and the batched percentile CIs come from exactly these replicates
    lo = np.percentile(batched_boot, 2.5, axis=1).ravel()
    diff_ci = float(np.max(np.abs(lo - full.beta_std_boot_ci_lower.to_numpy())))

    t_batched_total = t_batched_all
    t_loop_total = t_loop_point + t_loop_boot
    res = {
        "workload": {"subjects": args.subjects, "methods": N_METHODS, "contrasts": N_CONTRASTS,
                     "outcomes": len(OUTCOMES), "models": n_models, "bootstrap": args.bootstrap,
                     "model_fits_total": n_models * (1 + args.bootstrap)},
        "seconds": {
            "batched_point": t_batched_point, "batched_bootstrap": t_batched_boot,
            "batched_total": t_batched_total, "loop_point": t_loop_point,
            "loop_bootstrap_measured": t_loop_boot_subset,
            "loop_bootstrap_replicates_measured": r,
            "loop_bootstrap_extrapolated": t_loop_boot, "loop_total_extrapolated": t_loop_total,
        },
        "speedup": {"point": t_loop_point / t_batched_point,
                    "bootstrap": t_loop_boot / t_batched_boot,
                    "total": t_loop_total / t_batched_total},
        "max_abs_diff": {**{f"point_{k}": v for k, v in diff_point.items()},
                         "bootstrap_replicate_beta": diff_boot, "bootstrap_ci_vs_replicates": diff_ci},
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "versions": {"thaldask": __version__, "numpy": np.__version__, "statsmodels": statsmodels.__version__,
                     "pandas": pd.__version__, "python": sys.version.split()[0]},
        "hardware": {"machine": platform.machine(), "processor": platform.processor(),
                     "cpus": os.cpu_count(), "system": platform.platform()},
        "note": (f"statsmodels bootstrap loop timed on {r} of {args.bootstrap} replicates per model "
                 f"({n_models * r} fits) and extrapolated linearly"),
    }
    print(f"stats benchmark: {n_models} models ({N_METHODS} methods × {N_CONTRASTS} contrasts × "
          f"{len(OUTCOMES)} outcomes), {args.subjects} subjects, {args.bootstrap} bootstrap replicates")
    print(f"{'':28s}{'batched numpy':>16s}{'statsmodels loop':>20s}{'ratio':>10s}")
    print(f"{'point fits':28s}{t_batched_point:>14.3f} s{t_loop_point:>18.2f} s{res['speedup']['point']:>9.0f}×")
    print(f"{f'bootstrap ({args.bootstrap:,} reps)':28s}{t_batched_boot:>14.3f} s{t_loop_boot:>17.1f}* s"
          f"{res['speedup']['bootstrap']:>9.0f}×")
    print(f"{'total':28s}{t_batched_total:>14.3f} s{t_loop_total:>17.1f}* s{res['speedup']['total']:>9.0f}×")
    print(f"* {res['note']} (measured {t_loop_boot_subset:.1f} s)")
    print("max |difference|: " + ", ".join(f"{k} {v:.1e}" for k, v in res["max_abs_diff"].items()))
    print(f"peak RSS {res['peak_rss_mb']:.0f} MB")
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(res, f, indent=2)
    print(f"wrote {args.out}")
    return res


if __name__ == "__main__":
    main()
