"""thaldask: benchmark and scale thalamus segmentation for MS cohorts on Dask.

Importing ``thaldask`` is light (no dask, torch or zarr): stages are subpackages
(``thaldask.store``, ``thaldask.segment``, ``thaldask.metrics``, ``thaldask.stats``, ...)
imported when used.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from thaldask.errors import ThaldaskError

try:
    __version__ = version("thaldask")
except PackageNotFoundError:  # pragma: no cover
    __version__ = "0+unknown"

__all__ = ["ThaldaskError", "__version__"]
