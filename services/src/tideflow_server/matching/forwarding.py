"""Forwarding between a task queue's partitions, so that a lone poller drains every partition.

Partition 0 is the root; the others are leaves. Adds and polls spread over all of them, and a
leaf sends to the root what it cannot match itself:
- a poll that finds no task at its leaf waits at the root instead, for the time it has left
  (a poll forwarded there carries `forwarded_from`, and the root answers it like its own);
- an add that finds no poll waiting at its leaf is offered to the root first, as a sync
  match only: the root hands it to a waiting poll (which starts it with RecordBlockStarted
  as usual) or says no at once, and never persists it; on no, the leaf keeps the task;
- a leaf with backlog and no poll of its own offers its buffered tasks to the root the same
  way, one at a time, backing off while the root has no poll; a task is acked at the leaf
  only once the root's answer says a poll took it.
The root never forwards. When this host owns the root the hop is a call in this process;
otherwise it goes through the matching client to the root's owner.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Protocol

import structlog

from tideflow.api.v1 import common_pb2, flow_service_pb2
from tideflow_server.internal.v1 import matching_service_pb2, records_pb2
from tideflow_server.matching._config import MatchingConfig
from tideflow_server.persistence.records import TaskQueueKey
from tideflow_server.rpc.errors import DeadlineExceeded, ServiceError

if TYPE_CHECKING:
    from tideflow_server.matching.partition import TaskQueuePartition

log = structlog.get_logger(__name__)

ROOT = 0


class RootClient(Protocol):
    """The calls that reach a root partition on another host
    (`tideflow_server.rpc.clients.MatchingClient` satisfies it)."""

    async def add_block_task(
        self, request: matching_service_pb2.AddBlockTaskRequest, *, retry_budget_s: float | None
    ) -> matching_service_pb2.AddBlockTaskResponse: ...

    async def poll_block_task(
        self, request: matching_service_pb2.PollBlockTaskRequest, *, timeout_s: float
    ) -> matching_service_pb2.PollBlockTaskResponse: ...


def is_leaf(key: TaskQueueKey) -> bool:
    return key.partition != ROOT


def root_of(key: TaskQueueKey) -> TaskQueueKey:
    return TaskQueueKey(key.namespace_id, key.name, key.kind, ROOT)


def leaf_name(key: TaskQueueKey) -> str:
    """What `forwarded_from` says: the queue and partition the request left."""
    return f"{key.name}/{key.partition}"


def forwards_poll(request: matching_service_pb2.PollBlockTaskRequest) -> bool:
    """A poll that came to a leaf from the frontend (a forwarded one stays where it is)."""
    return request.partition != ROOT and not request.forwarded_from


def forwarded_poll(
    request: matching_service_pb2.PollBlockTaskRequest, key: TaskQueueKey
) -> matching_service_pb2.PollBlockTaskRequest:
    """The poll as the root gets it. Its own poller id, since the leaf's poll stays registered
    at the leaf (and, when the root is on this host, in the same engine) while it waits."""
    forwarded = matching_service_pb2.PollBlockTaskRequest()
    forwarded.CopyFrom(request)
    forwarded.partition = ROOT
    forwarded.forwarded_from = leaf_name(key)
    forwarded.poller_id = f"{request.poller_id}>{key.partition}"
    return forwarded


def forwarded_add(
    key: TaskQueueKey,
    info: records_pb2.BacklogTask,
    *,
    preferred_identity: str,
    direct: flow_service_pb2.PollBlockTaskResponse | None,
) -> matching_service_pb2.AddBlockTaskRequest:
    """A leaf's task offered to the root. No schedule-to-start: the root never keeps it."""
    request = matching_service_pb2.AddBlockTaskRequest(
        namespace_id=info.namespace_id,
        task_queue=common_pb2.TaskQueue(
            name=key.name, kind=common_pb2.TaskQueueKind.ValueType(key.kind)
        ),
        partition=ROOT,
        block_id=info.block_id,
        scheduled_event_id=info.scheduled_event_id,
        attempt=info.attempt,
        priority=info.priority,
        forwarded_from=leaf_name(key),
        preferred_worker_identity=preferred_identity,
        direct_task=direct,
    )
    request.run.run_id = info.run_id
    request.run.execution_id = info.execution_id
    if info.HasField("dispatch"):
        request.dispatch.CopyFrom(info.dispatch)
    return request


