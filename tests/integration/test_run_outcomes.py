"""What a run reports about itself: the task queue its blocks go to, the blocks it reached (in
order, with their kinds) and how it failed, against real server processes."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from tests.support.cluster import Cluster
from tests.support.flows import BlockFailure, BlockWorker, Client, Task, echo, payloads, value
from tideflow import Client as SdkClient
from tideflow.api.v1 import blueprint_pb2, common_pb2, failure_pb2, flow_service_pb2, history_pb2
from tideflow.errors import ApplicationError, BlockFailedError, RunFailedError
from tideflow.worker import Worker, block


def _name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def _events(
    events: list[history_pb2.HistoryEvent], event_type: history_pb2.EventType.ValueType
) -> list[history_pb2.HistoryEvent]:
    return [e for e in events if e.event_type == event_type]


# -- the start's task queue override ----------------------------------------------------------


def _override_blueprint(flow: str, default_queue: str, own_queue: str) -> dict[str, Any]:
    """`first -> own -> last`: `own` names its own queue, the others take the run's."""
    return {
        "name": flow,
        "version": 1,
        "task_queue": default_queue,
        "timeouts": {"start_to_close": "10s"},
        "retry": {"initial_interval": "0.1s"},
        "blocks": [
            {"id": "first", "external": {"block": "flaky@1"}, "input": "${input}"},
            {
                "id": "own",
                "needs": ["first"],
                "external": {"block": "step@1", "task_queue": own_queue},
                "input": "${blocks.first.output}",
            },
            {
                "id": "last",
                "needs": ["own"],
                "external": {"block": "step@1"},
                "input": "${blocks.own.output}",
            },
        ],
        "output": "${blocks.last.output}",
    }


async def test_start_task_queue_overrides_the_blueprints_for_the_whole_run(
    cluster: Cluster, client: Client
) -> None:
    flow = _name("flow")
    default_queue, override, own_queue = _name("default"), _name("override"), _name("own")
    await client.register(_override_blueprint(flow, default_queue, own_queue))

    async def flaky(task: Task) -> Any:
        if task.response.attempt == 1:
            raise BlockFailure("first attempt fails")  # the retry goes to the override too
        return task.input + 1

    async def step(task: Task) -> Any:
        return task.input + 1

    # Nothing polls the blueprint's queue: the run completes only if the override is honoured.
    overridden = BlockWorker(cluster.frontend, override, {"flaky@1": flaky, "step@1": step})
    named = BlockWorker(cluster.frontend, own_queue, {"step@1": step})
    async with overridden, named:
        run_id, _ = await client.start(
            flow, 1, task_queue=common_pb2.TaskQueue(name=override), request_id="r1"
        )
        closed = await client.close_event(run_id, timeout_s=30)
    assert closed.event_type == history_pb2.EVENT_TYPE_RUN_COMPLETED
    assert value(closed.run_completed_event_attributes.result) == 4
    assert overridden.attempts[(run_id, "first")] == 2
    assert named.attempts[(run_id, "own")] == 1
    assert overridden.attempts[(run_id, "last")] == 1
    scheduled = _events(await client.history(run_id), history_pb2.EVENT_TYPE_BLOCK_SCHEDULED)
    queues = {
        e.block_scheduled_event_attributes.block_id: e.block_scheduled_event_attributes.task_queue
        for e in scheduled
    }
    assert {block: q.name for block, q in queues.items()} == {
        "first": override,
        "own": own_queue,
        "last": override,
    }
    described = await client.describe(run_id)
    assert described.run_info.task_queue.name == override


