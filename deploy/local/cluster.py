"""Real Tideflow server processes on this machine, for tests, the bench and local clusters.

A `Cluster` runs the three roles either in one process, as three role processes, or as a
frontend with several history and matching processes, on ports chosen up front (so a killed
process restarts on the same address and takes its shards and partitions back), over SQLite,
PostgreSQL or Cassandra. Processes are started with the operator's command
(`tideflow-server start --config ... --roles ...`), waited for through gRPC health checking,
and can be killed with SIGKILL and restarted.

Every process reads the same YAML file; a second or later process of a role gets its own port
through the environment (`TIDEFLOW_SERVICES__HISTORY__PORT`), which the server layers over
the file. The hosts find each other through the membership table.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from deploy.ports import free_port
from tideflow.api.v1 import operator_service_pb2, operator_service_pb2_grpc

if TYPE_CHECKING:
    from deploy.local.pki import Pki

SERVER = str(Path(sys.executable).with_name("tideflow-server"))
ROLES = ("frontend", "history", "matching")
INTERNAL_SERVER_NAME = "tideflow-role"
"""The name in the roles' certificate (deploy/local/pki.py), checked on internal calls."""


def tls_settings(pki: Pki, *, public: bool) -> dict[str, Any]:
    """The `security` settings of a cluster with `pki`: mutual TLS between the roles (the
    internal CA), and with `public` on the public port too (clients need a certificate from
    the public CA)."""
    settings: dict[str, Any] = {
        "internal_tls": {
            "cert_file": str(pki.role.cert),
            "key_file": str(pki.role.key),
            "ca_file": str(pki.internal_ca),
            "server_name": INTERNAL_SERVER_NAME,
        },
    }
    if public:
        settings["public_tls"] = {
            "cert_file": str(pki.frontend.cert),
            "key_file": str(pki.frontend.key),
            "client_ca_file": str(pki.public_ca),
        }
    return settings


def role_channel(
    address: str, role: str, pki: Pki | None, *, public_tls: bool = True
) -> grpc.aio.Channel:
    """A channel to one role's port: plaintext, or as a client of that port's TLS."""
    if pki is None or (role == "frontend" and not public_tls):
        return grpc.aio.insecure_channel(address)
    if role == "frontend":
        credentials = grpc.ssl_channel_credentials(
            pki.public_ca.read_bytes(), pki.client.key.read_bytes(), pki.client.cert.read_bytes()
        )
        return grpc.aio.secure_channel(address, credentials)
    credentials = grpc.ssl_channel_credentials(
        pki.internal_ca.read_bytes(), pki.role.key.read_bytes(), pki.role.cert.read_bytes()
    )
    return grpc.aio.secure_channel(
        address, credentials, options=[("grpc.ssl_target_name_override", INTERNAL_SERVER_NAME)]
    )


TEST_SETTINGS: Mapping[str, Any] = {
    "membership": {"heartbeat_interval_s": 0.5, "ttl_s": 5.0},
    "history": {
        "ack_interval_s": 0.5,
        "long_poll_timeout_s": 10.0,
        "wait_for_close_timeout_s": 10.0,
    },
    "matching": {"long_poll_timeout_s": 5.0},
}
"""Fast membership and short long polls, so tests notice a killed process quickly."""


