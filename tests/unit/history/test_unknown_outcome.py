"""A commit whose outcome is unknown (the database took the write, then the connection
failed) still gets its outbox delivered: the run does not stall on a lost block task. And a
write that lands only after its caller heard it fail is seen by the next read of its run."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from google.protobuf import json_format

from tideflow.api.v1 import blueprint_pb2, common_pb2, flow_pb2, flow_service_pb2
from tideflow_server.config import FaultsConfig, HistoryConfig
from tideflow_server.history.api import (
    cancel_run,
    record_block_started,
    respond_block_failed,
    start_run,
)
from tideflow_server.history.flows import FlowCache
from tideflow_server.history.shard.context import ShardContext
from tideflow_server.history.shard.direct import DirectDispatch
from tideflow_server.history.tasks import timer, transfer
from tideflow_server.internal.v1 import history_service_pb2, matching_service_pb2, records_pb2
from tideflow_server.namespaces import NamespaceCache
from tideflow_server.persistence import Persistence, Unavailable, faults, schema
from tideflow_server.persistence.manager import PersistenceManager
from tideflow_server.persistence.records import CreateExecution
from tideflow_server.persistence.sql import SqlDatabase, SqlPersistence
from tideflow_server.persistence.sql._execution import SqlExecutionStore
from tideflow_server.persistence.sqlite import open_sqlite
from tideflow_server.rpc.errors import FailedPrecondition, NotFound
from tideflow_server.rpc.errors import Unavailable as ServiceUnavailable
from tideflow_server.tokens import block_task_response


class LandsThenFails(SqlExecutionStore):
    """Fault injection around the real store: the create commits, then the call fails."""

    async def create_execution(self, request: CreateExecution) -> None:
        await super().create_execution(request)
        raise Unavailable("connection lost after the commit")


class RecordingMatching:
    """Records every add; answers that a poll took it (`matched`), after failing the first
    `failures` adds as a lost connection would."""

    def __init__(self, *, matched: bool = True, failures: int = 0) -> None:
        self.added: asyncio.Queue[matching_service_pb2.AddBlockTaskRequest] = asyncio.Queue()
        self.matched = matched
        self.failures = failures

    async def add_block_task(
        self, request: matching_service_pb2.AddBlockTaskRequest
    ) -> matching_service_pb2.AddBlockTaskResponse:
        copy = matching_service_pb2.AddBlockTaskRequest()
        copy.CopyFrom(request)
        await self.added.put(copy)
        if self.failures > 0:
            self.failures -= 1
            raise ServiceUnavailable("connection reset")
        return matching_service_pb2.AddBlockTaskResponse(sync_matched=self.matched)


async def _flow_and_namespace(
    persistence: Persistence, retry: dict[str, str] | None = None
) -> tuple[PersistenceManager, str]:
    manager = PersistenceManager(persistence)
    namespace = records_pb2.NamespaceRecord()
    namespace.info.id, namespace.info.name = str(uuid.uuid4()), "docs"
    await manager.create_namespace(namespace)
    blueprint = json_format.ParseDict(
        {
            "name": "one",
            "version": 1,
            "task_queue": "cpu",
            "blocks": [{"id": "a", "external": {"block": "a@1"}}],
            "timeouts": {"start_to_close": "5s"},
            **({"retry": retry} if retry else {}),
        },
        blueprint_pb2.Blueprint(),
    )
    await manager.create_flow(
        namespace.info.id, flow_pb2.FlowDefinition(name="one", version=1, blueprint=blueprint)
    )
    return manager, namespace.info.id


async def _shard(
    manager: PersistenceManager,
    matching: RecordingMatching,
    direct: DirectDispatch | None = None,
    config: HistoryConfig | None = None,
) -> ShardContext:
    shard = ShardContext(
        lease=await manager.acquire_shard(1, owner="test"),
        manager=manager,
        config=config or HistoryConfig(),
        flows=FlowCache(manager),
        namespaces=NamespaceCache(manager),
        matching=matching,  # type: ignore[arg-type]
        history=None,  # type: ignore[arg-type]  # no child runs here
        on_lost=lambda _: None,
        timer_executor=timer.fire,
        transfer_executor=transfer.execute,
        direct=direct,
    )
    await shard.start()
    return shard


async def _start_run(shard: ShardContext, namespace_id: str, run_id: str) -> None:
    request = flow_service_pb2.StartRunRequest(run_id=run_id, request_id=f"r-{run_id}")
    request.flow.name = "one"
    await start_run.invoke(
        shard, history_service_pb2.StartRunRequest(namespace_id=namespace_id, request=request)
    )


@pytest.fixture
async def faulty(tmp_path: Path) -> AsyncIterator[SqlPersistence]:
    opened = await open_sqlite(tmp_path / "t.db")
    await schema.setup_schema(opened.db)
    opened.executions = LandsThenFails(opened.db)
    try:
        yield opened
    finally:
        await opened.close()


async def _start_landing_unknown(
    shard: ShardContext, matching: RecordingMatching, namespace_id: str, run_id: str
) -> matching_service_pb2.AddBlockTaskRequest:
    """Start a run whose create lands but fails; the block task history sends for it."""
    request = flow_service_pb2.StartRunRequest(run_id=run_id, request_id=f"r-{run_id}")
    request.flow.name = "one"
    with pytest.raises(ServiceUnavailable):
        await start_run.invoke(
            shard,
            history_service_pb2.StartRunRequest(namespace_id=namespace_id, request=request),
        )
    return await asyncio.wait_for(matching.added.get(), 10)


def _started_by(
    added: matching_service_pb2.AddBlockTaskRequest, namespace_id: str, poll: str
) -> history_service_pb2.RecordBlockStartedRequest:
    return history_service_pb2.RecordBlockStartedRequest(
        namespace_id=namespace_id,
        run=added.run,
        scheduled_event_id=added.scheduled_event_id,
        attempt=added.attempt,
        request_id=poll,
        identity=f"worker-{poll}",
        task_queue=added.task_queue,
    )


async def test_a_landed_direct_start_is_taken_over_by_the_first_poll(
    faulty: SqlPersistence,
) -> None:
    """With direct dispatch the create also started the block. Its outcome unknown, the task
    goes to matching as an ordinary one (no worker's task with it), and the poll that takes it
    starts the attempt through RecordBlockStarted; a second poll is refused as usual."""
    manager, namespace_id = await _flow_and_namespace(faulty)
    matching = RecordingMatching()
    shard = await _shard(manager, matching, DirectDispatch())
    try:
        added = await _start_landing_unknown(shard, matching, namespace_id, "doc-3")
        assert not added.HasField("direct_task")
        async with shard.locked(namespace_id, "doc-3", added.run.execution_id) as entry:
            pending = entry.state.pending_blocks[added.scheduled_event_id]
            assert pending.direct and pending.HasField("started_time")

        await record_block_started.invoke(shard, _started_by(added, namespace_id, "poll-1"))
        async with shard.locked(namespace_id, "doc-3", added.run.execution_id) as entry:
            pending = entry.state.pending_blocks[added.scheduled_event_id]
            assert not pending.direct
            assert (pending.request_id, pending.started_identity) == ("poll-1", "worker-poll-1")
        with pytest.raises(FailedPrecondition):
            await record_block_started.invoke(shard, _started_by(added, namespace_id, "poll-2"))
    finally:
        await shard.stop()


async def test_block_task_of_a_landed_but_failed_commit_is_delivered(
    faulty: SqlPersistence,
) -> None:
    manager, namespace_id = await _flow_and_namespace(faulty)
    matching = RecordingMatching()
    shard = await _shard(manager, matching)
    try:
        added = await _start_landing_unknown(shard, matching, namespace_id, "doc-1")
        assert (added.run.run_id, added.block_id) == ("doc-1", "a")
    finally:
        await shard.stop()


class LandsThenStalls(SqlExecutionStore):
    """The create commits, then the call hangs until released (a slow network reply)."""

    def __init__(self, db: SqlDatabase) -> None:
        super().__init__(db)
        self.release = asyncio.Event()
        self.landed = asyncio.Event()

    async def create_execution(self, request: CreateExecution) -> None:
        await super().create_execution(request)
        self.landed.set()
        await self.release.wait()


async def test_a_caller_cancelled_mid_commit_still_gets_its_outbox_queued(
    tmp_path: Path,
) -> None:
    """A gRPC client that goes away cancels the handler; the commit it started must still
    queue its tasks (here: the run's first block task)."""
    opened = await open_sqlite(tmp_path / "t.db")
    await schema.setup_schema(opened.db)
    store = LandsThenStalls(opened.db)
    opened.executions = store
    try:
        manager, namespace_id = await _flow_and_namespace(opened)
        matching = RecordingMatching()
        shard = await _shard(manager, matching)
        try:
            request = flow_service_pb2.StartRunRequest(run_id="doc-2", request_id="r2")
            request.flow.name = "one"
            call = asyncio.create_task(
                start_run.invoke(
                    shard,
                    history_service_pb2.StartRunRequest(namespace_id=namespace_id, request=request),
                )
            )
            await store.landed.wait()
            call.cancel()  # the client went away while the commit was in flight
            await asyncio.gather(call, return_exceptions=True)
            store.release.set()
            added = await asyncio.wait_for(matching.added.get(), 10)
            assert (added.run.run_id, added.block_id) == ("doc-2", "a")
        finally:
            await shard.stop()
    finally:
        await opened.close()


async def _pending(
    shard: ShardContext, namespace_id: str, added: matching_service_pb2.AddBlockTaskRequest
) -> records_pb2.PendingBlock:
    async with shard.locked(namespace_id, added.run.run_id, added.run.execution_id) as entry:
        pending = records_pb2.PendingBlock()
        pending.CopyFrom(entry.state.pending_blocks[added.scheduled_event_id])
        return pending


async def test_a_retried_direct_add_goes_as_an_ordinary_task_and_is_undone_if_persisted(
    sqlite_persistence: SqlPersistence,
) -> None:
    """The first add, with the worker's task, fails (it may have reached matching all the
    same): the retry carries no worker's task, so a poll can only start the attempt through
    RecordBlockStarted; matching persisting it, history undoes the direct start."""
    manager, namespace_id = await _flow_and_namespace(sqlite_persistence)
    matching = RecordingMatching(matched=False, failures=1)
    shard = await _shard(manager, matching, DirectDispatch())
    try:
        await _start_run(shard, namespace_id, "doc-4")
        first = await asyncio.wait_for(matching.added.get(), 10)
        retry = await asyncio.wait_for(matching.added.get(), 10)
        assert first.HasField("direct_task") and not retry.HasField("direct_task")
        async with asyncio.timeout(10):
            while (await _pending(shard, namespace_id, retry)).direct:  # noqa: ASYNC110
                await asyncio.sleep(0.01)  # the undo commits after the add's answer
        pending = await _pending(shard, namespace_id, retry)
        assert not pending.HasField("started_time") and not pending.request_id
    finally:
        await shard.stop()


async def test_a_poll_for_a_direct_start_of_a_canceled_run_cancels_the_block(
    faulty: SqlPersistence,
) -> None:
    """The direct start landed but its outcome was unknown, so no worker got the block; the
    run is canceled, which waits for a started block's worker. The poll that then takes the
    task is refused, and the block is canceled there, so the run closes."""
    manager, namespace_id = await _flow_and_namespace(faulty)
    matching = RecordingMatching()
    shard = await _shard(manager, matching, DirectDispatch())
    try:
        added = await _start_landing_unknown(shard, matching, namespace_id, "doc-5")
        cancel = flow_service_pb2.CancelRunRequest(reason="test")
        cancel.run.run_id = "doc-5"
        await cancel_run.invoke(
            shard, history_service_pb2.CancelRunRequest(namespace_id=namespace_id, request=cancel)
        )
        assert (await _pending(shard, namespace_id, added)).cancel_requested

        with pytest.raises(NotFound):
            await record_block_started.invoke(shard, _started_by(added, namespace_id, "poll-1"))
        async with shard.locked(namespace_id, "doc-5", added.run.execution_id) as entry:
            assert entry.state.execution_info.status == common_pb2.RUN_STATUS_CANCELED
    finally:
        await shard.stop()


async def test_a_read_after_an_unknown_outcome_sees_the_write_that_landed_late(
    sqlite_persistence: SqlPersistence,
) -> None:
    """On Cassandra a lightweight transaction whose reply was lost can stay accepted but
    uncommitted, unseen by reads until the next Paxos round on the shard's partition. Here the
    commit that fails attempt 1 and schedules its retry is left so (the fault holds it until
    the next fence or write of the shard). The next read of the run settles the shard first,
    so it sees attempt 2, and the retry's timer dispatches it. Read before the write landed,
    the timer would have found attempt 1, stale, and dropped the retry for good (but for
    history's re-dispatch, a minute later)."""
    held = faults.inject(sqlite_persistence, FaultsConfig(hold_retry_commit_run_ids=("doc-",)))
    manager, namespace_id = await _flow_and_namespace(held, {"initial_interval": "0.1s"})
    matching = RecordingMatching()
    shard = await _shard(manager, matching)
    try:
        await _start_run(shard, namespace_id, "doc-6")
        added = await asyncio.wait_for(matching.added.get(), 10)
        started = await record_block_started.invoke(
            shard, _started_by(added, namespace_id, "poll-1")
        )
        task = block_task_response(
            namespace_id=namespace_id,
            run=added.run,
            scheduled_event_id=added.scheduled_event_id,
            started=started,
        )
        failed = flow_service_pb2.RespondBlockFailedRequest(task_token=task.task_token)
        failed.failure.message = "boom"
        failed.failure.application_failure_info.type = "Boom"
        with pytest.raises(ServiceUnavailable):
            await respond_block_failed.invoke(
                shard,
                history_service_pb2.RespondBlockFailedRequest(
                    namespace_id=namespace_id, request=failed
                ),
            )
        pending = await _pending(shard, namespace_id, added)
        assert (pending.attempt, pending.HasField("started_time")) == (2, False)
        retry = await asyncio.wait_for(matching.added.get(), 10)
        assert (retry.run.run_id, retry.attempt) == ("doc-6", 2)
    finally:
        await shard.stop()
