"""The routed client retries through a database outage: while the database is away, the
membership refresh between tries fails with the persistence layer's Unavailable, and that is
one more "try again", never an error of its own kind (issue 17: matching took it as
unexpected and dropped block tasks)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from tideflow_server.config import MembershipConfig
from tideflow_server.internal.v1 import history_service_pb2 as hs
from tideflow_server.membership import Membership
from tideflow_server.persistence import Unavailable as PersistenceUnavailable
from tideflow_server.persistence.records import MemberRow
from tideflow_server.persistence.sql import SqlPersistence
from tideflow_server.rpc.clients import ChannelPool, HistoryClient
from tideflow_server.rpc.errors import Unavailable


class OutageHistory:
    """A history host whose RecordBlockStarted answers UNAVAILABLE (its database is away) to
    the first `failures` calls."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls = 0

    async def record_block_started(
        self, request: hs.RecordBlockStartedRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> hs.RecordBlockStartedResponse:
        self.calls += 1
        if self.calls <= self.failures:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "database not yet accepting")
        return hs.RecordBlockStartedResponse(attempt=request.attempt)

    def handler(self) -> grpc.GenericRpcHandler[Any, Any]:
        method = grpc.unary_unary_rpc_method_handler(
            self.record_block_started,
            request_deserializer=hs.RecordBlockStartedRequest.FromString,
            response_serializer=hs.RecordBlockStartedResponse.SerializeToString,
        )
        service = hs.DESCRIPTOR.services_by_name["HistoryService"].full_name
        return grpc.method_handlers_generic_handler(service, {"RecordBlockStarted": method})


class DownClusterStore:
    """The cluster store of a database that is away for `outage` membership reads."""

    def __init__(self, inner: Any, outage: int) -> None:
        self._inner = inner
        self.outage = outage
        self.failed = 0

    async def list_members(self, *, now_ms: int) -> list[MemberRow]:
        if self.failed < self.outage:
            self.failed += 1
            raise PersistenceUnavailable("the database system is starting up")
        rows: list[MemberRow] = await self._inner.list_members(now_ms=now_ms)
        return rows

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


@contextlib.asynccontextmanager
async def _client(
    persistence: SqlPersistence, history: OutageHistory, *, outage: int, budget_s: float
) -> AsyncIterator[tuple[HistoryClient, DownClusterStore]]:
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((history.handler(),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    store = DownClusterStore(persistence.cluster, outage=0)
    config = MembershipConfig(heartbeat_interval_s=60, ttl_s=60)
    membership = Membership(store, config)  # type: ignore[arg-type]
    await membership.join("history", f"127.0.0.1:{port}")
    store.outage = outage  # the database goes away once the view is read
    channels = ChannelPool()
    try:
        yield HistoryClient(membership, channels, 1, retry_budget_s=budget_s), store
    finally:
        await channels.close()
        await server.stop(None)


def _request() -> hs.RecordBlockStartedRequest:
    request = hs.RecordBlockStartedRequest(namespace_id="ns", scheduled_event_id=5, attempt=2)
    request.run.run_id = "r"
    return request


async def test_a_membership_refresh_during_an_outage_is_retried(
    sqlite_persistence: SqlPersistence,
) -> None:
    history = OutageHistory(failures=1)
    async with _client(sqlite_persistence, history, outage=3, budget_s=10.0) as (client, store):
        answer = await client.record_block_started(_request())

        assert answer.attempt == 2
        assert store.failed == 3  # every refresh while the database was away failed
        assert history.calls == 2


async def test_an_outage_past_the_budget_is_the_rpc_layers_unavailable(
    sqlite_persistence: SqlPersistence,
) -> None:
    history = OutageHistory(failures=1)
    async with _client(sqlite_persistence, history, outage=1_000, budget_s=0.3) as (client, store):
        with pytest.raises(Unavailable) as raised:
            await client.record_block_started(_request())

        assert raised.value.reason == "NO_MEMBERSHIP"
        assert store.failed >= 1


async def test_a_view_older_than_the_first_host_is_read_again_before_refusing(
    sqlite_persistence: SqlPersistence,
) -> None:
    """A process whose view was read before any host of the role joined (a frontend started
    before matching) reads it again once, even for a call with no retry budget (a poll)."""
    history = OutageHistory(failures=0)
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((history.handler(),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    config = MembershipConfig(heartbeat_interval_s=60, ttl_s=60)
    caller = Membership(sqlite_persistence.cluster, config)
    await caller.join("frontend", "127.0.0.1:1")  # its view: no history host yet
    await Membership(sqlite_persistence.cluster, config).join("history", f"127.0.0.1:{port}")
    channels = ChannelPool()
    try:
        client = HistoryClient(caller, channels, 1, retry_budget_s=0.0)
        answer = await client.record_block_started(_request())
    finally:
        await channels.close()
        await server.stop(None)

    assert answer.attempt == 2
    assert [m.role for m in caller.members("history")] == ["history"]