@dataclass
class ServerProcess:
    name: str
    roles: list[str]
    config: Path
    ports: dict[str, int]
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    env: dict[str, str] = field(default_factory=dict)
    """Added to the environment of the process (settings layered over the config file)."""
    pki: Pki | None = None
    public_tls: bool = True

    @property
    def pid(self) -> int | None:
        """The process id while it runs."""
        if self.process is None or self.process.poll() is not None:
            return None
        return self.process.pid

    def start(self) -> None:
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [SERVER, "start", "--config", str(self.config), "--roles", ",".join(self.roles)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **self.env},
            start_new_session=True,
        )
        log.close()

    async def wait_serving(self, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        for role in self.roles:
            address = f"127.0.0.1:{self.ports[role]}"
            async with role_channel(address, role, self.pki, public_tls=self.public_tls) as channel:
                stub = health_pb2_grpc.HealthStub(channel)
                while True:
                    if self.process is not None and self.process.poll() is not None:
                        raise RuntimeError(f"{self.name} exited early:\n{self.logs()}")
                    try:
                        reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=1.0)
                        if reply.status == health_pb2.HealthCheckResponse.SERVING:
                            break
                    except grpc.aio.AioRpcError:
                        pass
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"{self.name} not serving:\n{self.logs()}")
                    await asyncio.sleep(0.1)

    def kill(self) -> None:
        """SIGKILL: no shutdown of any kind, as when a machine dies."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)

    def stop(self) -> None:
        """SIGTERM: a graceful shutdown."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()

    def logs(self) -> str:
        try:
            return self.log_path.read_text()[-6000:]
        except OSError:
            return ""


