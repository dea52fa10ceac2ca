"""Local multi-process Tideflow clusters: `Cluster` (server processes over a given database),
`PostgresServer` (a throwaway PostgreSQL), `Deployment` (databases and cluster together).

    python -m deploy.local up --topology split --backend postgres
"""

from deploy.local.cluster import SERVER, TEST_SETTINGS, Cluster, ServerProcess
from deploy.local.deployment import (
    BACKENDS,
    DEFAULT_BACKEND,
    TOPOLOGIES,
    Backend,
    Deployment,
    Topology,
)
from deploy.local.postgres import PostgresServer, PostgresUnavailable
from deploy.ports import free_port

__all__ = [
    "BACKENDS",
    "DEFAULT_BACKEND",
    "SERVER",
    "TEST_SETTINGS",
    "TOPOLOGIES",
    "Backend",
    "Cluster",
    "Deployment",
    "PostgresServer",
    "PostgresUnavailable",
    "ServerProcess",
    "Topology",
    "free_port",
]
