"""The worker conformance suite's fixtures: one SQLite cluster for the package (what is tested
is the worker's side of the protocol, the same on every backend) and each language's example
worker as a real process, built once per session from the committed sources."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import make_cluster
from tests.support.cluster import Cluster, sdk_client
from tideflow.client import Client

ROOT = Path(__file__).resolve().parents[3]
LANGUAGES = ["python", "go", "node"]
NAMESPACE = "conformance"
READY_TIMEOUT_S = 30.0


@pytest.fixture(scope="package")
async def cluster(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Cluster]:
    started = make_cluster("sqlite", tmp_path_factory.mktemp("workers"), request)
    async with started.running():
        yield started


@pytest.fixture(scope="package")
async def client(cluster: Cluster) -> AsyncIterator[Client]:
    """A client of the namespace the suite registers."""
    async with sdk_client(cluster, NAMESPACE) as opened:
        yield opened


@dataclass
class WorkerProcess:
    """One example worker polling `task_queue` as `identity`."""

    language: str
    task_queue: str
    identity: str
    process: subprocess.Popen[bytes]
    log: Path

    def terminate(self) -> None:
        self.process.send_signal(signal.SIGTERM)

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def _argv(language: str, request: pytest.FixtureRequest) -> list[str]:
    if language == "python":
        return [sys.executable, "-m", "workers.python_example"]
    if language == "go":
        return [str(request.getfixturevalue("go_worker"))]
    return ["node", str(request.getfixturevalue("node_worker"))]


@dataclass
class Launcher:
    """Starts example workers of one language serving the conformance blocks, each polling
    (DescribeTaskQueue lists it) before it is handed out; kills what is left at the end."""

    language: str
    argv: list[str]
    cluster: Cluster
    client: Client
    folder: Path
    started: list[WorkerProcess] = field(default_factory=list)

    async def start(self, queue: str) -> WorkerProcess:
        identity = f"{self.language}-{uuid.uuid4().hex[:8]}"
        argv = [
            *self.argv,
            *("--address", self.cluster.frontend, "--namespace", self.client.namespace),
            *("--task-queue", queue, "--identity", identity, "--blocks", "conformance"),
            *("--drain-timeout-s", "10"),
        ]
        log = self.folder / f"{identity}.log"
        with log.open("wb") as out:
            process = subprocess.Popen(  # noqa: ASYNC220 - starts at once, nothing to await
                argv, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        worker = WorkerProcess(self.language, queue, identity, process, log)
        self.started.append(worker)
        await _until_polling(self.client, worker)
        return worker

    def kill(self) -> None:
        for worker in self.started:
            if worker.process.poll() is None:
                worker.process.kill()
                worker.process.wait()


@pytest.fixture(params=LANGUAGES)
async def launcher(
    request: pytest.FixtureRequest, cluster: Cluster, client: Client, tmp_path: Path
) -> AsyncIterator[Launcher]:
    language: str = request.param
    started = Launcher(language, _argv(language, request), cluster, client, tmp_path)
    try:
        yield started
    finally:
        started.kill()


@pytest.fixture
async def worker(launcher: Launcher) -> WorkerProcess:
    """The language's example worker on a queue of its own."""
    return await launcher.start(f"conf-{launcher.language}-{uuid.uuid4().hex[:8]}")


async def _until_polling(client: Client, worker: WorkerProcess) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + READY_TIMEOUT_S
    while loop.time() < deadline:
        if worker.process.poll() is not None:
            pytest.fail(f"{worker.language} worker exited:\n{worker.output()}")
        described = await client.describe_task_queue(worker.task_queue)
        if any(p.identity == worker.identity for p in described.pollers):
            return
        await asyncio.sleep(0.1)
    pytest.fail(f"{worker.language} worker never polled {worker.task_queue}:\n{worker.output()}")
