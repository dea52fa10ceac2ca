"""The matching role through a real grpc.aio server and the generated stub."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import pytest

from tests.conftest import open_backend
from tests.unit.matching.support import (
    KEY,
    NAMESPACE,
    QUEUE,
    FakeClock,
    FakeHistory,
    add_request,
    describe_request,
    poll_request,
    scheduled_event_id,
)
from tideflow.api.v1 import common_pb2
from tideflow_server.internal.v1 import (
    matching_service_pb2,
    matching_service_pb2_grpc,
)
from tideflow_server.matching import (
    MatchingConfig,
    MatchingEngine,
    MatchingHandler,
)
from tideflow_server.persistence.manager import PersistenceManager
from tideflow_server.persistence.sql import SqlPersistence
from tideflow_server.rpc.errors import (
    InvalidArgument,
    ResourceExhausted,
    ServiceError,
    from_rpc_error,
)


@pytest.fixture
async def persistence(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[SqlPersistence]:
    """SQLite only: the unit suite covers the engine on every backend, the wire is the
    subject here."""
    opened = await open_backend("sqlite", request, tmp_path)
    assert isinstance(opened, SqlPersistence)
    try:
        yield opened
    finally:
        await opened.close()


if TYPE_CHECKING:
    from tideflow_server.internal.v1.matching_service_pb2_grpc import (
        MatchingServiceAsyncStub as Stub,
    )


@asynccontextmanager
async def serving(engine: MatchingEngine) -> AsyncIterator[Stub]:
    server = grpc.aio.server()
    matching_service_pb2_grpc.add_MatchingServiceServicer_to_server(MatchingHandler(engine), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield matching_service_pb2_grpc.MatchingServiceStub(channel)
    finally:
        await server.stop(None)
        await engine.stop()


@pytest.fixture
def make_engine(persistence: SqlPersistence) -> Callable[..., MatchingEngine]:
    def make(**config: Any) -> MatchingEngine:
        return MatchingEngine(
            PersistenceManager(persistence),
            FakeHistory(),
            host_id="host-a",
            config=MatchingConfig(**{"long_poll_timeout": 30.0, **config}),
            clock=FakeClock(),
        )

    return make


def status_of(raised: pytest.ExceptionInfo[grpc.aio.AioRpcError]) -> ServiceError:
    return from_rpc_error(raised.value)


async def test_invalid_requests_get_their_field_violations(
    make_engine: Callable[..., MatchingEngine],
) -> None:
    engine = make_engine()
    async with serving(engine) as stub:
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await stub.PollBlockTask(matching_service_pb2.PollBlockTaskRequest(namespace_id="n"))
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        error = status_of(raised)
        assert isinstance(error, InvalidArgument)
        assert {v.field for v in error.violations} == {"poller_id", "request.task_queue.name"}

        bad_add = add_request(1)
        bad_add.ClearField("run")
        bad_add.attempt = 0
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await stub.AddBlockTask(bad_add)
        error = status_of(raised)
        assert isinstance(error, InvalidArgument)
        assert [v.field for v in error.violations] == [
            "run.run_id",
            "run.execution_id",
            "attempt",
        ]
        assert engine.loaded_partitions() == []  # nothing was touched


async def test_add_then_poll_and_describe(
    make_engine: Callable[..., MatchingEngine], persistence: SqlPersistence
) -> None:
    engine = make_engine()
    async with serving(engine) as stub:
        await stub.AddBlockTask(add_request(5))
        assert await persistence.tasks.count_backlog_tasks(KEY) == 1
        got = await stub.PollBlockTask(poll_request(identity="gpu-box:7"), timeout=10)
        assert scheduled_event_id(got.response) == 5
        described = await stub.DescribeTaskQueue(describe_request())
        assert [p.identity for p in described.pollers] == ["gpu-box:7"]
        assert described.status.owner_host == "host-a"


async def test_long_poll_answers_empty_before_the_client_deadline(
    make_engine: Callable[..., MatchingEngine],
) -> None:
    async with serving(make_engine(long_poll_timeout=60.0)) as stub:
        got = await stub.PollBlockTask(poll_request(), timeout=0.5)
        assert not got.HasField("response") or got.response.task_token == b""


async def test_a_client_that_goes_away_frees_its_poll(
    make_engine: Callable[..., MatchingEngine], persistence: SqlPersistence
) -> None:
    engine = make_engine()
    async with serving(engine) as stub:
        partition = await engine.partition(KEY)
        call = stub.PollBlockTask(poll_request(), timeout=20)
        async with asyncio.timeout(5):
            await partition.wait_for_polls(waiting=1)
        call.cancel()
        async with asyncio.timeout(5):
            await partition.wait_for_polls(waiting=0)
        assert partition.outstanding_polls == 0

        await stub.AddBlockTask(add_request(1))  # not handed to the dead poll
        assert await persistence.tasks.count_backlog_tasks(KEY) == 1


async def test_cancel_outstanding_poll_and_the_poll_limit(
    make_engine: Callable[..., MatchingEngine],
) -> None:
    engine = make_engine(max_outstanding_polls=1)
    async with serving(engine) as stub:
        partition = await engine.partition(KEY)
        first = stub.PollBlockTask(poll_request(poller_id="poll-1"), timeout=20)
        async with asyncio.timeout(5):
            await partition.wait_for_polls(waiting=1)

        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await stub.PollBlockTask(poll_request(poller_id="poll-2"), timeout=20)
        error = status_of(raised)
        assert isinstance(error, ResourceExhausted)
        assert error.reason == "TOO_MANY_OUTSTANDING_POLLS"

        await stub.CancelOutstandingPoll(
            matching_service_pb2.CancelOutstandingPollRequest(
                namespace_id=NAMESPACE,
                task_queue=common_pb2.TaskQueue(name=QUEUE),
                poller_id="poll-1",
            )
        )
        async with asyncio.timeout(5):
            got = await first
        assert got.response.task_token == b""
