"""Persistence: store interfaces, their closed error set, backends and the manager above them."""

from tideflow_server.persistence.errors import (
    AlreadyExists,
    ConditionFailed,
    CurrentRunConditionFailed,
    FlowChanged,
    InvalidPageToken,
    NotFound,
    PersistenceError,
    ShardOwnershipLost,
    SizeLimitExceeded,
    Unavailable,
)
from tideflow_server.persistence.interfaces import (
    ClusterStore,
    ExecutionStore,
    HistoryStore,
    MetadataStore,
    Persistence,
    ShardStore,
    TaskStore,
    VisibilityStore,
)

__all__ = [
    "AlreadyExists",
    "ClusterStore",
    "ConditionFailed",
    "CurrentRunConditionFailed",
    "ExecutionStore",
    "FlowChanged",
    "HistoryStore",
    "InvalidPageToken",
    "MetadataStore",
    "NotFound",
    "Persistence",
    "PersistenceError",
    "ShardOwnershipLost",
    "ShardStore",
    "SizeLimitExceeded",
    "TaskStore",
    "Unavailable",
    "VisibilityStore",
]
