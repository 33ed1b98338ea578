"""A results dataset (the schema evaluate writes) with planted, known effects for the statistics tests.

Generative model (volumes in mm³):

* true thalamic volume ``vt = 15000 + 0.006 (icv - 1.5e6) - group_effect·MS + u``,
  ``u ~ N(0, sd_u)``;
* ground truth ``gt = vt + e_g`` and each method ``vol = vt + bias + prop (vt - 15000) + e_m``
  (+ site location ``gamma_site`` and scale ``delta_site`` on ``e_m``), ``e_g``/``e_m`` with
  the same SD, so proportional bias is absent unless planted;
* SDMT (continuous) ``= 50 + 10 (beta_sdmt z(u) + 0.3 z(age) + e)``, ``Var(e) = 1 - beta² - 0.09``:
  its standardised beta on the head-size-adjusted volume is ``beta_sdmt``;
  EDSS (rounded to 0.5) likewise with ``beta_edss``;
* annualised % change ``r ~ N(atrophy_rate, sd_rate)``, follow-up ``vt1 = vt0 (1 + r·years/100)``;
  EDSS worsening drawn with ``logit P = alpha_w + log(or_worsening)·r`` and EDSS raised by the
  rule's step (cut 5.5).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import xarray as xr

DEFAULT_SPECS = {
    # (method, contrast): (bias mm³, proportional factor, noise SD mm³, dice mean)
    ("exact", "T1w"): (0.0, 0.0, 0.0, 0.95),
    ("first-sim", "T1w"): (1500.0, 0.0, 300.0, 0.85),
    ("freesurfer-sim", "T1w"): (900.0, 0.15, 300.0, 0.86),
    ("mindglide-sim", "T1w"): (100.0, 0.0, 300.0, 0.88),
    ("mindglide-sim", "R1"): (50.0, 0.0, 250.0, 0.89),
}


def _edss_step(e0, cut=5.5):
    return np.where(e0 == 0, 1.5, np.where(e0 <= cut, 1.0, 0.5))


def build_results(
    rng=0,
    *,
    n_subjects=150,
    specs=None,
    sd_u=1200.0,
    gt_noise=300.0,
    beta_sdmt=0.3,
    beta_edss=-0.25,
    atrophy_rate=-0.8,
    sd_rate=0.6,
    or_worsening=0.4,
    group_effect=800.0,
    sites=None,
    n_gt=None,
    followup=True,
    n_followups=1,
):
    """Return ``(ds, truth)``: a results Dataset and a dict of planted values.

    ``sites``: dict site -> (gamma mm³, delta scale, fraction MS); default one site.
    """
    rng = np.random.default_rng(rng)
    specs = dict(DEFAULT_SPECS if specs is None else specs)
    N = n_subjects
    sites = sites or {"site-a": (0.0, 1.0, 0.7)}
    site_names = list(sites)
    site = rng.choice(site_names, size=N)
    frac_ms = np.array([sites[s][2] for s in site])
    group = np.where(rng.random(N) < frac_ms, "MS", "HC")
    ms = (group == "MS").astype(float)
    sex = rng.choice(["F", "M"], size=N)
    age = rng.normal(45, 10, N)
    icv = rng.normal(1.5e6, 1.2e5, N)
    u = rng.normal(0, sd_u, N)
    vt0 = 15000 + 0.006 * (icv - 1.5e6) - group_effect * ms + u
    zu = u / sd_u
    za = (age - 45) / 10

    def outcome(beta):
        e = rng.normal(0, np.sqrt(1 - beta**2 - 0.09), N)
        return beta * zu + 0.3 * za + e

    sdmt0 = 50 + 10 * outcome(beta_sdmt)
    edss0 = np.clip(np.round((3 + 1.5 * outcome(beta_edss)) * 2) / 2, 0, 9.5)
    rate = rng.normal(atrophy_rate, sd_rate, N)
    T = 1 + int(n_followups) if followup else 1
    tps = ["baseline"] + [f"m{12 * k}" for k in range(1, T)]
    years = np.stack([k * (1 + rng.uniform(-0.1, 0.1, N)) for k in range(T)], axis=1)
    vt = vt0[:, None] * (1 + rate[:, None] * years / 100)
    lin = np.log(or_worsening) * (rate - atrophy_rate) - 0.8
    worse = rng.random(N) < 1 / (1 + np.exp(-lin))
    edss = np.repeat(edss0[:, None], T, axis=1)
    if T > 1:
        edss[:, -1] = np.where(worse, edss0 + _edss_step(edss0), edss0)
    sdmt = sdmt0[:, None] + np.c_[np.zeros(N), rng.normal(0, 2, (N, T - 1))]
    methods = sorted({m for m, _ in specs})
    contrasts = sorted({c for _, c in specs}, key=lambda c: (c != "T1w", c))
    M, C = len(methods), len(contrasts)
    side = ["left", "right", "total"]
    gt_tot = vt + rng.normal(0, gt_noise, (N, T))
    if n_gt is not None:
        gt_tot[n_gt:, :] = np.nan
    if T > 1:
        gt_tot[:, 1:] = np.nan  # ground truth at baseline only
    vol = np.full((N, T, M, C, 3), np.nan)
    dice = np.full((N, T, M, C, 3), np.nan)
    gamma = np.array([sites[s][0] for s in site])
    delta = np.array([sites[s][1] for s in site])
    for (m, c), (a, prop, sd, dmean) in specs.items():
        i, j = methods.index(m), contrasts.index(c)
        e = rng.normal(0, 1, (N, T)) * sd
        tot = vt + a + prop * (vt - 15000) + gamma[:, None] + delta[:, None] * e
        vol[:, :, i, j, 2] = tot
        dice[:, :, i, j, 2] = np.clip(dmean + rng.normal(0, 0.02, (N, T)), 0, 1)
    frac = 0.5 + rng.normal(0, 0.005, vol.shape[:-1])
    vol[..., 0] = vol[..., 2] * frac
    vol[..., 1] = vol[..., 2] - vol[..., 0]
    dice[..., 0] = dice[..., 2]
    dice[..., 1] = dice[..., 2]
    gt = np.stack([gt_tot * 0.5, gt_tot * 0.5, gt_tot], axis=-1)
    dims5 = ("subject", "timepoint", "method", "contrast", "side")
    dims2 = ("subject", "timepoint")
    rep = lambda x: np.repeat(np.asarray(x)[:, None], T, axis=1)  # noqa: E731
    diff = vol - gt[:, :, None, None, :]
    ds = xr.Dataset(
        {
            "volume_mm3": (dims5, vol),
            "gt_volume_mm3": (("subject", "timepoint", "side"), gt),
            "dice": (dims5, dice),
            "sensitivity": (dims5, np.clip(dice + 0.03, 0, 1)),
            "precision": (dims5, np.clip(dice - 0.03, 0, 1)),
            "volume_diff_mm3": (dims5, diff),
            "volume_diff_pct": (dims5, diff / gt[:, :, None, None, :] * 100),
            "site": (dims2, rep(site).astype(object)),
            "group": (dims2, rep(group).astype(object)),
            "sex": (dims2, rep(sex).astype(object)),
            "age": (dims2, rep(age) + years),
            "disease_duration": (dims2, rep(rng.uniform(0, 20, N)) + years),
            "edss": (dims2, edss),
            "sdmt": (dims2, sdmt),
            "years_since_baseline": (dims2, years),
            "icv_mm3": (dims2, rep(icv)),
        },
        coords={
            "subject": [f"sub-{k:03d}" for k in range(N)],
            "timepoint": tps,
            "method": methods,
            "contrast": contrasts,
            "side": side,
        },
        attrs={"synthetic": True},
    )
    var_v = sd_u**2  # variance of vt within group/icv strata is not needed for slopes below
    sv2 = np.var(vt0)  # population-ish variance of the true volume (for slope truth)
    truth = {"specs": specs, "beta_sdmt": beta_sdmt, "beta_edss": beta_edss,
             "atrophy_rate": atrophy_rate, "or_worsening": or_worsening,
             "group_effect": group_effect, "sd_u": var_v**0.5, "worse": worse}
    slopes = {}
    for key, (_, prop, sd, _) in specs.items():
        num = prop * sv2 * (1 + prop / 2) + (sd**2 - gt_noise**2) / 2
        den = sv2 * (1 + prop / 2) ** 2 + (sd**2 + gt_noise**2) / 4
        slopes[key] = num / den
    truth["prop_slope"] = slopes
    truth["table"] = pd.DataFrame({"site": site, "group": group, "rate": rate})
    return ds, truth
