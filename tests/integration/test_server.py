"""Every role's port answers health checks and server reflection (so grpcurl and buf curl
work), and SIGTERM stops a process gracefully without losing runs."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from tests.support.cluster import Cluster
from tests.support.flows import BlockWorker, Client, Task, two_step_blueprint, value
from tideflow.api.v1 import history_pb2


async def _services(address: str) -> set[str]:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        async for reply in stub.ServerReflectionInfo(iter([request]), timeout=10):
            return {s.name for s in reply.list_services_response.service}
    return set()


async def test_every_port_serves_reflection(cluster: Cluster) -> None:
    ports = cluster.ports
    assert "tideflow.api.v1.FlowService" in await _services(f"127.0.0.1:{ports['frontend']}")
    assert "tideflow.api.v1.OperatorService" in await _services(f"127.0.0.1:{ports['frontend']}")
    assert "tideflow_server.internal.v1.HistoryService" in await _services(
        f"127.0.0.1:{ports['history']}"
    )
    assert "tideflow_server.internal.v1.MatchingService" in await _services(
        f"127.0.0.1:{ports['matching']}"
    )
    assert "grpc.health.v1.Health" in await _services(f"127.0.0.1:{ports['history']}")


async def test_graceful_restart_of_history_loses_no_run(tmp_path: Path) -> None:
    cluster = Cluster(
        tmp_path, {"backend": "sqlite", "sqlite": {"path": str(tmp_path / "t.db")}}, split=True
    )
    cluster.schema_setup()
    await cluster.start()
    client = Client(cluster.frontend)
    try:
        await client.ensure_namespace()
        queue, flow = f"q-{uuid.uuid4().hex[:6]}", f"flow_{uuid.uuid4().hex[:6]}"
        await client.register(two_step_blueprint(flow, queue))
        gate = asyncio.Event()

        async def step(task: Task) -> Any:
            await gate.wait()
            return task.input + 1

        async with BlockWorker(cluster.frontend, queue, {"step@1": step}):
            runs = [(await client.start(flow, i * 10))[0] for i in range(5)]
            history = cluster.process_of("history")
            history.stop()  # SIGTERM
            assert history.process is not None and history.process.returncode == 0
            await cluster.restart("history")
            gate.set()
            closed = [await client.close_event(r) for r in runs]
        assert [value(e.run_completed_event_attributes.result) for e in closed] == [
            i * 10 + 2 for i in range(5)
        ]
        assert all(e.event_type == history_pb2.EVENT_TYPE_RUN_COMPLETED for e in closed)
    finally:
        await client.close()
        for process in cluster.processes.values():
            process.kill()
