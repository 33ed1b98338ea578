"""Subject-level truth of a synthetic cohort, without images.

:func:`make_subject_table` draws everything that does not need a voxel: group, age, sex,
site, head size, latent severity, the planted thalamic volume at every timepoint, the
annualised atrophy rate and the clinical outcomes that depend on them. It is fast (thousands
of subjects per second), so statistical tests can draw many cohorts; :func:`make_cohort`
uses the same table (same seed, same values) and then renders images whose ground-truth
thalamus has these volumes up to voxel discretisation.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from thaldask.cohort.clinical import GROUPS
from thaldask.errors import ConfigError
from thaldask.schema import RESCAN_SUFFIX
from thaldask.synth.anatomy import list_templates
from thaldask.synth.params import SITE_PRESETS, merge_params

__all__ = [
    "CLINICAL_COLUMNS",
    "RESCAN_SUFFIX",
    "REPEAT_INDEX",
    "make_sites",
    "make_subject_table",
    "timepoint_names",
]

#: ``timepoint_index`` of the repeat of visit k is ``REPEAT_INDEX + k`` (its own random draws)
REPEAT_INDEX = 100

CLINICAL_COLUMNS = [
    "subject",
    "timepoint",
    "site",
    "group",
    "age",
    "sex",
    "disease_duration",
    "edss",
    "sdmt",
    "years_since_baseline",
    "icv_mm3",
]


def timepoint_names(n_timepoints: int) -> list[str]:
    """``baseline``, ``m12``, ``m24``, ..."""
    return ["baseline"] + [f"m{12 * k}" for k in range(1, n_timepoints)]


def make_sites(n_sites: int, rng) -> list[dict]:
    """Acquisition sites: the presets in order, then random variations of them."""
    rng = np.random.default_rng(rng)
    sites = []
    for k in range(n_sites):
        s = dict(SITE_PRESETS[k % len(SITE_PRESETS)])
        s["voxel_mm"] = list(s["voxel_mm"])
        if k >= len(SITE_PRESETS):
            s["scale"] = float(round(s["scale"] * np.exp(rng.normal(0, 0.2)), 3))
            s["bias"] = float(round(np.clip(s["bias"] + rng.normal(0, 0.05), 0.05, 0.4), 3))
            s["noise"] = float(
                round(np.clip(s["noise"] * np.exp(rng.normal(0, 0.2)), 0.01, 0.06), 4)
            )
            s["volume_shift_mm"] = float(round(rng.normal(0, 0.1), 3))
            s["r1_scale"] = float(round(np.clip(rng.normal(1.0, 0.01), 0.98, 1.02), 4))
        s["name"] = f"site-{k + 1}"
        sites.append(s)
    return sites


def _edss_round(x: np.ndarray) -> np.ndarray:
    """Continuous EDSS to the scale's steps: 0, 1.0, 1.5, ..., 9.5."""
    x = np.clip(x, 0.0, 9.5)
    r = np.round(x * 2) / 2
    return np.where(x < 0.5, 0.0, np.maximum(r, 1.0))


def _worsening_step(edss: np.ndarray) -> np.ndarray:
    """Minimal confirmed worsening: 1.5 from 0, 1.0 from 1.0-5.5, 0.5 above 5.5."""
    return np.where(edss == 0, 1.5, np.where(edss <= 5.5, 1.0, 0.5))


