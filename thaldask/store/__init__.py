"""Cohort store: NIfTI/MGZ <-> Zarr v3, per-scan affines, lazy xarray views."""

from thaldask.store.core import CohortStore, open_store
from thaldask.store.export import export_masks
from thaldask.store.ingest import ingest

__all__ = ["CohortStore", "export_masks", "ingest", "open_store"]
