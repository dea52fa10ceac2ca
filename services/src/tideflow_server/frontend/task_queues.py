"""DescribeTaskQueue over a queue's partitions: each partition's owner describes it, and the
frontend merges them into the queue's view."""

from __future__ import annotations

from collections.abc import Sequence

from tideflow.api.v1 import flow_service_pb2, task_queue_pb2
from tideflow_server.internal.v1 import matching_service_pb2


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
