"""The model worker (workers/ml_model) as a real process against a real cluster: under load
its tasks form batches across runs (mean batch size > 1), every run gets the prediction for
its own input (as direct ONNX Runtime inference on that input gives it), a bad input fails
only its own run, and SIGTERM drains it to exit 0 with its stats written."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime
import pytest
from sklearn.datasets import load_digits

from tests.support.cluster import Cluster
from tests.support.flows import Client, value
from tideflow.api.v1 import common_pb2, flow_service_pb2, history_pb2
from workers.ml_model.build import build

REPO = __file__.rsplit("/tests/", 1)[0]
RUNS = 64
MAX_BATCH = 16
MODEL = "digits"


def _flow(flow: str, queue: str) -> dict[str, Any]:
    # affinity_key = the model's name: matching sends the task to the worker that advertises
    # that model warm (workers/ml_model/README.md).
    return {
        "name": flow,
        "version": 1,
        "task_queue": queue,
        "blocks": [
            {
                "id": "predict",
                "external": {
                    "block": "model.predict@1",
                    "affinity_key": "${input.model}",
                    "timeouts": {"start_to_close": "30s"},
                },
                "input": "${input}",
            }
        ],
        "output": "${blocks.predict.output}",
    }


@dataclass
class _Worker:
    process: asyncio.subprocess.Process
    identity: str
    stats_file: Path

    async def stop(self) -> dict[str, Any]:
        """SIGTERM; the exit status must be 0; the stats it wrote."""
        self.process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(self.process.wait(), 60) == 0
        stats: dict[str, Any] = json.loads(self.stats_file.read_text())
        return stats


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build(tmp_path_factory.mktemp("model") / f"{MODEL}.onnx")


async def _polling(client: Client, queue: str, identity: str) -> None:
    """Until matching holds the worker's polls on the queue and on its sticky queue."""
    async with asyncio.timeout(60):
        sticky = ""
        while not sticky:
            request = flow_service_pb2.DescribeTaskQueueRequest(namespace=client.namespace)
            request.task_queue.name = queue
            described = await client.stub.DescribeTaskQueue(request, timeout=10)
            found = [p for p in described.pollers if p.identity == identity]
            if found:
                sticky = found[0].sticky_task_queue
            else:
                await asyncio.sleep(0.05)
        while True:
            request = flow_service_pb2.DescribeTaskQueueRequest(namespace=client.namespace)
            request.task_queue.name = sticky
            request.task_queue.kind = common_pb2.TASK_QUEUE_KIND_STICKY
            if (await client.stub.DescribeTaskQueue(request, timeout=10)).pollers:
                return
            await asyncio.sleep(0.05)


@pytest.fixture
async def worker(
    cluster: Cluster, client: Client, model_path: Path, tmp_path: Path
) -> AsyncIterator[tuple[str, _Worker]]:
    queue = f"ml-{uuid.uuid4().hex[:8]}"
    identity = f"model-worker-{uuid.uuid4().hex[:6]}"
    stats_file = tmp_path / "stats.json"
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "workers.ml_model",
        "--address", cluster.frontend,
        "--namespace", client.namespace,
        "--task-queue", queue,
        "--identity", identity,
        "--model", str(model_path),
        "--max-batch", str(MAX_BATCH),
        "--max-wait-ms", "20",
        "--provider", "cpu",
        "--stats-file", str(stats_file),
        cwd=REPO,
        env={**os.environ},
    )  # fmt: skip
    running = _Worker(process, identity, stats_file)
    try:
        await _polling(client, queue, identity)
        yield queue, running
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


@pytest.mark.parametrize("cluster", ["sqlite", "postgres"], indirect=True)
async def test_runs_batch_together_and_each_gets_its_own_prediction(
    client: Client, worker: tuple[str, _Worker], model_path: Path
) -> None:
    queue, running = worker
    flow = f"predict_{uuid.uuid4().hex[:8]}"
    await client.register(_flow(flow, queue))
    rows = load_digits().data[:RUNS].astype(np.float32)
    bad_run = "bad-input"

    async def one(run_id: str, features: list[float]) -> history_pb2.HistoryEvent:
        await client.start(flow, {"model": MODEL, "features": features}, run_id=run_id)
        return await client.close_event(run_id, timeout_s=120)

    runs = {f"digit-{i}": row.tolist() for i, row in enumerate(rows)}
    closed = await asyncio.gather(
        *(one(run_id, features) for run_id, features in runs.items()),
        one(bad_run, [1.0, 2.0, 3.0]),
    )
    by_run = dict(zip([*runs, bad_run], closed, strict=True))

    failed = by_run.pop(bad_run)
    assert failed.event_type == history_pb2.EVENT_TYPE_RUN_FAILED
    cause = failed.run_failed_event_attributes.failure.cause
    assert cause.application_failure_info.type == "BadModelInput"
    assert "takes 64 features, got 3" in cause.message

    direct = onnxruntime.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    for run_id, event in by_run.items():
        assert event.event_type == history_pb2.EVENT_TYPE_RUN_COMPLETED, run_id
        result = value(event.run_completed_event_attributes.result)
        row = np.asarray([runs[run_id]], dtype=np.float32)
        label, probabilities = direct.run(None, {"input": row})
        assert result["model"] == MODEL
        assert result["label"] == int(label[0]), run_id
        assert result["probabilities"] == pytest.approx(probabilities[0].tolist(), abs=1e-5)

    stats = await running.stop()
    print(
        f"\nmodel worker: {stats['items']} tasks in {stats['batches']} forward passes,"
        f" mean batch size {stats['mean_batch_size']} (max_batch {MAX_BATCH})"
    )
    assert stats["items"] == RUNS
    assert stats["completed"] == RUNS
    assert stats["failed"] == 1
    assert stats["mean_batch_size"] > 1
    assert stats["provider"] == "CPUExecutionProvider"