class Forwarder:
    """How the leaves of one matching host reach their roots."""

    def __init__(
        self,
        *,
        config: MatchingConfig,
        partition: Callable[[TaskQueueKey], Awaitable[TaskQueuePartition]],
        poll_here: Callable[
            [matching_service_pb2.PollBlockTaskRequest, float],
            Awaitable[matching_service_pb2.PollBlockTaskResponse],
        ],
        client: RootClient | None = None,
        owns_root: Callable[[TaskQueueKey], bool] | None = None,
    ) -> None:
        """`partition` and `poll_here` are the engine's (a loaded partition; a poll served
        by this engine, with its deadline in loop time). Without a `client` every root is on
        this host; with one, `owns_root` says which are."""
        self._config = config
        self._partition = partition
        self._poll_here = poll_here
        self._client = client
        self._owns_root = owns_root

    def _root_here(self, key: TaskQueueKey) -> bool:
        return self._client is None or self._owns_root is None or self._owns_root(key)

    async def offer(
        self,
        key: TaskQueueKey,
        info: records_pb2.BacklogTask,
        *,
        preferred_identity: str = "",
        direct: flow_service_pb2.PollBlockTaskResponse | None = None,
    ) -> bool:
        """Offer a leaf's task to the root as a sync match: True when a poll there took it
        (started it, or found it stale). False on any failure: the leaf keeps the task."""
        try:
            if self._root_here(key):
                root = await self._partition(root_of(key))
                return await root.offer(info, preferred_identity=preferred_identity, direct=direct)
            assert self._client is not None
            request = forwarded_add(key, info, preferred_identity=preferred_identity, direct=direct)
            response = await self._client.add_block_task(
                request, retry_budget_s=self._config.forward_retry_budget
            )
            return response.sync_matched
        except ServiceError as e:
            log.info("task not forwarded to the root", key=key, error=e.message)
            return False
        except Exception as e:
            # Not an answer about the task: the leaf keeps it, as on any failure.
            log.warning("task not forwarded to the root", key=key, error=repr(e))
            return False

    async def poll(
        self, request: matching_service_pb2.PollBlockTaskRequest, key: TaskQueueKey, end: float
    ) -> matching_service_pb2.PollBlockTaskResponse | None:
        """Wait at the root until `end` (loop time) and answer what it gives; None when the
        root cannot be reached, so that the poll waits at its leaf instead."""
        forwarded = forwarded_poll(request, key)
        try:
            if self._root_here(key):
                return await self._poll_here(forwarded, end)
            assert self._client is not None
            timeout = end - asyncio.get_running_loop().time()
            if timeout <= 0:
                return matching_service_pb2.PollBlockTaskResponse()
            return await self._client.poll_block_task(forwarded, timeout_s=timeout)
        except DeadlineExceeded:
            return matching_service_pb2.PollBlockTaskResponse()
        except ServiceError as e:
            log.info("poll not forwarded to the root", key=key, error=e.message)
            return None

    async def push_backlog(self, partition: TaskQueuePartition) -> None:
        """A leaf's background loop, until it closes: offer each buffered task that no poll
        of the leaf waits for to the root, one at a time."""
        config = self._config
        backoff = config.forward_backoff
        while (task := await partition.next_unpolled()) is not None:
            matched = await self.offer(partition.key, task.info)
            partition.finish(task, consumed=matched)
            if matched:
                partition.spend_queue_token()
                backoff = config.forward_backoff
                continue
            if await partition.closed_within(backoff):
                return
            backoff = min(backoff * 2, config.forward_backoff_max)
