"""A task queue's config across its partitions: the root partition persists each change and
tells the owners of the other partitions (best effort; each also reads it back every
`config_refresh`). `tideflow_server.rpc.clients.MatchingClient` is the peer that carries it."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Protocol

import structlog

from tideflow_server.internal.v1 import matching_service_pb2
from tideflow_server.matching.partition import TaskQueuePartition
from tideflow_server.persistence.records import TaskQueueKey

log = structlog.get_logger(__name__)


class MatchingPeers(Protocol):
    async def apply_task_queue_config(
        self, request: matching_service_pb2.ApplyTaskQueueConfigRequest
    ) -> None:
        """Deliver `request` to the owner of its partition; raises a ServiceError if not."""
        ...


async def push(
    root: TaskQueuePartition,
    request: matching_service_pb2.UpdateTaskQueueConfigRequest,
    *,
    partitions: int,
    loaded: Callable[[TaskQueueKey], TaskQueuePartition | None],
    peers: MatchingPeers | None,
) -> None:
    """Tell partitions 1..`partitions`-1 of the root's queue that its config changed: those this
    host holds directly, the others through their owners. Failures are logged, not raised."""
    key = root.key

    async def one(partition: int) -> None:
        local = loaded(TaskQueueKey(key.namespace_id, key.name, key.kind, partition))
        if local is not None:
            local.apply_config(root.queue_config, root.config_version)
            return
        if peers is None:
            return
        try:
            await peers.apply_task_queue_config(
                matching_service_pb2.ApplyTaskQueueConfigRequest(
                    namespace_id=request.namespace_id,
                    task_queue=request.task_queue,
                    partition=partition,
                    config=root.queue_config,
                    config_version=root.config_version,
                )
            )
        except Exception as e:  # best effort: the partition reads the config back soon
            log.warning(
                "task queue config not pushed",
                key=key,
                partition=partition,
                version=root.config_version,
                error=repr(e),
            )

    await asyncio.gather(*(one(p) for p in range(1, partitions)))
