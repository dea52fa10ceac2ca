"""TLS on the public port and mutual TLS between the roles, with certificates made at run time:
a plaintext client cannot talk to a TLS port, mutual TLS turns away a client without a
certificate (or with one of another CA), and a client with the right certificate and key, be
it the SDK, tidectl or a worker in any language, gets through. The chaos test
(tests/chaos/test_kill_processes.py) runs the split topology with mutual TLS between roles."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import pytest_asyncio

from deploy.local.cluster import TEST_SETTINGS
from deploy.local.pki import Pki, make_pki
from tests.support.cluster import Cluster, admin_key
from tests.support.example_workers import ROOT
from tideflow.api.v1 import operator_service_pb2, operator_service_pb2_grpc
from tideflow.client import Client

TIDECTL = str(Path(sys.executable).with_name("tidectl"))
NS = "secure"


@dataclass
class Secure:
    cluster: Cluster
    pki: Pki
    worker_key: str
    writer_key: str


def _credentials(pki: Pki, *, cert: bool = True, ca: Path | None = None) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(
        (ca or pki.public_ca).read_bytes(),
        pki.client.key.read_bytes() if cert else None,
        pki.client.cert.read_bytes() if cert else None,
    )


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def secure(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Secure]:
    root = tmp_path_factory.mktemp("tls")
    pki = make_pki(root / "pki")
    cluster = Cluster(
        root,
        {"backend": "sqlite", "sqlite": {"path": str(root / "t.db")}},
        settings={**TEST_SETTINGS, "security": {"auth": {"enabled": True}}},
        pki=pki,
    )
    cluster.schema_setup()
    await cluster.start()
    try:
        admin = admin_key(cluster)
        async with await Client.connect(
            cluster.frontend, namespace=NS, api_key=admin, tls=_credentials(pki)
        ) as client:
            await client.register_namespace(NS)
            _, worker_key = await client.create_api_key(role="worker")
            _, writer_key = await client.create_api_key(role="writer")
        yield Secure(cluster, pki, worker_key, writer_key)
    finally:
        cluster.kill()


async def _cluster_info(channel: grpc.aio.Channel) -> operator_service_pb2.GetClusterInfoResponse:
    stub = operator_service_pb2_grpc.OperatorServiceStub(channel)
    reply: operator_service_pb2.GetClusterInfoResponse = await stub.GetClusterInfo(
        operator_service_pb2.GetClusterInfoRequest(), timeout=5
    )
    return reply


async def _refused(channel: grpc.aio.Channel) -> None:
    async with channel:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await _cluster_info(channel)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


@pytest.mark.asyncio(loop_scope="module")
async def test_a_plaintext_client_cannot_talk_to_a_tls_port(secure: Secure) -> None:
    await _refused(grpc.aio.insecure_channel(secure.cluster.frontend))
    internal = f"127.0.0.1:{secure.cluster.ports['history']}"
    await _refused(grpc.aio.insecure_channel(internal))


@pytest.mark.asyncio(loop_scope="module")
async def test_mutual_tls_turns_away_a_client_without_a_trusted_certificate(
    secure: Secure,
) -> None:
    frontend = secure.cluster.frontend
    await _refused(grpc.aio.secure_channel(frontend, _credentials(secure.pki, cert=False)))
    stranger = grpc.ssl_channel_credentials(
        secure.pki.public_ca.read_bytes(),
        secure.pki.stranger.key.read_bytes(),
        secure.pki.stranger.cert.read_bytes(),
    )
    await _refused(grpc.aio.secure_channel(frontend, stranger))
    # The public client certificate is no key to the roles' own ports (their CA is another).
    history = f"127.0.0.1:{secure.cluster.ports['history']}"
    public_client = grpc.ssl_channel_credentials(
        secure.pki.internal_ca.read_bytes(),
        secure.pki.client.key.read_bytes(),
        secure.pki.client.cert.read_bytes(),
    )
    await _refused(
        grpc.aio.secure_channel(
            history, public_client, options=[("grpc.ssl_target_name_override", "tideflow-role")]
        )
    )


@pytest.mark.asyncio(loop_scope="module")
async def test_tidectl_connects_with_its_tls_options(secure: Secure) -> None:
    pki = secure.pki
    done = await asyncio.to_thread(
        subprocess.run,
        [
            TIDECTL,
            *("--address", secure.cluster.frontend, "-n", NS, "--api-key", secure.writer_key),
            *("--tls-ca", str(pki.public_ca), "--tls-cert", str(pki.client.cert)),
            *("--tls-key", str(pki.client.key), "-o", "json", "cluster", "health"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert '"status": "SERVING"' in done.stdout


@pytest.mark.asyncio(loop_scope="module")
@pytest.mark.parametrize("language", ["python", "go", "node"])
async def test_a_worker_in_any_language_runs_blocks_over_mutual_tls_with_a_worker_key(
    secure: Secure, language: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    argv = {
        "python": lambda: [sys.executable, "-m", "workers.python_example"],
        "go": lambda: [str(request.getfixturevalue("go_worker"))],
        "node": lambda: ["node", str(request.getfixturevalue("node_worker"))],
    }[language]()
    pki, queue = secure.pki, f"tls-{language}-{uuid.uuid4().hex[:6]}"
    log = tmp_path / "worker.log"
    with log.open("wb") as out:
        worker = subprocess.Popen(  # noqa: ASYNC220 - starts at once, nothing to await
            [
                *argv,
                *("--address", secure.cluster.frontend, "--namespace", NS),
                *("--task-queue", queue, "--blocks", "conformance"),
                *("--api-key", secure.worker_key, "--tls-ca", str(pki.public_ca)),
                *("--tls-cert", str(pki.client.cert), "--tls-key", str(pki.client.key)),
            ],
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    try:
        async with await Client.connect(
            secure.cluster.frontend,
            namespace=NS,
            api_key=secure.writer_key,
            tls=_credentials(pki),
        ) as client:
            flow = f"tls_{uuid.uuid4().hex[:6]}"
            await client.register_flow(
                {
                    "name": flow,
                    "task_queue": queue,
                    "timeouts": {"start_to_close": "10s"},
                    "blocks": [
                        {"id": "a", "external": {"block": "conf.echo@1"}, "input": "${input}"}
                    ],
                    "output": "${blocks.a.output}",
                }
            )
            result = await asyncio.wait_for(client.execute_run(flow, {"over": "tls"}), 60)
        assert result == {"over": "tls"}, log.read_text()
    finally:
        worker.kill()
        worker.wait()
