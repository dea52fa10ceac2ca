"""The three long polls (PollBlockTask, GetRunHistory with wait_new_event, StartRun with
wait_for_close) wait as long as their own server settings say: here 1 s and 2 s, where the
defaults and the other tests' settings are 5 s or more, so an answer within a few seconds is the
setting's doing. Each call has a generous deadline of its own."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Awaitable
from typing import Any, TypeVar

import pytest

from deploy.local.cluster import TEST_SETTINGS
from tests.support.cluster import running_sqlite_cluster
from tests.support.flows import Client, two_step_blueprint
from tideflow.api.v1 import flow_service_pb2, history_pb2

T = TypeVar("T")
POLL_S = 1.0
"""PollBlockTask's and GetRunHistory's."""
WAIT_FOR_CLOSE_S = 2.0
"""StartRun's, different from GetRunHistory's to show it is a setting of its own."""
SETTINGS: dict[str, Any] = {
    **TEST_SETTINGS,
    "history": {
        **TEST_SETTINGS["history"],
        "long_poll_timeout_s": POLL_S,
        "wait_for_close_timeout_s": WAIT_FOR_CLOSE_S,
    },
    "matching": {**TEST_SETTINGS["matching"], "long_poll_timeout_s": POLL_S},
}
CALL_DEADLINE_S = 30.0


@pytest.fixture(scope="module")
async def short_polls(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Client]:
    root = tmp_path_factory.mktemp("short-polls")
    async with running_sqlite_cluster(root, settings=SETTINGS) as cluster:
        client = Client(cluster.frontend)
        try:
            await client.ensure_namespace()
            yield client
        finally:
            await client.close()


async def timed(call: Awaitable[T]) -> tuple[T, float]:
    began = time.monotonic()
    result = await call
    return result, time.monotonic() - began


def assert_waited(setting_s: float, elapsed: float) -> None:
    assert setting_s * 0.9 <= elapsed < setting_s + 2


async def _idle_flow(client: Client) -> str:
    """A flow whose runs wait on their first block: nobody polls its queue."""
    queue, flow = f"idle-{uuid.uuid4().hex[:8]}", f"idle_{uuid.uuid4().hex[:8]}"
    await client.register(two_step_blueprint(flow, queue))
    return flow


async def test_poll_block_task_answers_empty_after_the_setting(short_polls: Client) -> None:
    request = flow_service_pb2.PollBlockTaskRequest(
        namespace=short_polls.namespace, identity="test"
    )
    request.task_queue.name = f"empty-{uuid.uuid4().hex[:8]}"
    reply, elapsed = await timed(short_polls.stub.PollBlockTask(request, timeout=CALL_DEADLINE_S))
    assert not reply.task_token
    assert_waited(POLL_S, elapsed)


async def test_history_follow_answers_without_events_after_the_setting(
    short_polls: Client,
) -> None:
    run_id, _ = await short_polls.start(await _idle_flow(short_polls), 1)
    request = flow_service_pb2.GetRunHistoryRequest(
        namespace=short_polls.namespace, wait_new_event=True
    )
    request.run.run_id = run_id
    # Answered at once (started, block scheduled), with the position to follow from; nothing
    # more will come.
    first = await short_polls.stub.GetRunHistory(request, timeout=CALL_DEADLINE_S)
    assert first.history.events
    request.next_page_token = first.next_page_token
    reply, elapsed = await timed(short_polls.stub.GetRunHistory(request, timeout=CALL_DEADLINE_S))
    assert not reply.history.events
    assert reply.next_page_token == first.next_page_token  # wait on from the same place
    assert_waited(POLL_S, elapsed)


async def test_start_and_wait_answers_without_the_close_after_the_setting(
    short_polls: Client,
) -> None:
    flow = await _idle_flow(short_polls)
    (_, reply), elapsed = await timed(short_polls.start(flow, 1, wait_for_close=True))
    assert reply.started and reply.execution_id
    assert not reply.HasField("close_event")
    assert reply.close_event.event_type == history_pb2.EVENT_TYPE_UNSPECIFIED
    assert_waited(WAIT_FOR_CLOSE_S, elapsed)
