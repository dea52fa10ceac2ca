"""Every role's port answers health checks and server reflection, v1 and v1alpha (so grpcurl
and buf curl work, error details included), and SIGTERM stops a process gracefully without
losing runs."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import uuid
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
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


async def _reflect_v1(
    address: str, *requests: reflection_pb2.ServerReflectionRequest
) -> list[reflection_pb2.ServerReflectionResponse]:
    """Ask `grpc.reflection.v1`: its messages are v1alpha's, byte for byte."""
    async with grpc.aio.insecure_channel(address) as channel:
        call = channel.stream_stream(
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
            request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
            response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
        )
        return [reply async for reply in call(iter(requests), timeout=10)]


def _files(reply: reflection_pb2.ServerReflectionResponse) -> list[str]:
    return [
        descriptor_pb2.FileDescriptorProto.FromString(raw).name
        for raw in reply.file_descriptor_response.file_descriptor_proto
    ]


async def test_reflection_v1_lists_services_and_resolves_error_details(cluster: Cluster) -> None:
    listed, details, itself = await _reflect_v1(
        cluster.frontend,
        reflection_pb2.ServerReflectionRequest(list_services=""),
        reflection_pb2.ServerReflectionRequest(file_containing_symbol="google.rpc.BadRequest"),
        reflection_pb2.ServerReflectionRequest(
            file_containing_symbol="grpc.reflection.v1.ServerReflection"
        ),
    )
    services = {s.name for s in listed.list_services_response.service}
    assert {
        "tideflow.api.v1.FlowService",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
    } <= services
    assert _files(details)[0] == "google/rpc/error_details.proto"
    assert _files(itself)[0] == "grpc/reflection/v1/reflection.proto"
    # Every listed service resolves (grpcurl's `describe` fails on the first that does not).
    replies = await _reflect_v1(
        cluster.frontend,
        *(reflection_pb2.ServerReflectionRequest(file_containing_symbol=s) for s in services),
    )
    assert [r.WhichOneof("message_response") for r in replies] == [
        "file_descriptor_response"
    ] * len(services)


BUF = Path(__file__).resolve().parents[2] / "node_modules" / ".bin" / "buf"


async def _buf_curl(*args: str) -> tuple[int, Any, Any]:
    """`buf curl` over plain-text HTTP/2, reflection v1 only: (exit status, stdout JSON,
    stderr JSON or text)."""
    if not BUF.exists():
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{BUF} missing: run `make setup`", pytrace=False)
        pytest.skip(f"{BUF} missing: run `make setup`")
    process = await asyncio.create_subprocess_exec(
        str(BUF),
        "curl",
        "--protocol",
        "grpc",
        "--http2-prior-knowledge",
        "--reflect-protocol",
        "grpc-v1",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)

    def parsed(raw: bytes) -> Any:
        try:
            return json.loads(raw)
        except ValueError:
            return raw.decode()

    assert process.returncode is not None
    return process.returncode, parsed(out), parsed(err)


async def test_buf_curl_lists_services_and_gets_error_details_it_can_decode(
    cluster: Cluster,
) -> None:
    """A client outside Python: buf curl, speaking reflection v1 only, lists the services,
    gets a bad request's google.rpc details, and the detail decodes with nothing but the
    descriptors reflection hands out."""
    url = f"http://{cluster.frontend}"
    status, out, _ = await _buf_curl("--list-services", url)
    assert status == 0
    assert {"tideflow.api.v1.FlowService", "grpc.reflection.v1.ServerReflection"} <= set(
        out.split()
    )

    status, _, error = await _buf_curl(
        "-d",
        json.dumps({"namespace": "tests", "runId": "", "flow": {"name": ""}}),
        f"{url}/tideflow.api.v1.FlowService/StartRun",
    )
    assert status != 0
    assert error["code"] == "invalid_argument"
    [bad_request] = [d for d in error["details"] if d["type"] == "google.rpc.BadRequest"]
    assert {d["type"] for d in error["details"]} == {
        "google.rpc.BadRequest",
        "google.rpc.ErrorInfo",
    }

    # buf curl prints a detail it has no compiled-in type for as base64; reflection has it.
    status, files, _ = await _buf_curl(
        "-d",
        json.dumps({"fileContainingSymbol": "google.rpc.BadRequest"}),
        f"{url}/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
    )
    assert status == 0
    pool = descriptor_pool.DescriptorPool()
    for file in reversed(files["fileDescriptorResponse"]["fileDescriptorProto"]):
        pool.Add(descriptor_pb2.FileDescriptorProto.FromString(base64.b64decode(file)))
    cls = message_factory.GetMessageClass(pool.FindMessageTypeByName("google.rpc.BadRequest"))
    raw = bad_request["value"]  # unpadded base64
    decoded: Any = cls.FromString(base64.b64decode(raw + "=" * (-len(raw) % 4)))
    assert {v.field for v in decoded.field_violations} == {"run_id", "flow.name"}


async def test_graceful_restart_of_history_loses_no_run(tmp_path: Path) -> None:
    cluster = Cluster(
        tmp_path, {"backend": "sqlite", "sqlite": {"path": str(tmp_path / "t.db")}}, split=True
    )
    cluster.schema_setup()
    async with cluster.running():
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
