"""Cohort store: NIfTI/MGZ <-> Zarr v3, per-scan affines, lazy xarray views.

>>> from thaldask.store import ingest, open_store, export_masks   # doctest: +SKIP
>>> report = ingest("manifest.csv", "cohort.zarr", clinical="clinical.csv")  # doctest: +SKIP
>>> st = open_store("cohort.zarr")                                # doctest: +SKIP
>>> st.mask("gt", "T1w")            # (scan, x, y, z) uint8, lazy  # doctest: +SKIP
>>> export_masks(st, "gt", "T1w", "out/")                        # doctest: +SKIP

Every scan is stored on its own reference grid reoriented to RAS (axis permutes and flips
only) and zero-padded to the cohort's largest grid; the original affine, shape, orientation
and (scrubbed) header are kept so that :func:`export_masks` restores the original grid
bit for bit. See :mod:`thaldask.store.core` for the layout.
"""

from thaldask.store.core import CohortStore, open_store
from thaldask.store.export import export_masks
from thaldask.store.ingest import ingest

__all__ = ["CohortStore", "export_masks", "ingest", "open_store"]