async def test_signal_with_start_task_queue_overrides_the_blueprints(
    cluster: Cluster, client: Client
) -> None:
    flow = _name("flow")
    default_queue, override, own_queue = _name("default"), _name("override"), _name("own")
    await client.register(_override_blueprint(flow, default_queue, own_queue))
    run_id = _name("sws")
    request = flow_service_pb2.SignalWithStartRunRequest(
        namespace=client.namespace,
        run_id=run_id,
        input=payloads(1),
        signal_name="go",
        request_id="r1",
    )
    request.flow.name = flow
    request.task_queue.name = override

    async def step(task: Task) -> Any:
        return task.input + 1

    overridden = BlockWorker(cluster.frontend, override, {"flaky@1": step, "step@1": step})
    async with overridden, BlockWorker(cluster.frontend, own_queue, {"step@1": step}):
        started = await client.stub.SignalWithStartRun(request, timeout=10)
        assert started.started
        closed = await client.close_event(run_id, timeout_s=30)
    assert closed.event_type == history_pb2.EVENT_TYPE_RUN_COMPLETED
    assert value(closed.run_completed_event_attributes.result) == 4
    assert (run_id, "last") in overridden.attempts
    assert (await client.describe(run_id)).run_info.task_queue.name == override


async def test_without_override_blocks_take_the_blueprints_queue(
    cluster: Cluster, client: Client
) -> None:
    flow = _name("flow")
    default_queue, own_queue = _name("default"), _name("own")
    await client.register(_override_blueprint(flow, default_queue, own_queue))
    default = BlockWorker(cluster.frontend, default_queue, {"flaky@1": echo, "step@1": echo})
    async with default, BlockWorker(cluster.frontend, own_queue, {"step@1": echo}):
        run_id, _ = await client.start(flow, 7)
        closed = await client.close_event(run_id, timeout_s=30)
    assert value(closed.run_completed_event_attributes.result) == 7
    assert (run_id, "last") in default.attempts
    assert (await client.describe(run_id)).run_info.task_queue.name == default_queue


# -- the blocks a run reached, in order, with their kinds --------------------------------------


async def test_describe_lists_blocks_in_the_order_reached_with_their_kinds(
    cluster: Cluster, client: Client
) -> None:
    queue, flow = _name("q"), _name("flow")
    external = {"block": "step@1"}
    await client.register(
        {
            "name": flow,
            "version": 1,
            "task_queue": queue,
            "timeouts": {"start_to_close": "10s"},
            # Declared in neither the order reached nor the topological one.
            "blocks": [
                {"id": "final", "needs": ["p", "q"], "transform": {"output": "${blocks.q.output}"}},
                {"id": "p", "needs": ["s"], "when": "vars.go", "external": external},
                {
                    "id": "bad",
                    "needs": ["r"],
                    "external": external,
                    "input": "${blocks.r.output.missing}",
                },
                {"id": "q", "needs": ["r"], "external": external, "input": "${input}"},
                {"id": "r", "transform": {"output": {"n": 1}}},
                {"id": "s", "set": {"vars": {"go": False}}},
            ],
        }
    )
    async with BlockWorker(cluster.frontend, queue, {"step@1": echo}):
        run_id, _ = await client.start(flow, "doc")
        closed = await client.close_event(run_id, timeout_s=30)
    assert closed.event_type == history_pb2.EVENT_TYPE_RUN_FAILED  # `bad` failed
    described = await client.describe(run_id)
    assert [
        (
            b.block_id,
            blueprint_pb2.BlockKind.Name(b.kind).removeprefix("BLOCK_KIND_"),
            common_pb2.BlockStatus.Name(b.status).removeprefix("BLOCK_STATUS_"),
        )
        for b in described.blocks
    ] == [
        ("r", "TRANSFORM", "SUCCEEDED"),
        ("s", "SET", "SUCCEEDED"),
        ("p", "EXTERNAL", "SKIPPED"),
        ("bad", "EXTERNAL", "FAILED"),
        ("q", "EXTERNAL", "SUCCEEDED"),
        ("final", "TRANSFORM", "SUCCEEDED"),
    ]


# -- engine-side failures ------------------------------------------------------------------------