def make_subject_table(
    n_subjects: int,
    *,
    n_timepoints: int = 2,
    n_sites: int = 2,
    seed=0,
    params: dict | None = None,
    n_templates: int | None = None,
) -> pd.DataFrame:
    """Subject-level truth and clinical table of a synthetic cohort (no images).

    Parameters
    ----------
    n_subjects, n_timepoints, n_sites : cohort size (timepoints ``baseline``, ``m12``, ...)
    seed : int or ``np.random.SeedSequence``; same seed, same table
    params : partial parameter dict merged into :func:`thaldask.synth.params.default_params`
    n_templates : number of anatomy templates to draw from (default: all shipped)

    Returns
    -------
    pandas.DataFrame, one row per scan (subject, timepoint), with the clinical columns
    :data:`CLINICAL_COLUMNS` (missing values NaN, as written to ``clinical.csv``) and the latent
    truth: ``severity`` (patients, standard normal; NaN for controls), ``atrophy_rate``
    (fraction per year), ``thalamus_{left,right,total}_mm3`` (planted volumes),
    ``thalamus_z`` (thalamic volume adjusted for age and head size, in control SDs),
    ``icv_true_mm3``, ``template``, ``has_gt``, ``edss_true``/``sdmt_true`` (before missingness),
    ``worsened`` (confirmed EDSS worsening since the previous visit), ``repeat_of`` (the
    visit a scan-rescan repeat repeats, ``""`` for visits; see ``params["repeats"]``).
    """
    if n_subjects < 1 or n_timepoints < 1 or n_sites < 1:
        raise ConfigError(
            f"synth: n_subjects={n_subjects}, n_timepoints={n_timepoints}, n_sites={n_sites}; "
            "each must be at least 1"
        )
    p = merge_params(params)
    if n_templates is None:
        n_templates = max(1, len(list_templates()))
    ss = seed if isinstance(seed, np.random.SeedSequence) else np.random.SeedSequence(int(seed))
    rng = np.random.default_rng(ss.spawn(1)[0])
    n = n_subjects
    g, an, at, cl = p["groups"], p["anatomy"], p["atrophy"], p["clinical"]

    # group: exact shares (rounded), shuffled
    props = np.array([g["proportions"][k] for k in GROUPS], dtype=float)
    props /= props.sum()
    counts = np.floor(props * n).astype(int)
    for i in np.argsort(-(props * n - counts))[: n - counts.sum()]:
        counts[i] += 1
    group = rng.permutation(np.repeat(np.array(GROUPS), counts))
    patient = group != "HC"
    age0 = np.array([g["age_mean"][x] for x in group]) + rng.normal(0, g["age_sd"], n)
    age0 = np.clip(age0, 18, 75)
    female = rng.random(n) < np.array([g["female_share"][x] for x in group])
    sex = np.where(female, "F", "M")
    site_idx = rng.permutation(np.arange(n) % n_sites)
    template = rng.integers(0, n_templates, n)
    icv = np.array([an["icv_mean_mm3"][s] for s in sex]) + rng.normal(0, an["icv_sd_mm3"], n)
    icv = np.clip(icv, 1.0e6, 2.0e6)
    severity = np.where(patient, rng.standard_normal(n), np.nan)
    sev0 = np.nan_to_num(severity)

    # baseline thalamic volume: ICV x ratio x group, severity, age effects x natural variation
    natural = rng.normal(0, an["thalamus_natural_sd_log"], n)
    log_thal0 = (
        np.log(an["thalamus_icv_ratio"])
        + np.array([g["thalamus_effect_log"][x] for x in group])
        + an["thalamus_severity_effect_log"] * sev0
        + an["thalamus_age_effect_log_per_year"] * (age0 - 40.0)
        + natural
    )
    thal0 = icv * np.exp(log_thal0)
    left_share = 0.5 + rng.normal(0, an["asymmetry_sd"], n)

    # annualised atrophy: controls slow, patients faster with severity
    ssd = at["severity_log_sd"]
    rate = np.where(
        patient,
        at["patient_rate"] * np.exp(ssd * sev0 - ssd**2 / 2),
        at["control_rate"],
    ) + rng.normal(0, at["rate_noise_sd"], n)
    pat_rate_sd = abs(at["patient_rate"]) * np.sqrt(np.exp(ssd**2) - 1) + at["rate_noise_sd"]

    # follow-up intervals
    years = np.zeros((n, n_timepoints))
    for k in range(1, n_timepoints):
        years[:, k] = years[:, k - 1] + np.clip(
            1.0 + rng.normal(0, at["followup_years_sd"], n), 0.7, 1.4
        )
    duration0 = np.where(
        patient,
        0.5 + rng.gamma(2.0, cl["disease_duration_mean"] / 2.0, n) + 1.5 * np.clip(sev0, 0, None),
        np.nan,
    )

    # clinical outcomes
    edss_subject = rng.normal(0, cl["edss_subject_sd"], n)
    sdmt_subject = rng.normal(0, cl["sdmt_subject_sd"], n)
    has_gt = np.zeros(n, dtype=bool)
    pidx = np.flatnonzero(patient)
    n_gt = int(round(p["ground_truth"]["fraction_of_patients"] * pidx.size))
    has_gt[rng.permutation(pidx)[:n_gt]] = True
    if p["ground_truth"].get("include_controls"):
        has_gt[~patient] = True
    gt_tps = p["ground_truth"]["timepoints"]

    rows = []
    tps = timepoint_names(n_timepoints)
    width = max(3, len(str(n)))  # zero-padded ids sort like their numbers
    edss_prev = None
    u_worse = rng.random((n, n_timepoints))
    u_step = rng.random((n, n_timepoints))
    visit_e = rng.normal(0, cl["edss_visit_sd"], (n, n_timepoints))
    visit_s = rng.normal(0, cl["sdmt_visit_sd"], (n, n_timepoints))
    miss = rng.random((n, n_timepoints, 2)) < cl["missing_rate"]
    sd_nat = an["thalamus_natural_sd_log"]
    for k, tp in enumerate(tps):
        yrs = years[:, k]
        age = age0 + yrs
        thal = thal0 * (1.0 + rate) ** yrs
        # thalamic volume adjusted for age and head size, in units of the control SD
        z = (
            np.log(thal / icv)
            - np.log(an["thalamus_icv_ratio"])
            - an["thalamus_age_effect_log_per_year"] * (age - 40.0)
        ) / sd_nat
        cont = (
            np.array([cl["edss_intercept"].get(x, 0.0) for x in group])
            + cl["edss_per_thalamus_sd"] * z
            + cl["edss_severity"] * sev0
            + edss_subject
            + visit_e[:, k]
        )
        if k == 0:
            edss = np.where(patient, _edss_round(cont), 0.0)
            worsened = np.zeros(n, dtype=bool)
        else:
            rate_z = (rate - at["patient_rate"]) / pat_rate_sd
            logit = cl["worsening_logit_intercept"] + cl["worsening_logit_per_rate_sd"] * rate_z
            worsened = patient & (u_worse[:, k] < 1 / (1 + np.exp(-logit)))
            step = _worsening_step(edss_prev)
            up = edss_prev + step + np.where(u_step[:, k] < 0.3, 0.5, 0.0)
            # without worsening: stay, or move by 0.5 without reaching the worsening step
            drift = np.where(u_step[:, k] < 0.2, -0.5, np.where(u_step[:, k] > 0.8, 0.5, 0.0))
            stay = edss_prev + np.where(drift >= step, 0.0, drift)
            stay = np.where((edss_prev == 0) & (drift != 0), 0.0, stay)
            stay = np.where((edss_prev == 1.0) & (drift < 0), 1.0, stay)
            edss = np.where(patient, np.where(worsened, np.minimum(up, 9.5), stay), 0.0)
        sdmt = (
            cl["sdmt_intercept"]
            + cl["sdmt_age_per_year"] * (age - 40.0)
            + cl["sdmt_per_thalamus_sd"] * z
            + np.where(patient, cl["sdmt_patient_offset"], 0.0)
            + cl["sdmt_practice_per_year"] * yrs
            + sdmt_subject
            + visit_s[:, k]
        )
        sdmt = np.clip(np.round(sdmt), 0, 110)
        edss_prev = edss
        for i in range(n):
            left = thal[i] * left_share[i]
            rows.append(
                {
                    "subject": f"sub-{i + 1:0{width}d}",
                    "timepoint": tp,
                    "site": f"site-{site_idx[i] + 1}",
                    "group": group[i],
                    "age": round(float(age[i]), 2),
                    "sex": sex[i],
                    "disease_duration": round(float(duration0[i] + yrs[i]), 2)
                    if patient[i]
                    else np.nan,
                    "edss": np.nan if miss[i, k, 0] else float(edss[i]),
                    "sdmt": np.nan if miss[i, k, 1] else float(sdmt[i]),
                    "years_since_baseline": round(float(yrs[i]), 3),
                    "icv_mm3": round(float(icv[i]), 1),
                    "severity": float(severity[i]),
                    "atrophy_rate": float(rate[i]),
                    "thalamus_left_mm3": float(left),
                    "thalamus_right_mm3": float(thal[i] - left),
                    "thalamus_total_mm3": float(thal[i]),
                    "thalamus_z": float(z[i]),
                    "icv_true_mm3": float(icv[i]),
                    "template": int(template[i]),
                    "site_index": int(site_idx[i]),
                    "subject_index": i,
                    "timepoint_index": k,
                    "has_gt": bool(has_gt[i] and (gt_tps == "all" or tp in gt_tps)),
                    "edss_true": float(edss[i]),
                    "sdmt_true": float(sdmt[i]),
                    "worsened": bool(worsened[i]),
                    "repeat_of": "",
                }
            )
    rows += _repeat_rows(rows, p["repeats"], n, n_sites, ss)
    df = pd.DataFrame(rows)
    df = df.sort_values(["subject_index", "timepoint_index"], kind="stable").reset_index(drop=True)
    return df


