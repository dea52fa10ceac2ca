"""Matching role: task queue partitions, sync match, persisted backlog, long polls."""

from tideflow_server.matching._config import MatchingConfig
from tideflow_server.matching._history import HistoryClient
from tideflow_server.matching.engine import MatchingEngine, task_queue_key
from tideflow_server.matching.handler import MatchingHandler
from tideflow_server.matching.partition import TaskQueuePartition

__all__ = [
    "HistoryClient",
    "MatchingConfig",
    "MatchingEngine",
    "MatchingHandler",
    "TaskQueuePartition",
    "task_queue_key",
]