async def test_run_time_expression_errors_are_server_failures_fail_blocks_application_ones(
    cluster: Cluster, client: Client
) -> None:
    queue, flow = _name("q"), _name("flow")
    await client.register(
        {
            "name": flow,
            "version": 1,
            "task_queue": queue,
            "timeouts": {"start_to_close": "10s"},
            "blocks": [
                {"id": "a", "external": {"block": "step@1"}, "input": "${input}"},
                {
                    "id": "missing",
                    "needs": ["a"],
                    "external": {"block": "step@1"},
                    "input": "${blocks.a.output.missing}",
                },
                {"id": "not_bool", "needs": ["a"], "when": "input.n", "transform": {}},
                {
                    "id": "refused",
                    "needs": ["a"],
                    "fail": {"error_type": "Rejected", "message": "document rejected"},
                },
            ],
        }
    )
    async with BlockWorker(cluster.frontend, queue, {"step@1": echo}):
        run_id, _ = await client.start(flow, {"n": 1})
        closed = await client.close_event(run_id, timeout_s=30)
    assert closed.event_type == history_pb2.EVENT_TYPE_RUN_FAILED
    failed = {
        e.system_block_failed_event_attributes.block_id: e.system_block_failed_event_attributes
        for e in _events(await client.history(run_id), history_pb2.EVENT_TYPE_SYSTEM_BLOCK_FAILED)
    }
    assert set(failed) == {"missing", "not_bool", "refused"}
    for block_id in ("missing", "not_bool"):
        failure = failed[block_id].failure
        assert failure.source == "tideflow"
        assert failure.WhichOneof("failure_info") == "server_failure_info", block_id
        assert failure.server_failure_info.non_retryable
        assert failure.server_failure_info.type == "ExpressionError"
    assert 'no such key: "missing"' in failed["missing"].failure.message
    assert "wants a bool, got an int" in failed["not_bool"].failure.message
    refused = failed["refused"].failure
    assert refused.WhichOneof("failure_info") == "application_failure_info"
    assert refused.application_failure_info.type == "Rejected"
    assert refused.message == "document rejected"


async def test_an_output_that_breaks_the_schema_is_a_server_failure(
    cluster: Cluster, client: Client
) -> None:
    flow = _name("flow")
    await client.register(
        {
            "name": flow,
            "version": 1,
            "output_schema": {"type": "string"},
            "blocks": [{"id": "shape", "transform": {"output": "${input}"}}],
            "output": "${blocks.shape.output}",
        }
    )
    run_id, _ = await client.start(flow, 5)
    closed = await client.close_event(run_id, timeout_s=30)
    failure = closed.run_failed_event_attributes.failure
    assert failure.source == "tideflow"
    assert failure.WhichOneof("failure_info") == "server_failure_info"
    assert failure.server_failure_info.type == "OutputSchemaViolation"
    assert failure.server_failure_info.non_retryable
    assert failure.message == 'output: 5 is not of type "string"'


# -- a run's failure keeps its cause -------------------------------------------------------------