def _repeat_rows(rows: list[dict], rep: dict, n: int, n_sites: int, ss) -> list[dict]:
    """Scan-rescan repeats of a share of subjects at the listed visits: the visit's row
    (same volumes, clinical values and years) as timepoint ``<visit>-rescan``, on another
    site's scanner for ``other_site_fraction`` of them. Drawn from their own random stream,
    so a cohort without repeats is unchanged."""
    frac = float(rep.get("fraction", 0.0) or 0.0)
    if frac <= 0:
        return []
    rng = np.random.default_rng(np.random.SeedSequence(ss.entropy, spawn_key=(7,)))
    chosen = np.zeros(n, bool)
    chosen[rng.permutation(n)[: int(round(frac * n))]] = True
    other = rng.random(n) < float(rep.get("other_site_fraction", 0.0) or 0.0)
    visits = set(rep.get("timepoints") or ["baseline"])
    out = []
    for r in rows:
        i = r["subject_index"]
        if not chosen[i] or r["timepoint"] not in visits:
            continue
        site_index = (r["site_index"] + 1) % n_sites if other[i] and n_sites > 1 else r["site_index"]
        out.append(r | {
            "timepoint": r["timepoint"] + RESCAN_SUFFIX,
            "timepoint_index": REPEAT_INDEX + r["timepoint_index"],
            "repeat_of": r["timepoint"],
            "site_index": int(site_index),
            "site": f"site-{site_index + 1}",
            "has_gt": bool(r["has_gt"] and rep.get("gt", False)),
            "worsened": False,
        })
    return out
