"""Every planted parameter of a synthetic cohort, with its default.

:func:`default_params` returns a plain nested dict (JSON-serialisable); pass a partial dict
with the same keys to :func:`thaldask.synth.make_cohort` / :func:`make_subject_table` to
change any value (it is merged recursively). The whole dict is written to ``truth.json``.

Units: volumes mm³, distances mm, rates as fractions per year (-0.007 = -0.7 %/year),
R1 in s⁻¹, times in s.
"""

from __future__ import annotations

import copy

__all__ = ["default_params", "merge_params", "SITE_PRESETS", "METHOD_NAMES", "TISSUE"]

METHOD_NAMES = ("freesurfer-sim", "first-sim", "dbsegment-sim", "mindglide-sim")

#: tissue properties per FreeSurfer id: (R1 range in 1/s, PD, T2 ms). R1 ranges at 3 T.
TISSUE: dict[str, dict] = {
    "white_matter": {"ids": [2, 41, 7, 46], "r1": [1.0, 1.2], "pd": 0.69, "t2": 70.0},
    "cortex": {"ids": [3, 42, 17, 18, 53, 54], "r1": [0.6, 0.75], "pd": 0.82, "t2": 95.0},
    "cerebellum_cortex": {"ids": [8, 47], "r1": [0.65, 0.75], "pd": 0.82, "t2": 90.0},
    "thalamus": {"ids": [10, 49], "r1": [0.8, 0.95], "pd": 0.745, "t2": 80.0},
    "caudate_putamen": {"ids": [11, 50, 12, 51, 26, 58], "r1": [0.7, 0.75], "pd": 0.80, "t2": 85.0},
    "pallidum": {"ids": [13, 52], "r1": [0.9, 1.0], "pd": 0.74, "t2": 65.0},
    "brainstem": {"ids": [16, 28, 60], "r1": [0.9, 1.05], "pd": 0.72, "t2": 75.0},
    "csf": {"ids": [4, 5, 14, 15, 24, 43, 44], "r1": [0.24, 0.26], "pd": 1.0, "t2": 2000.0},
    "other": {"ids": [90], "r1": [0.5, 1.0], "pd": 0.6, "t2": 60.0},
}

#: acquisition sites cycled through; later sites get random variations of these
SITE_PRESETS = [
    {
        "voxel_mm": [1.0, 1.0, 1.0],
        "scale": 1.0,
        "bias": 0.15,
        "noise": 0.025,
        "r1_noise": 0.045,
        "r1_scale": 1.0,
        "volume_shift_mm": 0.0,
    },
    {
        "voxel_mm": [0.8, 0.8, 0.8],
        "scale": 1.35,
        "bias": 0.25,
        "noise": 0.035,
        "r1_noise": 0.055,
        "r1_scale": 1.01,
        "volume_shift_mm": 0.12,
    },
    {
        "voxel_mm": [1.0, 1.0, 1.2],
        "scale": 0.8,
        "bias": 0.2,
        "noise": 0.03,
        "r1_noise": 0.05,
        "r1_scale": 0.99,
        "volume_shift_mm": -0.1,
    },
    {
        "voxel_mm": [0.9, 0.9, 0.9],
        "scale": 1.15,
        "bias": 0.3,
        "noise": 0.028,
        "r1_noise": 0.05,
        "r1_scale": 1.0,
        "volume_shift_mm": 0.06,
    },
]

