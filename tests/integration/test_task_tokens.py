"""Task tokens cannot be forged: every field of a token can be read through DescribeRun and
GetRunHistory, so the frontend signs the tokens it hands out and refuses any other, or one of
another namespace, changing nothing. A rotated key keeps the tokens it signed valid while it
is still listed."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml

from deploy.local.cluster import TEST_SETTINGS
from tests.support.cluster import Cluster, running_sqlite_cluster
from tests.support.flows import Client, payloads, two_step_blueprint
from tideflow.api.v1 import flow_service_pb2, history_pb2
from tideflow_server.internal.v1 import task_token_pb2
from tideflow_server.tokens import FORGED_REASON, NAMESPACE_REASON, parse_token

KEY_1 = {"id": "k1", "secret": "first-secret-of-at-least-32-characters"}
KEY_2 = {"id": "k2", "secret": "second-secret-of-at-least-32-characters"}


def _settings(*keys: dict[str, str]) -> dict[str, Any]:
    return {**TEST_SETTINGS, "security": {"task_token_keys": list(keys)}}


@contextlib.asynccontextmanager
async def _cluster(root: Path, *keys: dict[str, str]) -> AsyncIterator[Cluster]:
    async with running_sqlite_cluster(root, settings=_settings(*keys) if keys else None) as c:
        yield c


async def _first_task(
    client: Client, queue: str
) -> tuple[str, flow_service_pb2.PollBlockTaskResponse]:
    flow = f"flow_{uuid.uuid4().hex[:8]}"
    await client.register(two_step_blueprint(flow, queue))
    run_id, _ = await client.start(flow, 1)
    request = flow_service_pb2.PollBlockTaskRequest(namespace=client.namespace, identity="t")
    request.task_queue.name = queue
    while True:
        task = await client.stub.PollBlockTask(request, timeout=10)
        if task.task_token:
            return run_id, task


async def _complete(client: Client, token: bytes, namespace: str | None = None) -> None:
    await client.stub.RespondBlockCompleted(
        flow_service_pb2.RespondBlockCompletedRequest(
            namespace=namespace or client.namespace,
            task_token=token,
            result=payloads(2),
            identity="attacker",
        ),
        timeout=10,
    )


async def _refused(call: Any, reason: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await call
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert reason in str(refused.value.trailing_metadata())


async def _block_a_open(client: Client, run_id: str) -> None:
    """Nothing was recorded: block a has not completed, the run is still running."""
    events = await client.history(run_id)
    types = {e.event_type for e in events}
    assert history_pb2.EVENT_TYPE_BLOCK_COMPLETED not in types
    described = await client.describe(run_id)
    assert [p.block_id for p in described.pending_blocks] == ["a"]


async def test_a_token_assembled_from_what_describe_and_history_show_is_refused(
    tmp_path: Path,
) -> None:
    async with _cluster(tmp_path) as cluster:
        client = Client(cluster.frontend, namespace="victim")
        await client.ensure_namespace()
        run_id, task = await _first_task(client, "q")
        # Everything an attacker can read: the run, its history, the namespace's id.
        described = await client.describe(run_id)
        events = await client.history(run_id)
        scheduled = next(
            e for e in events if e.event_type == history_pb2.EVENT_TYPE_BLOCK_SCHEDULED
        )
        namespace = await client.stub.DescribeNamespace(
            flow_service_pb2.DescribeNamespaceRequest(namespace="victim"), timeout=10
        )
        assembled = task_token_pb2.BlockTaskToken(
            namespace_id=namespace.info.id,
            run_id=run_id,
            execution_id=described.run_info.run.execution_id,
            scheduled_event_id=scheduled.event_id,
            attempt=1,
            block_id="a",
        )
        # The same attempt the worker holds: only the signature tells them apart.
        assert assembled == parse_token(task.task_token)
        body = assembled.SerializeToString()
        unsigned = task_token_pb2.SignedTaskToken(body=body).SerializeToString()
        guessed = task_token_pb2.SignedTaskToken(
            body=body,
            key_id="cluster",
            signature=hmac.new(b"guess" * 8, body, hashlib.sha256).digest(),
        ).SerializeToString()
        await _refused(_complete(client, unsigned), FORGED_REASON)
        await _refused(_complete(client, guessed), FORGED_REASON)
        # The worker's own token, with its body swapped for another attempt's, is refused too.
        tampered = task_token_pb2.SignedTaskToken.FromString(task.task_token)
        other = task_token_pb2.BlockTaskToken.FromString(tampered.body)
        other.attempt = 2
        tampered.body = other.SerializeToString()
        await _refused(_complete(client, tampered.SerializeToString()), FORGED_REASON)
        await _block_a_open(client, run_id)
        # The real token still works: nothing above changed the attempt.
        await _complete(client, task.task_token)
        events = await client.history(run_id)
        completed = [e for e in events if e.event_type == history_pb2.EVENT_TYPE_BLOCK_COMPLETED]
        assert len(completed) == 1
        assert completed[0].block_completed_event_attributes.identity == "attacker"
        await client.close()


async def test_a_token_of_one_namespace_is_refused_in_another(tmp_path: Path) -> None:
    async with _cluster(tmp_path) as cluster:
        victim = Client(cluster.frontend, namespace="victim")
        await victim.ensure_namespace()
        attacker = Client(cluster.frontend, namespace="attacker")
        await attacker.ensure_namespace()
        run_id, task = await _first_task(victim, "q")
        await _refused(_complete(attacker, task.task_token), NAMESPACE_REASON)
        heartbeat = attacker.stub.RecordBlockHeartbeat(
            flow_service_pb2.RecordBlockHeartbeatRequest(
                namespace="attacker", task_token=task.task_token
            ),
            timeout=10,
        )
        await _refused(heartbeat, NAMESPACE_REASON)
        batch = await attacker.stub.RespondBlockCompletedBatch(
            flow_service_pb2.RespondBlockCompletedBatchRequest(
                completions=[
                    flow_service_pb2.RespondBlockCompletedRequest(
                        namespace="attacker", task_token=task.task_token, result=payloads(2)
                    )
                ]
            ),
            timeout=10,
        )
        (result,) = batch.results
        assert result.status.code == grpc.StatusCode.PERMISSION_DENIED.value[0]
        assert result.status.reason == NAMESPACE_REASON
        await _block_a_open(victim, run_id)
        await victim.close()
        await attacker.close()


@contextlib.asynccontextmanager
async def _split_cluster(root: Path, *keys: dict[str, str]) -> AsyncIterator[Cluster]:
    """Role processes: the frontend restarts with new keys while history keeps its runs."""
    cluster = Cluster(
        root,
        {"backend": "sqlite", "sqlite": {"path": str(root / "t.db")}},
        split=True,
        settings=_settings(*keys),
    )
    cluster.schema_setup()
    async with cluster.running():
        yield cluster


async def test_a_rotated_key_keeps_its_tokens_valid_while_it_is_listed(tmp_path: Path) -> None:
    async with _split_cluster(tmp_path, KEY_1) as cluster:
        client = Client(cluster.frontend)
        await client.ensure_namespace()
        _, old = await _first_task(client, "q")
        assert task_token_pb2.SignedTaskToken.FromString(old.task_token).key_id == "k1"
        second_run, still_old = await _first_task(client, "q2")

        # Rotate: k2 signs from now on, k1 still verifies.
        process = cluster.process_of("frontend")
        config = yaml.safe_load(cluster.config.read_text())
        config["security"] = {"task_token_keys": [KEY_2, KEY_1]}
        cluster.config.write_text(yaml.safe_dump(config))
        process.stop()
        await cluster.restart("frontend")
        client = Client(cluster.frontend)
        await _complete(client, old.task_token)
        _, new = await _first_task(client, "q3")
        assert task_token_pb2.SignedTaskToken.FromString(new.task_token).key_id == "k2"

        # Retire k1: its tokens are refused, k2's still work.
        config["security"] = {"task_token_keys": [KEY_2]}
        cluster.config.write_text(yaml.safe_dump(config))
        process.stop()
        await cluster.restart("frontend")
        client = Client(cluster.frontend)
        await _refused(_complete(client, still_old.task_token), FORGED_REASON)
        await _block_a_open(client, second_run)
        await _complete(client, new.task_token)
        await client.close()
