"""thaldask: benchmark and scale thalamus segmentation for MS cohorts on Dask."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from thaldask import config as _config  # noqa: F401  (registers dask.config defaults)
from thaldask.errors import ThaldaskError

try:
    __version__ = version("thaldask")
except PackageNotFoundError:  # pragma: no cover
    __version__ = "0+unknown"

__all__ = ["ThaldaskError", "__version__"]
