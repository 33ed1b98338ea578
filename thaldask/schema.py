"""Contracts that cross stages, defined once: the results dataset, the manifest, the stats
tables.

Every stage that reads or writes one of these imports its names from here, so a dimension,
a variable or a table cannot be spelled two ways. This module imports no third-party
package at module level (``import thaldask.schema`` is instant); :func:`check_results`
takes an ``xarray.Dataset`` but needs no xarray import to check it.
"""

from __future__ import annotations

__all__ = [
    "SCAN_DIM",
    "RESULT_DIMS",
    "SIDES",
    "SIDE_LABELS",
    "RAW_FIELDS",
    "METRIC_FIELDS",
    "RESULT_VARIABLES",
    "REQUIRED_RESULT_VARIABLES",
    "MANIFEST_COLUMNS",
    "REQUIRED_MANIFEST_COLUMNS",
    "MANIFEST_KINDS",
    "GT_METHOD",
    "STATS_TABLES",
    "TABLE_KEYS",
    "check_results",
    "results_dims_of",
    "REPEAT_COLUMN",
    "RESCAN_SUFFIX",
]

#: the store's per-scan dimension
SCAN_DIM = "scan"

#: dims of the results dataset, in this order (``side`` is always present)
RESULT_DIMS = ("subject", "timepoint", "method", "contrast", "side")

#: ``side`` coordinate values, in this order everywhere
SIDES = ("left", "right", "total")

#: mask label of each hemisphere's thalamus in every mask thaldask writes (0 = background)
SIDE_LABELS = {"left": 1, "right": 2}

#: per-side raw fields of one scored pair (voxel counts; surface distances in mm)
RAW_FIELDS = ("tp", "fp", "fn", "pred_voxels", "gt_voxels", "hd95_mm", "assd_mm")

#: per-side metrics derived from :data:`RAW_FIELDS`
METRIC_FIELDS = (
    "tp",
    "fp",
    "fn",
    "volume_mm3",
    "gt_volume_mm3",
    "dice",
    "jaccard",
    "sensitivity",
    "precision",
    "volume_diff_mm3",
    "volume_diff_pct",
    "hd95_mm",
    "assd_mm",
    "pred_empty",
    "gt_empty",
)

#: every data variable of the results dataset with its unit / meaning
RESULT_VARIABLES = {
    "volume_mm3": "thalamus volume of the method's mask, mm³",
    "gt_volume_mm3": "thalamus volume of the ground-truth mask of the same scan, mm³",
    "dice": "Dice similarity coefficient against ground truth",
    "jaccard": "Jaccard index against ground truth",
    "sensitivity": "true-positive rate against ground truth",
    "precision": "positive predictive value against ground truth",
    "volume_diff_mm3": "volume minus ground-truth volume, mm³",
    "volume_diff_pct": "volume difference as % of ground-truth volume",
    "hd95_mm": "95th-percentile symmetric Hausdorff distance, mm",
    "assd_mm": "average symmetric surface distance, mm",
    "tp": "true-positive voxels",
    "fp": "false-positive voxels",
    "fn": "false-negative voxels",
    "pred_empty": "the method's mask is empty on this side",
    "gt_empty": "the ground-truth mask is empty on this side",
}

#: variables every results dataset holds (the rest are present where ground truth exists)
REQUIRED_RESULT_VARIABLES = ("volume_mm3",)

#: manifest columns, in order (extra columns are kept after them)
MANIFEST_COLUMNS = ("subject", "timepoint", "site", "kind", "contrast", "method", "labels", "path")
REQUIRED_MANIFEST_COLUMNS = ("subject", "timepoint", "kind", "contrast", "path")
MANIFEST_KINDS = ("image", "mask")

#: the ``method`` of manual ground-truth masks
GT_METHOD = "gt"

#: the statistical stage's tables, in page order; file name = name + ".csv"
STATS_TABLES = ("agreement", "method_comparison", "clinical_cross", "longitudinal", "harmonisation",
                "reliability", "atrophy_recovery", "trial_design", "qc_flags")

#: the columns that identify a row of each stats table (its dims as an xarray Dataset)
TABLE_KEYS = {
    "agreement": ("method", "contrast", "side"),
    "method_comparison": ("metric", "side", "test", "method_a", "contrast_a", "method_b", "contrast_b"),
    "clinical_cross": ("outcome", "method", "contrast", "side"),
    "longitudinal": ("analysis", "method", "contrast", "side", "term"),
    "harmonisation": ("method", "contrast", "side", "site"),
    "reliability": ("method", "contrast", "side"),
    "atrophy_recovery": ("method", "contrast", "side", "reference"),
    "trial_design": ("method", "contrast", "side", "effect", "years", "power"),
    "qc_flags": ("subject", "timepoint", "method", "contrast", "flag"),
}


def results_dims_of(ds) -> tuple[str, ...]:
    """The results dims that ``ds`` has, in :data:`RESULT_DIMS` order.

    >>> class D: dims = {"side": 3, "subject": 2, "method": 1}
    >>> results_dims_of(D())
    ('subject', 'method', 'side')
    """
    return tuple(d for d in RESULT_DIMS if d in ds.dims)


def check_results(ds) -> None:
    """Raise ``ValueError`` naming what is wrong if ``ds`` is not a results dataset.

    A results dataset has exactly the dims :data:`RESULT_DIMS` (``side`` holding
    :data:`SIDES`), at least :data:`REQUIRED_RESULT_VARIABLES`, and every data variable that
    carries ``side`` has all five dims. Extra variables (clinical covariates on
    (subject, timepoint)) are allowed.
    """
    missing = [d for d in RESULT_DIMS if d not in ds.dims]
    if missing:
        raise ValueError(f"results dataset lacks dims {missing}; has {list(ds.dims)}")
    sides = [str(s) for s in ds["side"].values]
    if sides != list(SIDES):
        raise ValueError(f"results dataset side must be {list(SIDES)}; got {sides}")
    absent = [v for v in REQUIRED_RESULT_VARIABLES if v not in ds.data_vars]
    if absent:
        raise ValueError(f"results dataset lacks variables {absent}")
    for name, var in ds.data_vars.items():
        if "side" in var.dims and set(var.dims) != set(RESULT_DIMS):
            raise ValueError(f"results variable {name!r} has dims {var.dims}; expected {RESULT_DIMS}")


# --------------------------------------------------------------------------------------------
# Scan-rescan repeats
#: clinical-table column that declares a scan a same-day repeat of a visit: the visit's
#: timepoint (e.g. ``baseline``), empty for visits. A cohort without the column may name a
#: repeat ``<visit>`` + :data:`RESCAN_SUFFIX` instead (``baseline-rescan``).
REPEAT_COLUMN = "repeat_of"
RESCAN_SUFFIX = "-rescan"
