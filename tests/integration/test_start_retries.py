"""StartRun's `started` when the frontend's call to history is retried after a start that
committed but whose reply was lost (issue 17, item 10). The fault is injected in the
persistence decorator layer (`persistence.faults`), so the lost reply happens on every start
of a `lost-reply-` run, exactly after its commit."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest

from tests.support.cluster import running_sqlite_cluster
from tests.support.flows import Client, two_step_blueprint

LOST = "lost-reply-"


@pytest.fixture(scope="module")
async def lossy(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Client]:
    root = tmp_path_factory.mktemp("lost-start-replies")
    faults = {"faults": {"lose_create_reply_run_ids": [LOST]}}
    async with running_sqlite_cluster(root, persistence=faults) as cluster:
        client = Client(cluster.frontend)
        try:
            await client.ensure_namespace()
            yield client
        finally:
            await client.close()


async def _idle_flow(client: Client) -> str:
    """A flow whose runs wait on their first block: nobody polls its queue."""
    flow = f"idle_{uuid.uuid4().hex[:8]}"
    await client.register(two_step_blueprint(flow, f"idle-{uuid.uuid4().hex[:8]}"))
    return flow


async def test_a_start_whose_reply_was_lost_answers_started(lossy: Client) -> None:
    flow = await _idle_flow(lossy)
    run_id, started = await lossy.start(flow, {"n": 1}, run_id=f"{LOST}{uuid.uuid4().hex[:8]}")
    assert started.started
    described = await lossy.describe(run_id)
    assert described.run_info.run.execution_id == started.execution_id


async def test_a_lost_reply_with_the_callers_request_id_answers_started_once(
    lossy: Client,
) -> None:
    flow = await _idle_flow(lossy)
    run_id, request_id = f"{LOST}{uuid.uuid4().hex[:8]}", str(uuid.uuid4())
    _, first = await lossy.start(flow, {"n": 1}, run_id=run_id, request_id=request_id)
    # The caller's own retry is a duplicate: its only attempt finds the run started.
    _, again = await lossy.start(flow, {"n": 1}, run_id=run_id, request_id=request_id)
    assert (first.started, again.started) == (True, False)
    assert again.execution_id == first.execution_id
    described = await lossy.describe(run_id)
    assert described.run_info.run.execution_id == first.execution_id
