"""FlowService's task queue calls. DescribeTaskQueue goes over the queue's partitions: each
partition's owner describes it, and the frontend merges them into the queue's view."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import grpc

from tideflow.api.v1 import flow_service_pb2, task_queue_pb2
from tideflow_server.frontend.base import Frontend
from tideflow_server.internal.v1 import matching_service_pb2

Context = grpc.aio.ServicerContext[Any, Any]


class TaskQueues:
    _f: Frontend

    async def DescribeTaskQueue(
        self, request: flow_service_pb2.DescribeTaskQueueRequest, context: Context
    ) -> flow_service_pb2.DescribeTaskQueueResponse:
        record = await self._f.namespace(request.namespace)
        namespace_id = record.info.id
        queue = await self._f.task_queues.get(namespace_id, request.task_queue)
        described = await asyncio.gather(
            *(
                self._f.matching.describe_task_queue(
                    matching_service_pb2.DescribeTaskQueueRequest(
                        namespace_id=namespace_id,
                        task_queue=request.task_queue,
                        partition=partition,
                    )
                )
                for partition in range(queue.read_partitions)
            )
        )
        return merge_described(described)

    async def UpdateTaskQueueConfig(
        self, request: flow_service_pb2.UpdateTaskQueueConfigRequest, context: Context
    ) -> flow_service_pb2.UpdateTaskQueueConfigResponse:
        record = await self._f.namespace(request.namespace)
        updated = await self._f.matching.update_task_queue_config(
            matching_service_pb2.UpdateTaskQueueConfigRequest(
                namespace_id=record.info.id,
                task_queue=request.task_queue,
                config=request.config,
                update_mask=request.update_mask,
                identity=request.identity,
            )
        )
        return flow_service_pb2.UpdateTaskQueueConfigResponse(config=updated.config)


def merge_described(
    described: Sequence[matching_service_pb2.DescribeTaskQueueResponse],
) -> flow_service_pb2.DescribeTaskQueueResponse:
    """Pollers merged by identity (a worker's polls reach several partitions, and forwarded
    ones the root too; its latest access wins), backlog hints summed, every partition's status
    listed in partition order. The config is the root's (the first response)."""
    pollers: dict[str, task_queue_pb2.PollerInfo] = {}
    for response in described:
        for poller in response.pollers:
            seen = pollers.get(poller.identity)
            if seen is None or _later(poller, seen):
                pollers[poller.identity] = poller
    merged = flow_service_pb2.DescribeTaskQueueResponse(
        pollers=[pollers[identity] for identity in sorted(pollers)],
        backlog_count_hint=sum(r.status.backlog_count_hint for r in described),
        partitions=sorted((r.status for r in described), key=lambda s: s.partition),
    )
    if described and described[0].HasField("config"):
        merged.config.CopyFrom(described[0].config)
    return merged


def _later(a: task_queue_pb2.PollerInfo, b: task_queue_pb2.PollerInfo) -> bool:
    return a.last_access_time.ToNanoseconds() > b.last_access_time.ToNanoseconds()
