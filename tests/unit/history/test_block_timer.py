"""Block timeouts keep one timer row per run, armed for its earliest deadline: a shard on a
real SQLite store, with the blocks driven as a worker would (direct and eager dispatch)."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import json_format

from tests.unit.history.test_unknown_outcome import RecordingMatching, _shard, _started_by
from tideflow.api.v1 import (
    blueprint_pb2,
    common_pb2,
    flow_pb2,
    flow_service_pb2,
    history_pb2,
)
from tideflow_server.config import HistoryConfig
from tideflow_server.history import blocks
from tideflow_server.history.api import (
    get_run_history,
    record_block_heartbeat,
    record_block_started,
    respond_block_completed,
    start_run,
)
from tideflow_server.history.shard.context import ShardContext
from tideflow_server.history.shard.direct import DirectDispatch
from tideflow_server.internal.v1 import history_service_pb2, records_pb2
from tideflow_server.persistence import schema
from tideflow_server.persistence.manager import PersistenceManager
from tideflow_server.persistence.sqlite import open_sqlite
from tideflow_server.rpc.errors import FailedPrecondition
from tideflow_server.tokens import parse_token

NEVER_MS = 2**62


class Harness:
    def __init__(self, shard: ShardContext, matching: RecordingMatching, namespace_id: str):
        self.shard = shard
        self.matching = matching
        self.namespace_id = namespace_id

    async def register(self, name: str, blocks: list[dict[str, Any]]) -> None:
        blueprint = json_format.ParseDict(
            {"name": name, "version": 1, "task_queue": "cpu", "blocks": blocks},
            blueprint_pb2.Blueprint(),
        )
        await self.shard.manager.create_flow(
            self.namespace_id, flow_pb2.FlowDefinition(name=name, version=1, blueprint=blueprint)
        )

    async def start(self, flow: str) -> tuple[str, bytes]:
        """Start a run; the task token of its first block (handed over by direct dispatch)."""
        run_id = f"run-{uuid.uuid4().hex[:8]}"
        request = flow_service_pb2.StartRunRequest(run_id=run_id, request_id=run_id)
        request.flow.name = flow
        await start_run.invoke(
            self.shard,
            history_service_pb2.StartRunRequest(namespace_id=self.namespace_id, request=request),
        )
        added = await asyncio.wait_for(self.matching.added.get(), 10)
        assert added.HasField("direct_task")
        return run_id, added.direct_task.task_token

    async def complete(self, token: bytes) -> bytes | None:
        """Complete a block, offering a slot: the token of the next block, if one came."""
        given = flow_service_pb2.RespondBlockCompletedRequest(task_token=token, eager_slots=1)
        answer = await respond_block_completed.invoke(
            self.shard,
            history_service_pb2.RespondBlockCompletedRequest(
                namespace_id=self.namespace_id, request=given
            ),
        )
        tasks = answer.response.next_tasks
        return tasks[0].task_token if tasks else None

    async def heartbeat(self, token: bytes) -> None:
        given = flow_service_pb2.RecordBlockHeartbeatRequest(task_token=token)
        await record_block_heartbeat.invoke(
            self.shard,
            history_service_pb2.RecordBlockHeartbeatRequest(
                namespace_id=self.namespace_id, request=given
            ),
        )

    async def block_timers(self, run_id: str) -> list[records_pb2.TimerTask]:
        timers = await self.shard.manager.get_timer_tasks(
            self.shard.shard_id, after=(0, 0), fire_before_ms=NEVER_MS, limit=1000
        )
        return [t for t in timers if t.run_id == run_id and t.WhichOneof("task") != "block_retry"]

    async def timed_out(self, run_id: str) -> common_pb2.TimeoutType.ValueType:
        """The timeout type of the run's BLOCK_TIMED_OUT event."""
        request = history_service_pb2.GetRunHistoryRequest(namespace_id=self.namespace_id)
        request.request.run.run_id = run_id
        request.request.page_size = 1000
        answer = await get_run_history.invoke(self.shard, request)
        [event] = [
            e
            for e in answer.response.history.events
            if e.event_type == history_pb2.EVENT_TYPE_BLOCK_TIMED_OUT
        ]
        failure = event.block_timed_out_event_attributes.failure
        return failure.timeout_failure_info.timeout_type

    async def closing_event(self, run_id: str) -> history_pb2.HistoryEvent:
        run = common_pb2.RunRef(run_id=run_id)
        closed = await get_run_history.closing_event(
            self.shard, self.namespace_id, run, timeout_s=20
        )
        assert closed is not None, "the run did not close"
        return closed


