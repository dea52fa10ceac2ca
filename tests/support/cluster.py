"""The local multi-process cluster lives in deploy/local/; re-exported for the tests."""

from deploy.local.cluster import SERVER, Cluster, ServerProcess

__all__ = ["SERVER", "Cluster", "ServerProcess"]
