"""RespondBlockCompletedBatch: several completions in one call, each handled as
RespondBlockCompleted would handle it and answered on its own, in order; a malformed batch is
refused whole and records nothing. The SDK worker sends completions that pile up while
earlier ones are on the wire as one batch."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from typing import TYPE_CHECKING, Any, cast

import grpc
import pytest

from tests.support.cluster import Cluster
from tests.support.flows import Client, payloads, two_step_blueprint, value
from tideflow.api.v1 import flow_service_pb2, flow_service_pb2_grpc, history_pb2
from tideflow.worker import Worker, block
from tideflow_server.rpc.errors import InvalidArgument, from_rpc_error


def _name(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:8]}"


async def _two_step_flow(client: Client, flow: str, queue: str) -> None:
    await client.register(two_step_blueprint(flow, queue))


def _completion(
    task: flow_service_pb2.PollBlockTaskResponse, result: Any, *, eager_slots: int = 0
) -> flow_service_pb2.RespondBlockCompletedRequest:
    return flow_service_pb2.RespondBlockCompletedRequest(
        namespace="tests",
        task_token=task.task_token,
        result=payloads(result),
        identity="batch-test",
        eager_slots=eager_slots,
    )


async def _poll(
    stub: flow_service_pb2_grpc.FlowServiceAsyncStub, queue: str, count: int
) -> dict[str, flow_service_pb2.PollBlockTaskResponse]:
    """`count` first-block tasks, by run id."""
    request = flow_service_pb2.PollBlockTaskRequest(namespace="tests", identity="batch-test")
    request.task_queue.name = queue
    tasks: dict[str, flow_service_pb2.PollBlockTaskResponse] = {}
    while len(tasks) < count:
        task = await stub.PollBlockTask(request, timeout=10)
        if task.task_token:
            tasks[task.run.run_id] = task
    return tasks


async def test_each_item_is_answered_on_its_own_in_order(cluster: Cluster, client: Client) -> None:
    queue, flow = _name("q"), _name("flow")
    await _two_step_flow(client, flow, queue)
    runs = [(await client.start(flow, n))[0] for n in (10, 20, 30)]
    async with grpc.aio.insecure_channel(cluster.frontend) as channel:
        stub = flow_service_pb2_grpc.FlowServiceStub(channel)
        tasks = await _poll(stub, queue, 3)
        first, second, third = (tasks[r] for r in runs)
        # The first run's task is answered alone; in the batch its token is stale.
        await stub.RespondBlockCompleted(_completion(first, 11), timeout=10)
        answer = await stub.RespondBlockCompletedBatch(
            flow_service_pb2.RespondBlockCompletedBatchRequest(
                completions=[
                    _completion(second, 21, eager_slots=1),
                    _completion(first, 99),
                    _completion(third, 31),
                ]
            ),
            timeout=10,
        )
        ok, stale, plain = answer.results
        assert ok.status.code == grpc.StatusCode.OK.value[0]
        # Eager dispatch works per item: the second run's next block comes back with it.
        [eager] = ok.response.next_tasks
        assert (eager.run.run_id, eager.block_id, value(eager.input)) == (runs[1], "b", 21)
        assert stale.status.code == grpc.StatusCode.NOT_FOUND.value[0]
        assert stale.status.reason == "BLOCK_TASK_NOT_FOUND"
        assert not stale.HasField("response")
        assert plain.status.code == grpc.StatusCode.OK.value[0]
        assert not plain.response.next_tasks
        # Finish every run: the eager task, and the second blocks of the other two by poll.
        rest = await _poll(stub, queue, 2)
        assert set(rest) == {runs[0], runs[2]}
        answer = await stub.RespondBlockCompletedBatch(
            flow_service_pb2.RespondBlockCompletedBatchRequest(
                completions=[
                    _completion(eager, 22),
                    _completion(rest[runs[0]], 12),
                    _completion(rest[runs[2]], 32),
                ]
            ),
            timeout=10,
        )
        assert [r.status.code for r in answer.results] == [0, 0, 0]
    closed = [await client.close_event(r, timeout_s=30) for r in runs]
    assert [e.event_type for e in closed] == [history_pb2.EVENT_TYPE_RUN_COMPLETED] * 3
    # The stale answer (99) changed nothing.
    assert [value(e.run_completed_event_attributes.result) for e in closed] == [12, 22, 32]


async def test_a_malformed_batch_is_refused_whole_and_records_nothing(
    cluster: Cluster, client: Client
) -> None:
    queue, flow = _name("q"), _name("flow")
    await _two_step_flow(client, flow, queue)
    run_id, _ = await client.start(flow, 1)
    async with grpc.aio.insecure_channel(cluster.frontend) as channel:
        stub = flow_service_pb2_grpc.FlowServiceStub(channel)
        task = (await _poll(stub, queue, 1))[run_id]
        bad_token = _completion(task, 2)
        bad_token.task_token = b"not a token"
        too_many = _completion(task, 2, eager_slots=1000)
        cases: list[tuple[list[flow_service_pb2.RespondBlockCompletedRequest], set[str]]] = [
            ([], {"completions"}),
            ([_completion(task, 2), too_many], {"completions[1].eager_slots"}),
            ([_completion(task, 2), bad_token], {"completions[1].task_token"}),
        ]
        for completions, fields in cases:
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await stub.RespondBlockCompletedBatch(
                    flow_service_pb2.RespondBlockCompletedBatchRequest(completions=completions),
                    timeout=10,
                )
            error = from_rpc_error(raised.value)
            assert isinstance(error, InvalidArgument)
            assert {v.field for v in error.violations} == fields
        # Nothing was recorded: the attempt is still open, and its valid answer is taken.
        await stub.RespondBlockCompleted(_completion(task, 2), timeout=10)
        second = (await _poll(stub, queue, 1))[run_id]
        assert second.block_id == "b"
        await stub.RespondBlockCompleted(_completion(second, 3), timeout=10)
    closed = await client.close_event(run_id, timeout_s=30)
    assert value(closed.run_completed_event_attributes.result) == 3


if TYPE_CHECKING:
    _Interceptor = grpc.aio.UnaryUnaryClientInterceptor[Any, Any]
else:  # generic only in the type stubs
    _Interceptor = grpc.aio.UnaryUnaryClientInterceptor


class _CountCalls(_Interceptor):
    """Counts the worker's unary calls by method."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()

    async def intercept_unary_unary(
        self,
        continuation: Any,
        client_call_details: grpc.aio.ClientCallDetails,
        request: Any,
    ) -> Any:
        method = client_call_details.method
        name = method.decode() if isinstance(method, bytes) else method
        self.calls[name.rsplit("/", 1)[-1]] += 1
        return await continuation(client_call_details, request)