@contextlib.asynccontextmanager
async def _harness(
    tmp_path: Path, matching: RecordingMatching, config: HistoryConfig | None = None
) -> AsyncIterator[Harness]:
    opened = await open_sqlite(tmp_path / "t.db")
    await schema.setup_schema(opened.db)
    manager = PersistenceManager(opened)
    namespace = records_pb2.NamespaceRecord()
    namespace.info.id, namespace.info.name = str(uuid.uuid4()), "docs"
    await manager.create_namespace(namespace)
    shard = await _shard(manager, matching, DirectDispatch(), config)
    try:
        yield Harness(shard, matching, namespace.info.id)
    finally:
        await shard.stop()
        await opened.close()


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[Harness]:
    async with _harness(tmp_path, RecordingMatching()) as made:
        yield made


REDISPATCH_S = 0.3


@pytest.fixture
async def no_poll(tmp_path: Path) -> AsyncIterator[Harness]:
    """Matching persists every task (no poll waits), and history resends a task no poll has
    started after REDISPATCH_S."""
    config = HistoryConfig(redispatch_after_s=REDISPATCH_S, redispatch_max_interval_s=30)
    async with _harness(tmp_path, RecordingMatching(matched=False), config) as made:
        yield made


def _block(block_id: str, needs: list[str], **timeouts: str) -> dict[str, Any]:
    return {
        "id": block_id,
        "needs": needs,
        "external": {
            "block": "step@1",
            "timeouts": timeouts,
            "retry": {"maximum_attempts": 1},
        },
    }


async def test_sequential_blocks_arm_one_timer_row_for_the_run(harness: Harness) -> None:
    """Each block starts after the last one closed, so its start-to-close deadline comes
    later than the one already armed: three blocks, one row."""
    await harness.register(
        "seq",
        [
            _block("a", [], start_to_close="30s"),
            _block("b", ["a"], start_to_close="30s"),
            _block("c", ["b"], start_to_close="30s"),
        ],
    )
    run_id, token = await harness.start("seq")
    [armed] = await harness.block_timers(run_id)
    assert armed.WhichOneof("task") == "block_timeouts"

    for _ in range(2):
        next_token = await harness.complete(token)
        assert next_token is not None
        token = next_token
    assert await harness.complete(token) is None
    closed = await harness.closing_event(run_id)
    assert closed.event_type == history_pb2.EVENT_TYPE_RUN_COMPLETED
    assert await harness.block_timers(run_id) == [armed]


async def test_an_earlier_deadline_arms_an_earlier_row_that_times_the_block_out(
    harness: Harness,
) -> None:
    await harness.register(
        "short-then",
        [_block("a", [], start_to_close="30s"), _block("b", ["a"], start_to_close="0.5s")],
    )
    run_id, token = await harness.start("short-then")
    [first] = await harness.block_timers(run_id)
    assert await harness.complete(token) is not None  # b starts, and never completes
    later, earlier = sorted(
        await harness.block_timers(run_id), key=lambda t: -t.fire_time.ToMilliseconds()
    )
    assert later == first and earlier.WhichOneof("task") == "block_timeouts"
    assert earlier.fire_time.ToMilliseconds() < first.fire_time.ToMilliseconds() - 25_000

    closed = await harness.closing_event(run_id)

    assert closed.event_type == history_pb2.EVENT_TYPE_RUN_FAILED
    assert await harness.timed_out(run_id) == common_pb2.TIMEOUT_TYPE_START_TO_CLOSE


