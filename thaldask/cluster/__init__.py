"""Where the Dask work runs: a local cluster by default, or an existing scheduler."""

from thaldask.cluster.client import get_client

__all__ = ["get_client"]
