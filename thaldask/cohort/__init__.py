"""Cohort manifest and clinical table: parse, validate, BIDS discovery."""

from thaldask.cohort.labels import (
    CONVENTIONS,
    LabelConvention,
    detect_convention,
    from_sides,
    parse_labels,
    split_binary_by_midline,
    to_sides,
)

__all__ = [
    "CONVENTIONS",
    "LabelConvention",
    "detect_convention",
    "from_sides",
    "parse_labels",
    "split_binary_by_midline",
    "to_sides",
]
