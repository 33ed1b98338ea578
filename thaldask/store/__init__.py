"""Cohort store: NIfTI/MGZ <-> Zarr v3, per-scan affines, lazy xarray views.

>>> from thaldask.store import ingest, open_store, export_masks   # doctest: +SKIP
>>> report = ingest("manifest.csv", "cohort.zarr", clinical="clinical.csv")  # doctest: +SKIP
>>> st = open_store("cohort.zarr")                                # doctest: +SKIP
>>> st.mask("gt", "T1w")            # (scan, x, y, z) uint8, lazy  # doctest: +SKIP
>>> export_masks(st, "gt", "T1w", "out/")                        # doctest: +SKIP

Every scan is stored on its own reference grid reoriented to RAS (axis permutes and flips
only) and zero-padded to the cohort's largest grid; the original affine, shape, orientation
and (scrubbed) header are kept so that :func:`export_masks` restores the original grid
bit for bit. See :mod:`thaldask.store.format` for the layout.

Modules: ``format`` (layout, version, every node name), ``codecs`` (codec policy),
``cohort_store`` (:class:`CohortStore`, derived per-scan arrays), ``scan_writes``
(idempotent per-scan writes), ``create`` (creating/growing a store; where thaldask may
write), ``nifti`` (decoding, RAS, grids, hashes), ``fastcopy`` (copy kernels),
``ingest_plan`` and ``ingest``, ``export``, ``backend`` (local paths and URLs).
"""

from thaldask.store.cohort_store import CohortStore, open_store
from thaldask.store.export import export_masks
from thaldask.store.ingest import ingest

__all__ = ["CohortStore", "export_masks", "ingest", "open_store"]
