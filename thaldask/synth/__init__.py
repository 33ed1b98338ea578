"""Synthetic cohorts with real anatomy and planted truths (``thaldask synth``).

- :func:`make_cohort` writes NIfTI/MGZ images and masks, ``manifest.csv``, ``clinical.csv``
  and ``truth.json`` (every planted parameter and the true volume of every scan);
- :func:`make_subject_table` draws the subject-level truth and clinical table without images
  (fast: for statistical tests that need many cohorts);
- :func:`default_params` lists every planted parameter with its default.
"""

from thaldask.synth.cohort import SHAPES, SynthCohort, make_cohort
from thaldask.synth.params import METHOD_NAMES, default_params
from thaldask.synth.subjects import CLINICAL_COLUMNS, make_subject_table, timepoint_names

__all__ = [
    "CLINICAL_COLUMNS",
    "METHOD_NAMES",
    "SHAPES",
    "SynthCohort",
    "default_params",
    "make_cohort",
    "make_subject_table",
    "timepoint_names",
]