@dataclass
class Cluster:
    root: Path
    persistence: dict[str, object]
    split: bool = False
    """Role processes instead of one process with all roles."""
    shard_count: int = 4
    processes: dict[str, ServerProcess] = field(default_factory=dict)
    history_processes: int = 1
    """With `split`: how many history processes share the shards."""
    matching_processes: int = 1
    """With `split`: how many matching processes share the task queue partitions."""
    settings: Mapping[str, Any] | None = None
    """Config sections besides persistence, cluster and services (membership, history,
    matching, frontend). None: TEST_SETTINGS; `{}`: the server's own defaults."""
    cluster_name: str = "test"
    pki: Pki | None = None
    """Mutual TLS between the roles, and on the public port unless not `public_tls` (see
    `tls_settings`); tests connect with `channel(role)`."""
    public_tls: bool = True

    def __post_init__(self) -> None:
        if not self.split and (self.history_processes != 1 or self.matching_processes != 1):
            raise ValueError("several history or matching processes need split=True")
        if self.history_processes < 1 or self.matching_processes < 1:
            raise ValueError("a cluster needs at least one history and one matching process")
        counts = {"history": self.history_processes, "matching": self.matching_processes}
        role_ports = {role: [free_port() for _ in range(counts.get(role, 1))] for role in ROLES}
        # The first process of each role listens where the YAML says; tests address it.
        self.ports = {role: ports[0] for role, ports in role_ports.items()}
        self.config = self.root / "tideflow.yaml"
        extra = dict(TEST_SETTINGS if self.settings is None else self.settings)
        if self.pki is not None:
            tls = tls_settings(self.pki, public=self.public_tls)
            extra["security"] = {**extra.get("security", {}), **tls}
        self.config.write_text(
            yaml.safe_dump(
                {
                    "persistence": self.persistence,
                    "cluster": {"name": self.cluster_name, "history_shard_count": self.shard_count},
                    "services": {
                        role: {"host": "127.0.0.1", "port": port}
                        for role, port in self.ports.items()
                    },
                    **{section: dict(values) for section, values in extra.items()},
                }
            )
        )
        if not self.split:
            self._add("+".join(ROLES), list(ROLES), self.ports, {})
            return
        for role in ("history", "matching", "frontend"):
            ports = role_ports[role]
            for index, port in enumerate(ports):
                name = role if len(ports) == 1 else f"{role}-{index + 1}"
                env = {} if index == 0 else {f"TIDEFLOW_SERVICES__{role.upper()}__PORT": str(port)}
                self._add(name, [role], {**self.ports, role: port}, env)

    def _add(self, name: str, roles: list[str], ports: dict[str, int], env: dict[str, str]) -> None:
        self.processes[name] = ServerProcess(
            name=name,
            roles=roles,
            config=self.config,
            ports=ports,
            log_path=self.root / f"{name}.log",
            env=env,
            pki=self.pki,
            public_tls=self.public_tls,
        )

    @property
    def frontend(self) -> str:
        return f"127.0.0.1:{self.ports['frontend']}"

    def channel(self, role: str = "frontend") -> grpc.aio.Channel:
        """A channel to the first process of `role`, with this cluster's TLS."""
        address = f"127.0.0.1:{self.ports[role]}"
        return role_channel(address, role, self.pki, public_tls=self.public_tls)

    def process_of(self, role: str) -> ServerProcess:
        """The first process serving `role`."""
        return next(p for p in self.processes.values() if role in p.roles)

    def schema_setup(self) -> None:
        subprocess.run(
            [SERVER, "schema", "setup", "--config", str(self.config)],
            check=True,
            capture_output=True,
            timeout=120,
        )

    @contextlib.asynccontextmanager
    async def running(self, *, settled: bool = False) -> AsyncIterator[Cluster]:
        """Started for the block (`settled`: every shard owned by a member too), and every
        process killed after it, also when the start failed halfway."""
        try:
            await self.start()
            if settled:
                await self.wait_settled()
            yield self
        finally:
            self.kill()

    async def start(self) -> None:
        for process in self.processes.values():
            process.start()
        await asyncio.gather(*(p.wait_serving() for p in self.processes.values()))

    async def wait_settled(self, timeout_s: float = 60.0) -> None:
        """Wait until the frontend sees every history and matching process as a member, every
        shard has been acquired, and no shard has changed owner for two membership beats, so
        that load does not start amid shard moves."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        extra = TEST_SETTINGS if self.settings is None else self.settings
        beat = float(extra.get("membership", {}).get("heartbeat_interval_s", 2.0))
        expected = {"history": self.history_processes, "matching": self.matching_processes}
        previous: object = None
        changed_at = loop.time()
        async with self.channel() as channel:
            stub = operator_service_pb2_grpc.OperatorServiceStub(channel)
            while True:
                try:
                    members = await stub.ListClusterMembers(
                        operator_service_pb2.ListClusterMembersRequest(), timeout=5
                    )
                    shards = await stub.ListShards(
                        operator_service_pb2.ListShardsRequest(), timeout=5
                    )
                    seen = {
                        role: sum(1 for m in members.members if m.role == role) for role in expected
                    }
                    histories = {m.host_id for m in members.members if m.role == "history"}
                    snapshot = (seen, [(s.owner_host, s.range_id) for s in shards.shards])
                    if snapshot != previous:
                        previous, changed_at = snapshot, loop.time()
                    # Owners are assigned by rendezvous hashing, which may give one host no
                    # shard at all; what must hold is that each shard's owner is a live member.
                    ready = seen == expected and all(
                        s.range_id > 0 and s.owner_host in histories for s in shards.shards
                    )
                    if ready and loop.time() - changed_at >= 2 * beat:
                        return
                    waiting = [
                        s.shard_id
                        for s in shards.shards
                        if not (s.range_id > 0 and s.owner_host in histories)
                    ]
                    state = f"members {seen}, shards not yet owned by a member {waiting}"
                except grpc.aio.AioRpcError as e:
                    state = f"{e.code().name}: {e.details()}"
                if loop.time() > deadline:
                    raise TimeoutError(f"cluster not settled ({state}):\n{self.logs()}")
                await asyncio.sleep(0.2)

    async def restart(self, role: str) -> None:
        process = self.process_of(role)
        process.start()
        await process.wait_serving()

    def stop(self) -> None:
        for process in self.processes.values():
            process.stop()

    def kill(self) -> None:
        for process in self.processes.values():
            process.kill()

    def logs(self) -> str:
        return "\n".join(f"== {p.name}\n{p.logs()}" for p in self.processes.values())

    def log_lines(self, *needles: str, limit: int = 200) -> str:
        """The lines of every process's whole log that contain any of `needles` (the tail
        `logs` shows may have scrolled past what a failure needs)."""
        found: list[str] = []
        for process in self.processes.values():
            try:
                text = process.log_path.read_text(errors="replace")
            except OSError:
                continue
            found += [
                f"{process.name}: {line}"
                for line in text.splitlines()
                if any(needle in line for needle in needles)
            ]
        return "\n".join(found[-limit:])
