"""Where the Dask work runs: a local cluster (default), an existing scheduler (tcp:// or
tls://), Kubernetes through the dask-kubernetes operator, or SLURM through dask-jobqueue.

``get_client(scheduler=None, *, ..., cluster_config=None)`` yields a ``distributed.Client``;
``describe_cluster(cluster_config)`` says what it would start without starting anything
(``thaldask cluster check``).
"""

from thaldask.cluster.client import describe_cluster, get_client
from thaldask.cluster.spec import ClusterSpec, load_cluster_spec

__all__ = ["ClusterSpec", "describe_cluster", "get_client", "load_cluster_spec"]
