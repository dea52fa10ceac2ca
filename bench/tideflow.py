"""Tideflow as the system under test: the namespace and flow, the worker processes, and the
two load drivers (the SDK client, or the generated stubs over one channel)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sys
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

import grpc
from google.protobuf import json_format

from bench.scenarios import Scenario
from tideflow import errors
from tideflow.api.v1 import (
    blueprint_pb2,
    common_pb2,
    flow_service_pb2,
    flow_service_pb2_grpc,
    history_pb2,
    namespace_pb2,
    operator_service_pb2,
    operator_service_pb2_grpc,
)
from tideflow.client import Client

logger = logging.getLogger("bench.tideflow")

NAMESPACE = "bench"
RUN_TIMEOUT_S = 60.0
# The bench measures the engine, not the frontend's per-namespace limiter: lift it.
_RATE_LIMITS = namespace_pb2.RateLimits(requests_per_second=1_000_000, burst=1_000_000)

Driver = Literal["sdk", "stubs"]


def _payloads(value: Any) -> common_pb2.Payloads:
    """A value as the SDK's default converter sends it (JSON); None as no payload at all."""
    if value is None:
        return common_pb2.Payloads()
    data = json.dumps(value, separators=(",", ":")).encode()
    return common_pb2.Payloads(
        payloads=[common_pb2.Payload(metadata={"encoding": b"json/plain"}, data=data)]
    )


async def prepare(
    address: str, scenario: Scenario, *, retention_s: float | None = None
) -> tuple[str, str, operator_service_pb2.GetClusterInfoResponse]:
    """Namespace (rate limits lifted; its retention set when given), a fresh task queue and
    flow for `scenario`; returns (flow, task queue, the cluster's info)."""
    async with grpc.aio.insecure_channel(address) as channel:
        await asyncio.wait_for(channel.channel_ready(), 30)
        stub = flow_service_pb2_grpc.FlowServiceStub(channel)
        config = namespace_pb2.NamespaceConfig(rate_limits=_RATE_LIMITS)
        if retention_s is not None:
            config.retention.FromMilliseconds(round(retention_s * 1000))
        try:
            await stub.RegisterNamespace(
                flow_service_pb2.RegisterNamespaceRequest(
                    namespace=NAMESPACE, description="load harness (bench/)", config=config
                ),
                timeout=10,
            )
        except grpc.aio.AioRpcError as e:
            if e.code() != grpc.StatusCode.ALREADY_EXISTS:
                raise
            update = flow_service_pb2.UpdateNamespaceRequest(namespace=NAMESPACE, config=config)
            update.update_mask.paths.append("config.rate_limits")
            if retention_s is not None:
                update.update_mask.paths.append("config.retention")
            await stub.UpdateNamespace(update, timeout=10)
        suffix = uuid.uuid4().hex[:8]
        flow, queue = f"bench_{scenario.name}_{suffix}", f"bench-{suffix}"
        blueprint = json_format.ParseDict(
            scenario.blueprint(flow, queue), blueprint_pb2.Blueprint()
        )
        await stub.RegisterFlow(
            flow_service_pb2.RegisterFlowRequest(namespace=NAMESPACE, blueprint=blueprint),
            timeout=10,
        )
        operator = operator_service_pb2_grpc.OperatorServiceStub(channel)
        info = await operator.GetClusterInfo(
            operator_service_pb2.GetClusterInfoRequest(), timeout=10
        )
        return flow, queue, info


async def sticky_counts(address: str, task_queue: str) -> tuple[int, int]:
    """The task queue's sticky hits and fallbacks so far, over its partitions."""
    async with grpc.aio.insecure_channel(address) as channel:
        stub = flow_service_pb2_grpc.FlowServiceStub(channel)
        request = flow_service_pb2.DescribeTaskQueueRequest(namespace=NAMESPACE)
        request.task_queue.name = task_queue
        described = await stub.DescribeTaskQueue(request, timeout=10)
    partitions = described.partitions
    return sum(p.sticky_hits for p in partitions), sum(p.sticky_fallbacks for p in partitions)


class SdkDriver:
    """Runs through the public SDK: `Client.execute_run`, a start that waits for the close."""

    def __init__(self, client: Client, flow: str, run_input: Any) -> None:
        self._client = client
        self._flow = flow
        self._input = run_input

    @classmethod
    async def connect(cls, address: str, flow: str, run_input: Any) -> SdkDriver:
        return cls(await Client.connect(address, namespace=NAMESPACE), flow, run_input)

    async def run(self, key: str) -> bool:
        try:
            await self._client.execute_run(
                self._flow, self._input, run_id=key, timeout=RUN_TIMEOUT_S
            )
        except errors.RunFailedError:
            return False
        return True

    async def close(self) -> None:
        await self._client.close()