async def test_run_failure_wraps_the_workers_failure_with_where_it_happened(
    cluster: Cluster, client: Client
) -> None:
    block_name = _name("boom").replace("-", "_")

    @block(block_name)
    async def boom(_: Any) -> None:
        try:
            raise OSError("sda: read error")
        except OSError as e:
            raise ApplicationError("disk on fire", {"disk": "sda"}, 3, type="DiskError") from e

    queue, flow = _name("q"), _name("flow")
    await client.register(
        {
            "name": flow,
            "version": 1,
            "task_queue": queue,
            "timeouts": {"start_to_close": "10s"},
            "retry": {"initial_interval": "0.1s", "maximum_attempts": 2},
            "blocks": [{"id": "boom", "external": {"block": f"{block_name}@1"}}],
        }
    )
    worker = Worker(cluster.frontend, task_queue=queue, blocks=[boom], namespace=client.namespace)
    async with worker, await SdkClient.connect(cluster.frontend, namespace=client.namespace) as sdk:
        run = await sdk.start_run(flow)
        with pytest.raises(RunFailedError) as raised:
            await run.result(timeout=30)
    events = await client.history(run.run_id)
    [scheduled] = _events(events, history_pb2.EVENT_TYPE_BLOCK_SCHEDULED)
    [started] = _events(events, history_pb2.EVENT_TYPE_BLOCK_STARTED)
    [block_failed] = _events(events, history_pb2.EVENT_TYPE_BLOCK_FAILED)
    [run_failed] = _events(events, history_pb2.EVENT_TYPE_RUN_FAILED)
    sent = block_failed.block_failed_event_attributes.failure  # as the worker sent it

    failure = run_failed.run_failed_event_attributes.failure
    assert failure.message == "block 'boom' failed"
    assert failure.source == "tideflow"
    expected = failure_pb2.BlockFailureInfo(
        block_id="boom",
        block_type=f"{block_name}@1",
        attempt=2,
        scheduled_event_id=scheduled.event_id,
        started_event_id=started.event_id,
        identity=worker.identity,
        retry_state=common_pb2.RETRY_STATE_MAXIMUM_ATTEMPTS_REACHED,
    )
    assert failure.block_failure_info == expected
    assert failure.cause == sent
    assert sent.source == "python"
    assert sent.message == "disk on fire"
    assert sent.application_failure_info.type == "DiskError"
    details = sent.application_failure_info.details.payloads
    assert [value(common_pb2.Payloads(payloads=[p])) for p in details] == [{"disk": "sda"}, 3]
    assert "OSError" in sent.stack_trace
    assert sent.cause.message == "sda: read error"
    assert sent.cause.application_failure_info.type == "OSError"
    assert sent.cause.source == "python"

    # DescribeRun shows the block's failure in the same shape.
    [summary] = (await client.describe(run.run_id)).blocks
    assert summary.failure == failure

    _check_raised_chain(raised.value, failure, f"{block_name}@1", worker.identity)


def _check_raised_chain(
    error: RunFailedError, failure: failure_pb2.Failure, block_type: str, identity: str
) -> None:
    """The SDK raises the chain: the run's failure, the block's, the worker's, its cause."""
    assert error.failure == failure
    assert str(error) == "block 'boom' failed: disk on fire: sda: read error"
    assert error.failure_type == "DiskError"
    block_error = error.__cause__
    assert isinstance(block_error, BlockFailedError)
    assert (block_error.block_id, block_error.block_type, block_error.attempt) == (
        "boom",
        block_type,
        2,
    )
    assert block_error.identity == identity
    assert block_error.retry_state == "MAXIMUM_ATTEMPTS_REACHED"
    application = block_error.__cause__
    assert isinstance(application, ApplicationError)
    assert (application.message, application.type, application.source) == (
        "disk on fire",
        "DiskError",
        "python",
    )
    assert application.details == ({"disk": "sda"}, 3)
    assert "OSError" in application.stack_trace
    assert isinstance(application.__cause__, ApplicationError)
    assert application.__cause__.type == "OSError"


async def test_a_system_blocks_failure_is_wrapped_naming_the_block(
    cluster: Cluster, client: Client
) -> None:
    flow = _name("flow")
    await client.register(
        {
            "name": flow,
            "version": 1,
            "blocks": [
                {"id": "check", "transform": {"output": "${input}"}},
                {
                    "id": "refused",
                    "needs": ["check"],
                    "fail": {"error_type": "Rejected", "message": "document rejected"},
                },
            ],
        }
    )
    run_id, _ = await client.start(flow, 1)
    closed = await client.close_event(run_id, timeout_s=30)
    failure = closed.run_failed_event_attributes.failure
    assert failure.message == "block 'refused' failed"
    assert failure.source == "tideflow"
    assert failure.block_failure_info == failure_pb2.BlockFailureInfo(block_id="refused")
    assert failure.cause.message == "document rejected"
    assert failure.cause.application_failure_info.type == "Rejected"
    assert failure.cause.application_failure_info.non_retryable
    summaries = {b.block_id: b for b in (await client.describe(run_id)).blocks}
    assert summaries["refused"].failure == failure
