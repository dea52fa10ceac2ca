"""A cluster with two history and two matching processes on PostgreSQL: shards and task queue
partitions spread over the hosts, and every run still finishes promptly. Workers poll with an
unspecified queue kind while history adds tasks as NORMAL; both must reach the partition's one
owner, or tasks wait in one host's backlog while polls wait on the other."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from tests.support.cluster import Cluster
from tests.support.flows import Client, payloads, value
from tests.support.postgres import PostgresServer
from tideflow.api.v1 import (
    flow_service_pb2,
    flow_service_pb2_grpc,
    history_pb2,
    operator_service_pb2,
    operator_service_pb2_grpc,
)
from tideflow.worker import Worker, block
from tideflow_server.rpc.clients import shard_for

QUEUES = 8
SHARDS = 16


@pytest.fixture
async def multi_host(
    tmp_path: Path, postgres_server: PostgresServer, postgres_template: str
) -> AsyncIterator[Cluster]:
    name = f"tideflow_multi_{uuid.uuid4().hex[:8]}"
    postgres_server.psql(f"CREATE DATABASE {name} TEMPLATE {postgres_template}")
    cluster = Cluster(
        tmp_path,
        {"backend": "postgres", "postgres": {"dsn": postgres_server.dsn(name)}},
        split=True,
        history_processes=2,
        matching_processes=2,
        # With 4 shards, rendezvous hashing gives one host all of them 1 time in 8; with 16,
        # both hosts own shards (all but 1 time in 32,768), so calls cross hosts.
        shard_count=SHARDS,
    )
    async with cluster.running(settled=True):
        yield cluster


@block("double")
async def double(n: int) -> int:
    return 2 * n


async def _register_double(client: Client, flow: str, queue: str) -> None:
    """A flow of one double@1 block on `queue`, its output the run's."""
    await client.register(
        {
            "name": flow,
            "version": 1,
            "task_queue": queue,
            "timeouts": {"start_to_close": "10s"},
            "blocks": [{"id": "a", "external": {"block": "double@1"}, "input": "${input}"}],
            "output": "${blocks.a.output}",
        }
    )


async def test_runs_on_many_queues_finish_promptly_across_hosts(multi_host: Cluster) -> None:
    client = Client(multi_host.frontend)
    await client.ensure_namespace()
    queues = [f"q{i}-{uuid.uuid4().hex[:6]}" for i in range(QUEUES)]
    flows = [f"f{i}_{uuid.uuid4().hex[:6]}" for i in range(QUEUES)]
    for queue, flow in zip(queues, flows, strict=True):
        await _register_double(client, flow, queue)
    workers = [
        Worker(multi_host.frontend, task_queue=q, blocks=[double], namespace="tests")
        for q in queues
    ]
    try:
        for worker in workers:
            await worker.__aenter__()
        runs = [
            (await client.start(flow, i, run_id=f"r-{uuid.uuid4().hex}"))[0]
            for i, flow in enumerate(flows)
        ]
        # A partition split between two hosts is only healed by an ownership move, seconds
        # later; a correct cluster answers each run in well under that.
        closed = await asyncio.wait_for(
            asyncio.gather(*(client.close_event(r, timeout_s=30) for r in runs)), timeout=5
        )
    finally:
        for worker in workers:
            await worker.__aexit__(None, None, None)
        await client.close()
    assert [e.event_type for e in closed] == [history_pb2.EVENT_TYPE_RUN_COMPLETED] * QUEUES
    assert [value(e.run_completed_event_attributes.result) for e in closed] == [
        2 * i for i in range(QUEUES)
    ]


async def test_a_completion_batch_spanning_both_history_hosts(multi_host: Cluster) -> None:
    """One RespondBlockCompletedBatch whose runs live on shards of both history hosts: the
    frontend sends each host its part, and every item is answered."""
    client = Client(multi_host.frontend)
    await client.ensure_namespace()
    queue, flow = f"q-{uuid.uuid4().hex[:6]}", f"f_{uuid.uuid4().hex[:6]}"
    await _register_double(client, flow, queue)
    try:
        async with grpc.aio.insecure_channel(multi_host.frontend) as channel:
            stub = flow_service_pb2_grpc.FlowServiceStub(channel)
            operator = operator_service_pb2_grpc.OperatorServiceStub(channel)
            namespace = await stub.DescribeNamespace(
                flow_service_pb2.DescribeNamespaceRequest(namespace="tests"), timeout=10
            )
            shards = await operator.ListShards(operator_service_pb2.ListShardsRequest(), timeout=10)
            owner = {s.shard_id: s.owner_host for s in shards.shards}
            # Runs until both hosts own at least one of them.
            runs: list[str] = []
            while len({owner[shard_for(namespace.info.id, r, SHARDS)] for r in runs}) < 2:
                runs.append((await client.start(flow, len(runs), run_id=uuid.uuid4().hex))[0])
            poll = flow_service_pb2.PollBlockTaskRequest(namespace="tests", identity="batch")
            poll.task_queue.name = queue
            tasks: list[flow_service_pb2.PollBlockTaskResponse] = []
            while len(tasks) < len(runs):
                task = await stub.PollBlockTask(poll, timeout=10)
                if task.task_token:
                    tasks.append(task)
            answer = await stub.RespondBlockCompletedBatch(
                flow_service_pb2.RespondBlockCompletedBatchRequest(
                    completions=[
                        flow_service_pb2.RespondBlockCompletedRequest(
                            namespace="tests",
                            task_token=t.task_token,
                            result=payloads(2 * value(t.input)),
                        )
                        for t in tasks
                    ]
                ),
                timeout=10,
            )
            assert [r.status.code for r in answer.results] == [0] * len(tasks)
        closed = [await client.close_event(r, timeout_s=30) for r in runs]
    finally:
        await client.close()
    assert [value(e.run_completed_event_attributes.result) for e in closed] == [
        2 * i for i in range(len(runs))
    ]
