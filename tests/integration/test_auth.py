"""API keys per namespace, on a real server with auth on: every public RPC, called without a
key, with a revoked key, with another namespace's key and with a too-weak role, is refused
with the right status and changes nothing; the right key gets through. A table lists every
RPC of FlowService and OperatorService, so an RPC added without an access rule (or without a
row here) fails the suite. Admin actions and terminations leave audit records."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
import pytest_asyncio
from google.protobuf import field_mask_pb2, json_format, message_factory
from google.protobuf.message import Message

from deploy.local.cluster import TEST_SETTINGS
from tests.support.cluster import Cluster, admin_key, running_sqlite_cluster
from tests.support.flows import payloads, two_step_blueprint
from tideflow.api.v1 import (
    blueprint_pb2,
    common_pb2,
    flow_service_pb2,
    namespace_pb2,
    operator_service_pb2,
    task_queue_pb2,
)
from tideflow.client import Client
from tideflow.errors import PermissionDeniedError, UnauthenticatedError
from tideflow.worker import Worker, block
from tideflow_server.auth import Role
from tideflow_server.frontend.rules import RULES, Scope
from workers.ml_model.build import build

NS, OTHER = "ns-a", "ns-b"
REPO = Path(__file__).resolve().parents[2]
QUEUE = "q"
SERVICES = {
    "tideflow.api.v1.FlowService": flow_service_pb2.DESCRIPTOR.services_by_name["FlowService"],
    "tideflow.api.v1.OperatorService": operator_service_pb2.DESCRIPTOR.services_by_name[
        "OperatorService"
    ],
}
WEAKER = {Role.ADMIN: Role.WRITER, Role.WRITER: Role.READER, Role.READER: Role.WORKER}
WEAKER_THAN_WORKER = Role.READER


@dataclass
class World:
    cluster: Cluster
    channel: grpc.aio.Channel
    keys: dict[str, str]
    """By name: admin (cluster), and `<namespace>-<role>`, and revoked."""
    key_ids: dict[str, str]
    run_id: str
    task_token: bytes
    flow: str


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def world(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[World]:
    root = tmp_path_factory.mktemp("auth")
    settings = {**TEST_SETTINGS, "security": {"auth": {"enabled": True}}}
    async with running_sqlite_cluster(root, settings=settings) as cluster:
        admin = admin_key(cluster)
        keys = {"admin": admin}
        ids: dict[str, str] = {}
        async with await Client.connect(cluster.frontend, api_key=admin, namespace=NS) as c:
            for name in (NS, OTHER):
                await c.register_namespace(name)
            for namespace in (NS, OTHER):
                for role in ("admin", "writer", "reader", "worker"):
                    info, key = await c.create_api_key(
                        role=role,
                        namespace=namespace,
                        task_queues=[QUEUE, "other"] if role == "worker" else [],
                    )
                    keys[f"{namespace}-{role}"] = key
                    ids[f"{namespace}-{role}"] = info.key_id
            info, key = await c.create_api_key(role="admin", description="to be revoked")
            await c.revoke_api_key(info.key_id)
            keys["revoked"] = key
        async with await Client.connect(
            cluster.frontend, api_key=keys[f"{NS}-writer"], namespace=NS
        ) as writer:
            flow = f"flow_{uuid.uuid4().hex[:8]}"
            await writer.register_flow(two_step_blueprint(flow, QUEUE))
            run = await writer.start_run(flow, 1)
        channel = grpc.aio.insecure_channel(cluster.frontend)
        poll = flow_service_pb2.PollBlockTaskRequest(namespace=NS, identity="auth-test")
        poll.task_queue.name = QUEUE
        stub = channel.unary_unary(
            "/tideflow.api.v1.FlowService/PollBlockTask",
            request_serializer=flow_service_pb2.PollBlockTaskRequest.SerializeToString,
            response_deserializer=flow_service_pb2.PollBlockTaskResponse.FromString,
        )
        task = flow_service_pb2.PollBlockTaskResponse()
        while not task.task_token:
            task = await stub(
                poll, metadata=(("authorization", f"Bearer {keys[f'{NS}-worker']}"),), timeout=10
            )
        yield World(cluster, channel, keys, ids, run.run_id, task.task_token, flow)
        await channel.close(None)


def _requests(world: World) -> dict[str, Message]:
    """One request per RPC, each acting on namespace ns-a as a caller with the right key
    would: the mutating ones would change something if let through."""
    run = common_pb2.RunRef(run_id=world.run_id)
    queue = common_pb2.TaskQueue(name=QUEUE)
    blueprint = json_format.ParseDict(
        two_step_blueprint(f"new_{uuid.uuid4().hex[:6]}", QUEUE), blueprint_pb2.Blueprint()
    )
    start = flow_service_pb2.StartRunRequest(namespace=NS, run_id="refused-run")
    start.flow.name = world.flow
    complete = flow_service_pb2.RespondBlockCompletedRequest(
        namespace=NS, task_token=world.task_token, result=payloads(5)
    )
    f, o = flow_service_pb2, operator_service_pb2
    return {
        "RegisterNamespace": f.RegisterNamespaceRequest(namespace="ns-new"),
        "DescribeNamespace": f.DescribeNamespaceRequest(namespace=NS),
        "ListNamespaces": f.ListNamespacesRequest(),
        "UpdateNamespace": f.UpdateNamespaceRequest(
            namespace=NS,
            info=namespace_pb2.NamespaceInfo(description="changed"),
            update_mask=field_mask_pb2.FieldMask(paths=["info.description"]),
        ),
        "RegisterFlow": f.RegisterFlowRequest(namespace=NS, blueprint=blueprint),
        "DescribeFlow": f.DescribeFlowRequest(namespace=NS, name=world.flow),
        "ListFlows": f.ListFlowsRequest(namespace=NS),
        "StartRun": start,
        "SignalRun": f.SignalRunRequest(namespace=NS, run=run, signal_name="s"),
        "SignalWithStartRun": f.SignalWithStartRunRequest(
            namespace=NS, run_id="refused-sws", flow=start.flow, signal_name="s"
        ),
        "PublishEvent": f.PublishEventRequest(namespace=NS, event_type="e", event_id="refused"),
        "CancelRun": f.CancelRunRequest(namespace=NS, run=run),
        "TerminateRun": f.TerminateRunRequest(namespace=NS, run=run, reason="refused"),
        "DescribeRun": f.DescribeRunRequest(namespace=NS, run=run),
        "GetRunHistory": f.GetRunHistoryRequest(namespace=NS, run=run),
        "ListRuns": f.ListRunsRequest(namespace=NS),
        "PollBlockTask": f.PollBlockTaskRequest(namespace=NS, task_queue=queue),
        "RespondBlockCompleted": complete,
        "RespondBlockCompletedBatch": f.RespondBlockCompletedBatchRequest(completions=[complete]),
        "RespondBlockFailed": f.RespondBlockFailedRequest(
            namespace=NS, task_token=world.task_token
        ),
        "RespondBlockCanceled": f.RespondBlockCanceledRequest(
            namespace=NS, task_token=world.task_token
        ),
        "RecordBlockHeartbeat": f.RecordBlockHeartbeatRequest(
            namespace=NS, task_token=world.task_token
        ),
        "DescribeTaskQueue": f.DescribeTaskQueueRequest(namespace=NS, task_queue=queue),
        "UpdateTaskQueueConfig": f.UpdateTaskQueueConfigRequest(
            namespace=NS,
            task_queue=queue,
            config=task_queue_pb2.TaskQueueConfig(rate_per_second=3),
            update_mask=field_mask_pb2.FieldMask(paths=["rate_per_second"]),
        ),
        "GetClusterInfo": o.GetClusterInfoRequest(),
        "ListShards": o.ListShardsRequest(),
        "ListClusterMembers": o.ListClusterMembersRequest(),
        "CreateApiKey": o.CreateApiKeyRequest(namespace=NS, role=o.API_KEY_ROLE_ADMIN),
        "ListApiKeys": o.ListApiKeysRequest(namespace=NS),
        "RevokeApiKey": o.RevokeApiKeyRequest(namespace=NS, key_id=world.key_ids[f"{NS}-admin"]),
    }


def _methods() -> list[tuple[str, str]]:
    return [
        (service, method.name)
        for service, descriptor in SERVICES.items()
        for method in descriptor.methods
    ]


def test_every_public_rpc_has_an_access_rule_and_a_row_here() -> None:
    rpcs = {f"/{service}/{name}" for service, name in _methods()}
    assert rpcs == set(RULES), "frontend/rules.py and the services' RPCs differ"
    assert {name for _, name in _methods()} == _REQUEST_NAMES, "an RPC has no row here"


_REQUEST_NAMES = {
    "RegisterNamespace", "DescribeNamespace", "ListNamespaces", "UpdateNamespace",
    "RegisterFlow", "DescribeFlow", "ListFlows", "StartRun", "SignalRun", "SignalWithStartRun",
    "PublishEvent", "CancelRun", "TerminateRun", "DescribeRun", "GetRunHistory", "ListRuns",
    "PollBlockTask", "RespondBlockCompleted", "RespondBlockCompletedBatch",
    "RespondBlockFailed", "RespondBlockCanceled", "RecordBlockHeartbeat", "DescribeTaskQueue",
    "UpdateTaskQueueConfig", "GetClusterInfo", "ListShards", "ListClusterMembers",
    "CreateApiKey", "ListApiKeys", "RevokeApiKey",
}  # fmt: skip


async def _call(world: World, service: str, name: str, request: Message, key: str | None) -> Any:
    output = SERVICES[service].methods_by_name[name].output_type
    response_class = message_factory.GetMessageClass(output)
    method = world.channel.unary_unary(
        f"/{service}/{name}",
        request_serializer=type(request).SerializeToString,
        response_deserializer=response_class.FromString,
    )
    metadata = (("authorization", f"Bearer {key}"),) if key else ()
    return await method(request, metadata=metadata, timeout=15)


async def _snapshot(world: World) -> str:
    """Everything the refused calls would have changed, as one comparable text."""
    async with await Client.connect(
        world.cluster.frontend, api_key=world.keys["admin"], namespace=NS
    ) as admin:
        namespace = await admin.describe_namespace(NS)
        namespaces = [n.info.name async for n in admin.list_namespaces()]
        flows = [f"{f.name}@{f.version}" async for f in admin.list_flows()]
        runs = sorted([r.run.run_id async for r in admin.list_runs()])
        described = await admin.get_run(world.run_id).describe()
        queue = await admin.describe_task_queue(QUEUE)
        keys = [(k.key_id, k.HasField("revoke_time")) for k in await admin.list_api_keys()]
        history = [e.event_type async for e in admin.get_run(world.run_id).history()]
    return json.dumps(
        {
            "namespace": json_format.MessageToDict(namespace),
            "namespaces": namespaces,
            "flows": flows,
            "runs": runs,
            "run": json_format.MessageToDict(described),
            "queue_config": json_format.MessageToDict(queue.config),
            "keys": keys,
            "history": history,
        },
        sort_keys=True,
        default=str,
    )


def _cases(world: World) -> list[tuple[str, str, str | None, grpc.StatusCode]]:
    """(service, method, key, expected) for every refusal of every RPC."""
    cases: list[tuple[str, str, str | None, grpc.StatusCode]] = []
    for service, name in _methods():
        rule = RULES[f"/{service}/{name}"]
        cases.append((service, name, None, grpc.StatusCode.UNAUTHENTICATED))
        cases.append((service, name, world.keys["revoked"], grpc.StatusCode.UNAUTHENTICATED))
        cases.append(
            (service, name, "tfk.0123456789abcdef." + "x" * 43, grpc.StatusCode.UNAUTHENTICATED)
        )
        if rule.scope is not Scope.ANY:
            # Another namespace's strongest key; for cluster methods, any namespace's.
            other = world.keys[f"{NS if rule.scope is Scope.CLUSTER else OTHER}-admin"]
            cases.append((service, name, other, grpc.StatusCode.PERMISSION_DENIED))
        weaker = WEAKER.get(rule.role, WEAKER_THAN_WORKER)
        cases.append(
            (service, name, world.keys[f"{NS}-{weaker.label}"], grpc.StatusCode.PERMISSION_DENIED)
        )
    return cases


@pytest.mark.asyncio(loop_scope="module")
async def test_every_rpc_refuses_a_missing_revoked_foreign_or_weak_key_and_changes_nothing(
    world: World,
) -> None:
    before = await _snapshot(world)
    requests = _requests(world)
    assert set(requests) == _REQUEST_NAMES
    wrong: list[str] = []
    for service, name, key, expected in _cases(world):
        try:
            await _call(world, service, name, requests[name], key)
            wrong.append(f"{name} with {key and key[:24]}: let through, expected {expected.name}")
        except grpc.aio.AioRpcError as e:
            if e.code() != expected:
                wrong.append(f"{name} with {key and key[:24]}: {e.code().name} ({e.details()})")
    assert wrong == []
    assert await _snapshot(world) == before


@pytest.mark.asyncio(loop_scope="module")
async def test_the_right_key_gets_past_authorization_for_every_rpc(world: World) -> None:
    requests = _requests(world)
    # Each by the namespace's key of exactly the role the rule asks (cluster rules: the
    # cluster admin), so that no role passes for more than it should; the mutating ones last.
    last = ("RevokeApiKey", "TerminateRun", "CancelRun", "RespondBlockCompleted")
    order = sorted(
        _methods(), key=lambda m: (m[1] in last, last.index(m[1]) if m[1] in last else 0)
    )
    for service, name in order:
        rule = RULES[f"/{service}/{name}"]
        key = world.keys["admin" if rule.scope is Scope.CLUSTER else f"{NS}-{rule.role.label}"]
        try:
            await _call(world, service, name, requests[name], key)
        except grpc.aio.AioRpcError as e:
            # Past authorization: what the server says of the request itself is fine here.
            assert e.code() not in (
                grpc.StatusCode.UNAUTHENTICATED,
                grpc.StatusCode.PERMISSION_DENIED,
            ), f"{name}: {e.code().name} {e.details()}"


@block("auth.double")
async def double(value: int) -> int:
    return value * 2


@pytest.mark.asyncio(loop_scope="module")
async def test_a_worker_key_runs_blocks_only_on_its_task_queues(world: World) -> None:
    address = world.cluster.frontend
    async with await Client.connect(
        address, api_key=world.keys[f"{NS}-writer"], namespace=NS
    ) as writer:
        flow = f"w_{uuid.uuid4().hex[:6]}"
        await writer.register_flow(
            {
                "name": flow,
                "task_queue": "other",
                "timeouts": {"start_to_close": "10s"},
                "blocks": [
                    {"id": "a", "external": {"block": "auth.double@1"}, "input": "${input}"}
                ],
                "output": "${blocks.a.output}",
            }
        )
        worker = Worker(
            address,
            namespace=NS,
            task_queue="other",
            blocks=[double],
            api_key=world.keys[f"{NS}-worker"],
        )
        async with worker:
            run = await writer.start_run(flow, 21)
            assert await run.result(timeout=30) == 42
        # Who ran and who started it: what each said it is, and the key that vouched for it.
        events = [e async for e in run.history()]
        completed = next(e for e in events if e.HasField("block_completed_event_attributes"))
        worker_id = world.key_ids[f"{NS}-worker"]
        assert completed.block_completed_event_attributes.identity.endswith(f" key:{worker_id}")
        started = events[0].run_started_event_attributes
        assert started.identity.endswith(f" key:{world.key_ids[f'{NS}-writer']}")
    async with await Client.connect(
        address, api_key=world.keys[f"{NS}-worker"], namespace=NS
    ) as as_worker:
        with pytest.raises(PermissionDeniedError):
            await as_worker.start_run(flow, 1)  # a worker key starts nothing
    with pytest.raises(UnauthenticatedError):
        async with await Client.connect(address, namespace=NS) as anonymous:
            await anonymous.describe_namespace(NS)


@pytest.mark.asyncio(loop_scope="module")
async def test_the_model_worker_serves_with_a_worker_key(world: World, tmp_path: Path) -> None:
    """The model worker (deploy/k8s/workers' GPU example) takes its key from
    TIDEFLOW_API_KEY, as a Secret hands it over."""
    model = build(tmp_path / "digits.onnx")
    queue = "other"  # a queue the worker key names
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "workers.ml_model",
        "--address", world.cluster.frontend, "--namespace", NS, "--task-queue", queue,
        "--model", str(model), "--provider", "cpu", "--max-batch", "1",
        cwd=REPO,
        env={**os.environ, "TIDEFLOW_API_KEY": world.keys[f"{NS}-worker"]},
    )  # fmt: skip
    try:
        async with await Client.connect(
            world.cluster.frontend, api_key=world.keys[f"{NS}-writer"], namespace=NS
        ) as writer:
            flow = f"m_{uuid.uuid4().hex[:6]}"
            await writer.register_flow(
                {
                    "name": flow,
                    "task_queue": queue,
                    "timeouts": {"start_to_close": "30s"},
                    "blocks": [
                        {"id": "p", "external": {"block": "model.predict@1"}, "input": "${input}"}
                    ],
                    "output": "${blocks.p.output}",
                }
            )
            run = await writer.start_run(flow, {"model": "digits", "features": [0.0] * 64})
            result = await run.result(timeout=60)
        assert result["model"] == "digits"
        assert 0 <= result["label"] <= 9
    finally:
        process.kill()
        await process.wait()


def _audit_records(cluster: Cluster) -> list[str]:
    return [line for line in cluster.logs().splitlines() if "audit" in line and "action" in line]


@pytest.mark.asyncio(loop_scope="module")
async def test_terminations_and_admin_actions_leave_audit_records(world: World) -> None:
    async with await Client.connect(
        world.cluster.frontend, api_key=world.keys[f"{NS}-writer"], namespace=NS
    ) as writer:
        run = await writer.start_run(world.flow, 1, run_id=f"audited-{uuid.uuid4().hex[:6]}")
        await writer.get_run(run.run_id).terminate(reason="audit test")
        with pytest.raises(PermissionDeniedError):
            await writer.create_api_key(role="admin")
    records = _audit_records(world.cluster)
    writer_id = world.key_ids[f"{NS}-writer"]
    terminated = [r for r in records if "TerminateRun" in r and run.run_id in r]
    assert len(terminated) == 1
    assert f"who=key:{writer_id}" in terminated[0]
    assert f"namespace={NS}" in terminated[0] and "outcome=OK" in terminated[0]
    refused = [r for r in records if "CreateApiKey" in r and f"key:{writer_id}" in r]
    assert refused and "outcome=PERMISSION_DENIED" in refused[-1]
    created = [r for r in records if "CreateApiKey" in r and "outcome=OK" in r]
    assert created, "the fixture's key creations were audited"