async def test_the_worker_sends_completions_that_pile_up_as_one_batch(
    cluster: Cluster, client: Client
) -> None:
    """Twenty blocks finish at the same moment: their completions cannot all go alone (two
    calls at a time), so the rest go as batches, and every run finishes."""
    queue, flow = _name("q"), _name("flow")
    runs_count = 20
    await client.register(
        {
            "name": flow,
            "version": 1,
            "task_queue": queue,
            "timeouts": {"start_to_close": "20s"},
            "blocks": [{"id": "a", "external": {"block": f"{flow}@1"}, "input": "${input}"}],
            "output": "${blocks.a.output}",
        }
    )
    release = asyncio.Event()
    arrived = 0
    all_arrived = asyncio.Event()

    @block(flow)
    async def gate(n: int) -> int:
        nonlocal arrived
        arrived += 1
        if arrived == runs_count:
            all_arrived.set()
        await release.wait()
        return n * 3

    counter = _CountCalls()
    worker = Worker(
        cluster.frontend,
        task_queue=queue,
        blocks=[gate],
        namespace="tests",
        max_concurrent=runs_count,
        interceptors=[cast("grpc.aio.ClientInterceptor", counter)],
    )
    async with worker:
        runs = [(await client.start(flow, n))[0] for n in range(runs_count)]
        await asyncio.wait_for(all_arrived.wait(), timeout=30)
        release.set()
        closed = [await client.close_event(r, timeout_s=30) for r in runs]
    assert [value(e.run_completed_event_attributes.result) for e in closed] == [
        3 * n for n in range(runs_count)
    ]
    alone = counter.calls["RespondBlockCompleted"]
    batches = counter.calls["RespondBlockCompletedBatch"]
    assert batches >= 1, counter.calls
    assert alone + batches < runs_count, counter.calls


async def test_a_batch_costs_its_namespace_one_token_not_one_per_item(cluster: Cluster) -> None:
    queue, flow = _name("q"), _name("flow")
    limited = Client(cluster.frontend, namespace=f"batch-{uuid.uuid4().hex[:6]}")
    register = flow_service_pb2.RegisterNamespaceRequest(namespace=limited.namespace)
    # Five tokens, refilled every 100 s: the flow, three starts and one completion call.
    register.config.rate_limits.requests_per_second = 0.01
    register.config.rate_limits.burst = 5
    try:
        await limited.stub.RegisterNamespace(register, timeout=10)
        await limited.register(two_step_blueprint(flow, queue))
        for n in (1, 2, 3):
            await limited.start(flow, n)
        poll = flow_service_pb2.PollBlockTaskRequest(
            namespace=limited.namespace, identity="batch-test"
        )
        poll.task_queue.name = queue
        tasks: list[flow_service_pb2.PollBlockTaskResponse] = []
        while len(tasks) < 3:  # polls are not charged
            if (task := await limited.stub.PollBlockTask(poll, timeout=10)).task_token:
                tasks.append(task)
        batch = flow_service_pb2.RespondBlockCompletedBatchRequest(
            completions=[
                flow_service_pb2.RespondBlockCompletedRequest(
                    namespace=limited.namespace, task_token=t.task_token, result=payloads(1)
                )
                for t in tasks
            ]
        )
        answer = await limited.stub.RespondBlockCompletedBatch(batch, timeout=10)
        assert [r.status.code for r in answer.results] == [grpc.StatusCode.OK.value[0]] * 3
        # The bucket is empty now: the next call is refused, each item with the wait.
        again = await limited.stub.RespondBlockCompletedBatch(batch, timeout=10)
        exhausted = grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
        assert [r.status.code for r in again.results] == [exhausted] * 3
        assert {r.status.reason for r in again.results} == {"NAMESPACE_RATE_LIMITED"}
        assert all(int(r.status.metadata["retry_after_ms"]) > 0 for r in again.results)
    finally:
        await limited.close()