class StubDriver:
    """Runs through the generated stubs on one long-lived channel: StartRun with
    wait_for_close, and a GetRunHistory long poll for the close event only if the run outlives
    that wait. No per-call conversion besides setting ids."""

    def __init__(self, channel: grpc.aio.Channel, flow: str, run_input: Any) -> None:
        self._channel = channel
        self._stub = flow_service_pb2_grpc.FlowServiceStub(channel)
        self._start = flow_service_pb2.StartRunRequest(
            namespace=NAMESPACE,
            flow=common_pb2.FlowRef(name=flow),
            input=_payloads(run_input),
            identity=f"bench-driver:{os.getpid()}",
            wait_for_close=True,
        )

    @classmethod
    async def connect(cls, address: str, flow: str, run_input: Any) -> StubDriver:
        channel = grpc.aio.insecure_channel(address)
        await asyncio.wait_for(channel.channel_ready(), 30)
        return cls(channel, flow, run_input)

    async def run(self, key: str) -> bool:
        request = flow_service_pb2.StartRunRequest()
        request.CopyFrom(self._start)
        request.run_id = request.request_id = key
        started = await self._stub.StartRun(request, timeout=30)
        if started.HasField("close_event"):
            return started.close_event.event_type == history_pb2.EVENT_TYPE_RUN_COMPLETED
        poll = flow_service_pb2.GetRunHistoryRequest(
            namespace=NAMESPACE,
            run=common_pb2.RunRef(run_id=key),
            wait_new_event=True,
            history_event_filter_type=history_pb2.HISTORY_EVENT_FILTER_TYPE_CLOSE_EVENT,
        )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + RUN_TIMEOUT_S
        while loop.time() < deadline:
            try:
                reply = await self._stub.GetRunHistory(poll, timeout=deadline - loop.time())
            except grpc.aio.AioRpcError as e:
                if e.code() != grpc.StatusCode.DEADLINE_EXCEEDED:
                    raise
                continue
            if reply.history.events:
                closed = reply.history.events[-1]
                return closed.event_type == history_pb2.EVENT_TYPE_RUN_COMPLETED
            poll.next_page_token = reply.next_page_token
        return False

    async def close(self) -> None:
        await self._channel.close(None)


async def connect_driver(
    kind: Driver, address: str, flow: str, run_input: Any
) -> SdkDriver | StubDriver:
    if kind == "sdk":
        return await SdkDriver.connect(address, flow, run_input)
    return await StubDriver.connect(address, flow, run_input)


class WorkerProcesses:
    """The bench's block workers (bench/worker.py), each a process of its own."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.processes: list[asyncio.subprocess.Process] = []

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.processes]

    async def start(
        self,
        address: str,
        task_queue: str,
        *,
        processes: int,
        pollers: int,
        concurrency: int,
        eager: bool = True,
    ) -> None:
        for index in range(processes):
            log = (self.workdir / f"worker-{index}.log").open("ab")
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "bench.worker",
                "--address", address,
                "--namespace", NAMESPACE,
                "--task-queue", task_queue,
                "--pollers", str(pollers),
                "--concurrency", str(concurrency),
                "--index", str(index),
                *(() if eager else ("--no-eager",)),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=log,
                start_new_session=True,
            )  # fmt: skip
            log.close()
            self.processes.append(process)
        for process in self.processes:
            await self._expect(process, "ready", timeout_s=60)

    async def _expect(
        self, process: asyncio.subprocess.Process, answer: str, *, timeout_s: float
    ) -> None:
        assert process.stdout is not None
        line = await asyncio.wait_for(process.stdout.readline(), timeout_s)
        if line.decode().strip() != answer:
            raise RuntimeError(
                f"bench worker {process.pid} said {line!r}, not {answer!r}; see {self.workdir}"
            )

    async def schedule_to_start(self, keys: Iterable[str] | None = None) -> list[float]:
        """Schedule-to-start samples of the tasks of runs `keys` since the last call (every
        run's when None); samples of other runs are dropped."""
        wanted = None if keys is None else set(keys)
        found: list[float] = []
        for index, process in enumerate(self.processes):
            assert process.stdin is not None
            path = self.workdir / f"samples-{index}.json"
            process.stdin.write(f"dump {path}\n".encode())
            await process.stdin.drain()
            await self._expect(process, "ok", timeout_s=30)
            samples: dict[str, list[float]] = json.loads(path.read_text())
            for run_id, values in samples.items():
                if wanted is None or run_id in wanted:
                    found.extend(values)
        return found

    async def stop(self) -> None:
        for process in self.processes:
            if process.stdin is not None:
                with contextlib.suppress(ConnectionError):
                    process.stdin.close()
        for process in self.processes:
            try:
                await asyncio.wait_for(process.wait(), 15)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()
        self.processes.clear()

    def kill(self) -> None:
        """For the way out on an error: no waiting."""
        for process in self.processes:
            if process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