async def test_heartbeats_move_the_deadline_until_they_stop(harness: Harness) -> None:
    """The row armed for the heartbeat deadline finds a later heartbeat and arms the next
    one; when heartbeats stop, the block times out on its heartbeat."""
    await harness.register("beats", [_block("a", [], start_to_close="30s", heartbeat="0.6s")])
    run_id, token = await harness.start("beats")
    for _ in range(8):  # 1.6 s of heartbeats, well past the first heartbeat deadline
        await asyncio.sleep(0.2)
        await harness.heartbeat(token)
    execution_id = parse_token(token).execution_id
    async with harness.shard.locked(harness.namespace_id, run_id, execution_id) as entry:
        info = entry.state.execution_info
        assert info.status == common_pb2.RUN_STATUS_RUNNING
        # Armed for the last heartbeat's deadline, long after the first one's.
        assert (
            info.block_timer.fire_time.ToMilliseconds() > info.start_time.ToMilliseconds() + 1_500
        )

    closed = await harness.closing_event(run_id)

    assert closed.event_type == history_pb2.EVENT_TYPE_RUN_FAILED
    assert await harness.timed_out(run_id) == common_pb2.TIMEOUT_TYPE_HEARTBEAT


async def test_a_task_no_poll_starts_is_sent_again_until_one_does(no_poll: Harness) -> None:
    """A task lost after matching took it (issue 17: dropped on a database restart) must not
    strand the run: the block timer sends the same attempt again, and stops once it starts."""
    await no_poll.register("lost", [_block("a", [], start_to_close="30s")])
    run_id, _ = await no_poll.start("lost")  # no poll waited: the direct start is undone
    sent = time.monotonic()

    again = await asyncio.wait_for(no_poll.matching.added.get(), 10)
    assert time.monotonic() - sent >= REDISPATCH_S - 0.05
    assert not again.HasField("direct_task")
    assert (again.run.run_id, again.attempt) == (run_id, 1)
    third = await asyncio.wait_for(no_poll.matching.added.get(), 10)
    assert (third.scheduled_event_id, third.attempt) == (again.scheduled_event_id, 1)

    # A poll takes one of the copies: no more are sent, and the others are refused as stale.
    await record_block_started.invoke(
        no_poll.shard, _started_by(again, no_poll.namespace_id, "poll-1")
    )

    async def armed_for_start_to_close() -> None:
        while True:
            async with no_poll.shard.locked(
                no_poll.namespace_id, run_id, again.run.execution_id
            ) as entry:
                fire_ms = entry.state.execution_info.block_timer.fire_time.ToMilliseconds()
            if fire_ms > time.time() * 1000 + 20_000:
                return
            await asyncio.sleep(0.05)

    # The row armed for the next resend fires as a no-op and arms the start-to-close.
    await asyncio.wait_for(armed_for_start_to_close(), 10)
    with contextlib.suppress(asyncio.QueueEmpty):
        no_poll.matching.added.get_nowait()  # one resend may have crossed the start
    assert no_poll.matching.added.empty()
    with pytest.raises(FailedPrecondition):
        await record_block_started.invoke(
            no_poll.shard, _started_by(third, no_poll.namespace_id, "poll-2")
        )


def test_the_wait_between_resends_doubles_up_to_its_bound() -> None:
    policy = blocks.Redispatch(after=timedelta(seconds=60), max_interval=timedelta(seconds=300))
    pending = records_pb2.PendingBlock()
    ready = datetime(2026, 1, 1, tzinfo=UTC)
    pending.current_attempt_scheduled_time.FromDatetime(ready)

    resends = []
    for _ in range(6):
        due = blocks.redispatch_due(pending, policy)
        assert due is not None
        resends.append(int((due - ready).total_seconds()))
        pending.redispatched_time.FromDatetime(due)

    assert resends == [60, 120, 240, 480, 780, 1080]
    pending.started_time.FromDatetime(ready)
    assert blocks.redispatch_due(pending, policy) is None
