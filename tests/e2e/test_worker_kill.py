"""A worker killed mid-block loses nothing: once the attempt's heartbeat or start-to-close
timeout passes, the block is retried on another worker and the run completes."""

from __future__ import annotations

import asyncio
import sys
import uuid
from typing import Any

import pytest

from tests.support.cluster import Cluster
from tideflow import Client, Worker, block
from tideflow.worker import context

REPO = __file__.rsplit("/tests/", 1)[0]


@pytest.mark.parametrize("cluster", ["sqlite"], indirect=True)
@pytest.mark.parametrize(
    ("timeouts", "mode", "expected"),
    [
        ({"start_to_close": "30s", "heartbeat": "1s"}, "heartbeat", "TIMEOUT_TYPE_HEARTBEAT"),
        ({"start_to_close": "2s"}, "silent", "TIMEOUT_TYPE_START_TO_CLOSE"),
    ],
)
async def test_block_of_a_killed_worker_is_retried_elsewhere(
    cluster: Cluster, timeouts: dict[str, str], mode: str, expected: str
) -> None:
    namespace = f"kill-{uuid.uuid4().hex[:6]}"
    queue = f"q-{uuid.uuid4().hex[:6]}"
    async with await Client.connect(cluster.frontend, namespace=namespace) as client:
        await client.register_namespace(namespace)
        await client.register_flow(
            {
                "name": "killable",
                "version": 1,
                "task_queue": queue,
                "blocks": [
                    {
                        "id": "work",
                        "external": {
                            "block": "work@1",
                            "timeouts": timeouts,
                            "retry": {"initial_interval": "0.1s"},
                        },
                        "input": "${input}",
                    }
                ],
                "output": "${blocks.work.output}",
            }
        )
        doomed = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tests.support.worker_process",
            cluster.frontend,
            namespace,
            queue,
            "worker-a",
            mode,
            cwd=REPO,
            stdout=asyncio.subprocess.PIPE,
        )
        try:
            run = await client.start_run("killable", {"doc": 1})
            assert doomed.stdout is not None
            line = await asyncio.wait_for(doomed.stdout.readline(), 30)
            assert line.decode().split() == ["started", run.run_id, "1"]
        finally:
            doomed.kill()  # SIGKILL, mid-block
            await doomed.wait()

        @block("work", version=1)
        async def work(value: Any) -> Any:
            return {"done": value, "attempt": context().info.attempt}

        async with Worker(
            cluster.frontend,
            task_queue=queue,
            blocks=[work],
            namespace=namespace,
            identity="worker-b",
        ):
            result = await run.result(timeout=60)

        assert result == {"done": {"doc": 1}, "attempt": 2}
        started = [
            e
            async for e in run.history()
            if e.WhichOneof("attributes") == "block_started_event_attributes"
        ]
        attrs = started[0].block_started_event_attributes
        assert (attrs.attempt, attrs.identity) == (2, "worker-b")
        from tideflow.api.v1 import common_pb2  # noqa: PLC0415

        timeout_type = attrs.last_failure.timeout_failure_info.timeout_type
        assert common_pb2.TimeoutType.Name(timeout_type) == expected
