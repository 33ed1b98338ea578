"""Cohort manifest and clinical table: parse, validate, BIDS discovery."""

from thaldask.cohort._csv import read_table
from thaldask.cohort.bids import manifest_from_bids, write_manifest
from thaldask.cohort.clinical import read_clinical, validate_clinical
from thaldask.cohort.labels import (
    CONVENTIONS,
    LabelConvention,
    check_sides,
    detect_convention,
    from_sides,
    label_values,
    parse_labels,
    split_binary_by_midline,
    to_sides,
)
from thaldask.cohort.manifest import FileCheck, check_file, read_manifest, scan_table, validate

__all__ = [
    "CONVENTIONS",
    "FileCheck",
    "LabelConvention",
    "check_file",
    "check_sides",
    "detect_convention",
    "from_sides",
    "label_values",
    "manifest_from_bids",
    "parse_labels",
    "read_clinical",
    "read_manifest",
    "read_table",
    "scan_table",
    "validate",
    "validate_clinical",
    "split_binary_by_midline",
    "to_sides",
    "write_manifest",
]
