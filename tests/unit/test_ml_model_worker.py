"""The model worker's per-item errors, without a server: a bad input fails its task alone and
never joins a batch; a forward pass that raises is retried item by item, so only the items
the model refuses fail and the rest complete."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tideflow._converter import DefaultConverter, to_payloads
from tideflow.api.v1 import flow_service_pb2
from workers.ml_model.model import BadModelInput
from workers.ml_model.worker import BLOCK_TYPE, ModelWorker, Options, _Pending


class FakeModel:
    """Two features; refuses (raises on) any batch with a negative first feature."""

    name = "fake"
    provider = "CPUExecutionProvider"
    path = Path("fake.onnx")

    def check(self, block_input: Any) -> list[float]:
        if len(block_input["features"]) != 2:
            raise BadModelInput("input.features: fake takes 2 features")
        return [float(f) for f in block_input["features"]]

    def predict(self, rows: list[list[float]]) -> list[dict[str, Any]]:
        if any(row[0] < 0 for row in rows):
            raise ValueError("negative")
        return [{"label": int(row[0]), "model": self.name} for row in rows]


class Recording(ModelWorker):
    """Notes what would have been answered instead of calling the server."""

    def __init__(self) -> None:
        super().__init__(FakeModel(), Options(max_batch=4))  # type: ignore[arg-type]
        self.completed: dict[bytes, dict[str, Any]] = {}
        self.failed: dict[bytes, str] = {}

    async def _complete(
        self, done: Sequence[tuple[flow_service_pb2.PollBlockTaskResponse, dict[str, Any]]]
    ) -> None:
        self.completed.update({task.task_token: result for task, result in done})

    async def _fail(
        self,
        tasks: Sequence[flow_service_pb2.PollBlockTaskResponse],
        error: BaseException,
        *,
        type_: str,
        non_retryable: bool,
    ) -> None:
        self.failed.update({task.task_token: f"{type_} {non_retryable}" for task in tasks})

    async def settle(self) -> None:
        while self._answers:
            await asyncio.gather(*self._answers)


def _task(token: bytes, features: list[float]) -> flow_service_pb2.PollBlockTaskResponse:
    return flow_service_pb2.PollBlockTaskResponse(
        task_token=token,
        block_type=BLOCK_TYPE,
        input=to_payloads(DefaultConverter(), {"model": "fake", "features": features}),
    )


async def test_a_bad_input_fails_alone_and_never_joins_a_batch() -> None:
    worker = Recording()
    worker._accept(_task(b"good", [1.0, 2.0]))
    worker._accept(_task(b"bad", [1.0]))
    await worker.settle()
    assert worker.failed == {b"bad": "BadModelInput True"}
    assert worker.batcher.queued == 1


async def test_a_refused_batch_is_retried_item_by_item() -> None:
    worker = Recording()
    batch = [
        _Pending(_task(b"a", [1.0, 0.0]), [1.0, 0.0]),
        _Pending(_task(b"b", [-1.0, 0.0]), [-1.0, 0.0]),
        _Pending(_task(b"c", [3.0, 0.0]), [3.0, 0.0]),
    ]
    await worker._forward(batch)
    await worker.settle()
    assert worker.completed == {
        b"a": {"label": 1, "model": "fake"},
        b"c": {"label": 3, "model": "fake"},
    }
    assert worker.failed == {b"b": "ModelError False"}
