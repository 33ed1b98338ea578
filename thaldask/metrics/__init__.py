"""Metrics stage: overlap, volume and surface metrics of masks against ground truth.

Kernels work on one numpy mask pair (:mod:`thaldask.metrics.kernels`); the Dask layer maps
them over (scan, x, y, z) arrays lazily (:mod:`thaldask.metrics.core`); :func:`evaluate`
turns a cohort store into the results dataset.
"""

from thaldask.metrics.core import compute_metrics, compute_raw
from thaldask.metrics.evaluate import evaluate, results_to_frame
from thaldask.metrics.kernels import (
    METRIC_FIELDS,
    RAW_FIELDS,
    SIDES,
    compute_pair_metrics,
    confusion_matrix,
    derive_metrics,
    pair_raw,
)

__all__ = [
    "METRIC_FIELDS",
    "RAW_FIELDS",
    "SIDES",
    "compute_metrics",
    "compute_pair_metrics",
    "compute_raw",
    "confusion_matrix",
    "derive_metrics",
    "evaluate",
    "pair_raw",
    "results_to_frame",
]
