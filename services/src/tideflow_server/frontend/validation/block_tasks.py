"""Worker requests (poll, answer, heartbeat) and task queue requests."""

from __future__ import annotations

from tideflow.api.v1 import (
    common_pb2,
    flow_service_pb2,
)
from tideflow_server import queue_config
from tideflow_server.frontend.limits import RequestLimits
from tideflow_server.frontend.validation._checker import (
    _STICKY,
    _Checker,
)
from tideflow_server.rpc.errors import InvalidArgument


def validate_poll_block_task(
    req: flow_service_pb2.PollBlockTaskRequest, limits: RequestLimits
) -> None:
    check = _Checker(limits)
    check.namespace(req.namespace)
    check.task_queue(req.task_queue, allow_sticky=True)
    check.identity(req.identity)
    rate = req.max_tasks_per_second
    if not queue_config.rate_ok(rate):
        check.add(
            "max_tasks_per_second",
            f"is {rate}, must be 0 (no limit) or in [{queue_config.MIN_RATE_PER_SECOND:g}, "
            f"{queue_config.MAX_RATE_PER_SECOND:g}]",
        )
    if req.sticky_task_queue:
        if req.task_queue.kind == _STICKY:
            check.add("sticky_task_queue", "must be empty when polling a sticky queue itself")
        check.task_queue(
            common_pb2.TaskQueue(name=req.sticky_task_queue, kind=_STICKY),
            "sticky_task_queue",
            allow_sticky=True,
        )
    if len(req.warm_keys) > queue_config.MAX_WARM_KEYS:
        check.add(
            "warm_keys", f"has {len(req.warm_keys)} keys, at most {queue_config.MAX_WARM_KEYS}"
        )
    for i, key in enumerate(req.warm_keys):
        check.identity(key, f"warm_keys[{i}]")
    check.done()


MAX_EAGER_SLOTS = 100
"""Block tasks one completion may take by eager dispatch (a fan-out wider than this goes
through matching for the rest)."""


def validate_respond_block_completed(
    req: flow_service_pb2.RespondBlockCompletedRequest, limits: RequestLimits
) -> None:
    check = _Checker(limits)
    check.namespace(req.namespace)
    check.task_token(req.task_token)
    check.json_payloads(req.result, "result")
    check.identity(req.identity)
    if not 0 <= req.eager_slots <= MAX_EAGER_SLOTS:
        check.add("eager_slots", f"is {req.eager_slots}, must be between 0 and {MAX_EAGER_SLOTS}")
    if req.sticky_task_queue:
        check.task_queue(
            common_pb2.TaskQueue(name=req.sticky_task_queue, kind=_STICKY),
            "sticky_task_queue",
            allow_sticky=True,
        )
    check.done()


MAX_BATCH_COMPLETIONS = 100
"""Completions one RespondBlockCompletedBatch call may carry."""


def validate_respond_block_completed_batch(
    req: flow_service_pb2.RespondBlockCompletedBatchRequest, limits: RequestLimits
) -> None:
    """Every item as RespondBlockCompleted checks it, its fields named completions[i].…"""
    check = _Checker(limits)
    count = len(req.completions)
    if not 1 <= count <= MAX_BATCH_COMPLETIONS:
        check.add("completions", f"has {count} items, must have 1 to {MAX_BATCH_COMPLETIONS}")
    for i, item in enumerate(req.completions):
        try:
            validate_respond_block_completed(item, limits)
        except InvalidArgument as e:
            for v in e.violations:
                check.add(
                    f"completions[{i}].{v.field}" if v.field else f"completions[{i}]", v.description
                )
    check.done()


def validate_respond_block_failed(
    req: flow_service_pb2.RespondBlockFailedRequest, limits: RequestLimits
) -> None:
    check = _Checker(limits)
    check.namespace(req.namespace)
    check.task_token(req.task_token)
    check.failure(req.failure, "failure", present=req.HasField("failure"))
    check.payloads(req.last_heartbeat_details, "last_heartbeat_details")
    check.identity(req.identity)
    check.done()


def validate_respond_block_canceled(
    req: flow_service_pb2.RespondBlockCanceledRequest, limits: RequestLimits
) -> None:
    check = _Checker(limits)
    check.namespace(req.namespace)
    check.task_token(req.task_token)
    check.payloads(req.details, "details")
    check.identity(req.identity)
    check.done()


def validate_record_block_heartbeat(
    req: flow_service_pb2.RecordBlockHeartbeatRequest, limits: RequestLimits
) -> None:
    check = _Checker(limits)
    check.namespace(req.namespace)
    check.task_token(req.task_token)
    check.payloads(req.details, "details")
    check.identity(req.identity)
    check.done()


# Task queues.


def validate_describe_task_queue(
    req: flow_service_pb2.DescribeTaskQueueRequest, limits: RequestLimits
) -> None:
    check = _Checker(limits)
    check.namespace(req.namespace)
    check.task_queue(req.task_queue, allow_sticky=True)
    check.done()


def validate_update_task_queue_config(
    req: flow_service_pb2.UpdateTaskQueueConfigRequest, limits: RequestLimits
) -> None:
    check = _Checker(limits)
    check.namespace(req.namespace)
    check.task_queue(req.task_queue, allow_sticky=True)
    if req.task_queue.kind == _STICKY:
        check.add("task_queue.kind", "sticky queues belong to one worker and take no settings")
    check.identity(req.identity)
    for field, description in queue_config.check(req.config, req.update_mask.paths):
        check.add(field, description)
    check.done()
