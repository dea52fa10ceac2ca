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
from tideflow_server.config import RoleEndpoint
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
    DeadlineExceeded,
    InvalidArgument,
    ResourceExhausted,
    ServiceError,
    Unavailable,
    from_exchange_status,
    from_rpc_error,
)
from tideflow_server.rpc.interceptors import Chain, base_layers
from tideflow_server.rpc.server import Service, start_role_server
from tideflow_server.rpc.streams import NotServed, StreamClient


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
    from tideflow_server.rpc.clients import AddStream


@asynccontextmanager
async def serving(engine: MatchingEngine) -> AsyncIterator[Stub]:
    server = grpc.aio.server(interceptors=[Chain(base_layers())])
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


# -- AddBlockTaskStream: adds over one long-lived stream (tideflow_server.rpc.streams) ----------


def _add_stream(stub: Stub) -> AddStream:
    return StreamClient(lambda: stub.AddBlockTaskStream(None), lambda answer: answer.id)


async def _add(
    stream: AddStream, request: matching_service_pb2.AddBlockTaskRequest, *, timeout_s: float = 10
) -> matching_service_pb2.AddBlockTaskResponse:
    reply = await stream.exchange(
        lambda i: matching_service_pb2.AddBlockTaskStreamRequest(id=i, request=request),
        timeout_s=timeout_s,
    )
    if reply.HasField("status"):
        raise from_exchange_status(reply.status)
    return reply.response


async def test_adds_on_one_stream_are_answered_by_id_in_any_order(
    make_engine: Callable[..., MatchingEngine], persistence: SqlPersistence
) -> None:
    # An add with no poll waits in memory for one (sync_match_wait), so the first add is
    # still open when the later ones are answered.
    engine = make_engine(sync_match_wait=30.0)
    async with serving(engine) as stub:
        stream = _add_stream(stub)
        partition = await engine.partition(KEY)
        waiting = asyncio.create_task(_add(stream, add_request(1)))
        async with asyncio.timeout(5):
            await partition.wait_for_held(held=1)
        bad = add_request(2)
        bad.ClearField("run")
        with pytest.raises(InvalidArgument) as raised:
            await _add(stream, bad)
        assert [v.field for v in raised.value.violations] == ["run.run_id", "run.execution_id"]
        assert not waiting.done()

        got = await stub.PollBlockTask(poll_request(), timeout=10)
        assert scheduled_event_id(got.response) == 1
        assert (await waiting).sync_matched
        # Three polls wait; three adds in flight at once on the stream each meet one.
        polls = [
            asyncio.ensure_future(stub.PollBlockTask(poll_request(poller_id=f"p{n}"), timeout=10))
            for n in range(3)
        ]
        async with asyncio.timeout(5):
            await partition.wait_for_polls(waiting=3)
        answers = await asyncio.gather(*(_add(stream, add_request(n)) for n in (3, 4, 5)))
        assert [a.sync_matched for a in answers] == [True, True, True]
        polled = [scheduled_event_id((await p).response) for p in polls]
        assert sorted(polled) == [3, 4, 5]
        assert await persistence.tasks.count_backlog_tasks(KEY) == 0


async def test_an_add_without_an_answer_in_time_fails_with_deadline_exceeded(
    make_engine: Callable[..., MatchingEngine],
) -> None:
    async with serving(make_engine(sync_match_wait=30.0)) as stub:
        stream = _add_stream(stub)
        with pytest.raises(DeadlineExceeded):
            await _add(stream, add_request(1), timeout_s=0.2)


async def test_a_broken_stream_fails_waiting_adds_as_unavailable_and_the_next_opens_anew(
    make_engine: Callable[..., MatchingEngine], persistence: SqlPersistence
) -> None:
    first = grpc.aio.server(interceptors=[Chain(base_layers())])
    dying = make_engine(sync_match_wait=30.0)
    matching_service_pb2_grpc.add_MatchingServiceServicer_to_server(MatchingHandler(dying), first)
    port = first.add_insecure_port("127.0.0.1:0")
    await first.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stream = _add_stream(matching_service_pb2_grpc.MatchingServiceStub(channel))
        waiting = asyncio.create_task(_add(stream, add_request(1)))
        partition = await dying.partition(KEY)
        async with asyncio.timeout(5):
            await partition.wait_for_held(held=1)
        await first.stop(None)  # the host dies with the add in flight
        with pytest.raises(Unavailable):
            await waiting

        second = grpc.aio.server(interceptors=[Chain(base_layers())])
        engine = make_engine()
        matching_service_pb2_grpc.add_MatchingServiceServicer_to_server(
            MatchingHandler(engine), second
        )
        assert second.add_insecure_port(f"127.0.0.1:{port}") == port
        await second.start()
        try:
            answer = await _add(stream, add_request(1))
            assert not answer.sync_matched
            assert await persistence.tasks.count_backlog_tasks(KEY) == 1
        finally:
            await second.stop(None)
            await engine.stop()
            await dying.stop()


class _OlderHandler(MatchingHandler):
    """A matching host from before the add stream: the generated servicer's default answers
    the stream UNIMPLEMENTED."""

    AddBlockTaskStream = matching_service_pb2_grpc.MatchingServiceServicer.AddBlockTaskStream  # type: ignore[assignment]


async def test_a_host_without_the_stream_is_told_apart(
    make_engine: Callable[..., MatchingEngine],
) -> None:
    engine = make_engine()
    server = grpc.aio.server(interceptors=[Chain(base_layers())])
    matching_service_pb2_grpc.add_MatchingServiceServicer_to_server(_OlderHandler(engine), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = matching_service_pb2_grpc.MatchingServiceStub(channel)
            stream = _add_stream(stub)
            with pytest.raises(NotServed):
                await _add(stream, add_request(1))
            with pytest.raises(NotServed):  # known now: no new stream is opened
                await _add(stream, add_request(1))
            await stub.AddBlockTask(add_request(1))  # what MatchingClient falls back to
    finally:
        await server.stop(None)
        await engine.stop()


async def test_a_stopping_host_ends_its_streams_without_waiting_out_the_grace(
    make_engine: Callable[..., MatchingEngine],
) -> None:
    engine = make_engine()
    handler = MatchingHandler(engine)
    role = await start_role_server(
        "matching",
        RoleEndpoint(host="127.0.0.1", port=0),
        [
            Service(
                "tideflow_server.internal.v1.MatchingService",
                lambda s: matching_service_pb2_grpc.add_MatchingServiceServicer_to_server(
                    handler, s
                ),
                on_stop=handler.streams.close,
            )
        ],
    )
    try:
        async with grpc.aio.insecure_channel(role.address) as channel:
            stream = _add_stream(matching_service_pb2_grpc.MatchingServiceStub(channel))
            assert not (await _add(stream, add_request(1))).sync_matched  # the stream is open
            async with asyncio.timeout(10):  # the grace is 60 s
                await role.stop(60.0)
            with pytest.raises(Unavailable):
                await _add(stream, add_request(2))
    finally:
        await engine.stop()