_DEFAULTS: dict = {
    "groups": {
        # share of subjects, and log-change of thalamic volume relative to controls
        "proportions": {"MS": 0.6, "NMOSD": 0.1, "MOGAD": 0.1, "HC": 0.2},
        "thalamus_effect_log": {"MS": -0.09, "NMOSD": -0.06, "MOGAD": -0.05, "HC": 0.0},
        "age_mean": {"MS": 42.0, "NMOSD": 47.0, "MOGAD": 38.0, "HC": 39.0},
        "age_sd": 11.0,
        "female_share": {"MS": 0.7, "NMOSD": 0.85, "MOGAD": 0.55, "HC": 0.6},
    },
    "anatomy": {
        # intracranial volume by sex (mm^3)
        "icv_mean_mm3": {"F": 1.38e6, "M": 1.55e6},
        "icv_sd_mm3": 1.1e5,
        # thalamic volume (both sides) / ICV of a 40-year-old control
        "thalamus_icv_ratio": 0.0086,
        "thalamus_natural_sd_log": 0.06,
        "thalamus_age_effect_log_per_year": -0.003,
        "thalamus_severity_effect_log": -0.03,
        "asymmetry_sd": 0.015,
        "deformation_sd_mm": 1.5,
        "deformation_smoothness_mm": 24.0,
        "shape_jitter": 0.03,
        "pose_rotation_deg": 2.0,
        "pose_translation_mm": 2.0,
    },
    "atrophy": {
        # annualised thalamic volume change (fraction per year)
        "control_rate": -0.003,
        "patient_rate": -0.007,
        "severity_log_sd": 0.35,  # patient rate = patient_rate * exp(sd*severity - sd^2/2)
        "rate_noise_sd": 0.0015,
        "followup_years_sd": 0.08,
    },
    "clinical": {
        "edss_intercept": {"MS": 2.5, "NMOSD": 3.0, "MOGAD": 2.0},
        "edss_per_thalamus_sd": -0.8,  # EDSS points per +1 SD of adjusted thalamic volume
        "edss_severity": 0.6,
        "edss_subject_sd": 0.9,
        "edss_visit_sd": 0.3,
        "worsening_logit_intercept": -1.6,
        "worsening_logit_per_rate_sd": -1.0,  # per SD of annual rate (more negative -> worse)
        "sdmt_intercept": 55.0,
        "sdmt_age_per_year": -0.3,
        "sdmt_per_thalamus_sd": 4.0,
        "sdmt_patient_offset": -4.0,
        "sdmt_subject_sd": 6.0,
        "sdmt_visit_sd": 3.0,
        "sdmt_practice_per_year": 1.0,
        "disease_duration_mean": 8.0,
        "missing_rate": 0.05,  # edss and sdmt, each, missing completely at random
    },
    # scan-rescan repeats: the same anatomy on the same day with new noise, bias field, head
    # position and method errors (on another site's scanner for a share of them). A repeat of
    # visit V is timepoint "V-rescan" with clinical column repeat_of = V (same clinical values
    # and years_since_baseline as V); it never has ground truth unless "gt" is true
    "repeats": {
        "fraction": 0.0,  # share of subjects rescanned at each listed visit
        "timepoints": ["baseline"],
        "other_site_fraction": 0.0,  # share of rescans acquired with another site's settings
        "gt": False,
    },
    # manual ground truth: a share of patients (controls too if asked) at the listed
    # timepoints ("all" for every visit)
    "ground_truth": {
        "fraction_of_patients": 0.5,
        "include_controls": False,
        "timepoints": ["baseline"],
    },
    "contrasts": {
        # signal equations; see thaldask.synth.images
        "t1w": {"ti_s": 1.1, "tr_s": 2.3, "pv_fwhm_vox": 1.0, "reference": 1000.0},
        "flair": {
            "tr_s": 9.0,
            "te_ms": 100.0,
            "csf_r1": 0.25,
            "pv_fwhm_vox": 1.4,
            "reference": 600.0,
        },
        # voxel_mm: None writes R1 on the T1w grid; e.g. [1.5, 1.5, 1.5] acquires it on its
        # own coarser grid (the ingest then resamples it, and mindglide-sim's R1 mask)
        "r1": {"pv_fwhm_mm": 2.0, "bias": 0.02, "voxel_mm": None},
        "tissue_jitter": 0.25,  # subject R1 drawn in the central share of each range
    },
    "methods": {
        # boundary error model: a voxel is labelled thalamus when
        #   sdt + roughness_mm * noise(scale_mm) < offset_mm + wm_offset_mm * WM_nearby
        #                                           + prop_bias_mm * (V / V_ref - 1) + jitter
        # where sdt is the signed distance to the true boundary (mm, negative inside)
        # optional per method, planted failures (truth.json lists them per scan under
        # planted_failures): "failure_rate" (share of scans where one side is missed),
        # "swap_rate" (left and right labels swapped), "misregistration_rate" (the whole mask
        # shifted by "misregistration_mm", default 6 mm, along a random axis)
        "reference_volume_mm3": 5800.0,
        "freesurfer-sim": {
            "contrasts": ["T1w"],
            "offset_mm": 0.4,
            "wm_offset_mm": 0.6,
            "roughness_mm": 1.1,
            "scale_mm": 2.5,
            "prop_bias_mm": 1.2,
            "jitter_mm": 0.08,
            "labels": "freesurfer",
        },
        "first-sim": {
            "contrasts": ["T1w"],
            "offset_mm": 0.45,
            "wm_offset_mm": 0.5,
            "roughness_mm": 1.2,
            "scale_mm": 3.0,
            "prop_bias_mm": 0.0,
            "jitter_mm": 0.1,
            "labels": "first",
        },
        "dbsegment-sim": {
            "contrasts": ["T1w"],
            "offset_mm": -0.2,
            "wm_offset_mm": 0.0,
            "roughness_mm": 0.7,
            "scale_mm": 2.0,
            "prop_bias_mm": -1.0,
            "jitter_mm": 0.05,
            "labels": "dbsegment",
        },
        "mindglide-sim": {
            "contrasts": ["T1w", "FLAIR", "R1"],
            "offset_mm": -0.14,
            "wm_offset_mm": 0.0,
            "roughness_mm": 1.0,
            "scale_mm": 2.0,
            "prop_bias_mm": 0.0,
            "jitter_mm": 0.06,
            "labels": "mindglide:L:5;R:6",
            # per contrast changes to the values above (FLAIR rougher, R1 slightly sharper)
            "by_contrast": {
                "FLAIR": {"roughness_mm": 1.2, "offset_mm": -0.19},
                "R1": {"roughness_mm": 0.9, "offset_mm": -0.12},
            },
        },
    },
}


def default_params() -> dict:
    """A fresh copy of the default planted parameters."""
    return copy.deepcopy(_DEFAULTS)


def merge_params(params: dict | None) -> dict:
    """Defaults updated recursively by ``params``."""
    out = default_params()

    def rec(dst, src):
        for k, v in src.items():
            if isinstance(v, dict) and isinstance(dst.get(k), dict):
                rec(dst[k], v)
            else:
                dst[k] = copy.deepcopy(v)

    if params:
        rec(out, params)
    return out
