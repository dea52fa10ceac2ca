"""Real Tideflow server processes for integration tests.

A `Cluster` runs the three roles either in one process or as three role processes, on ports
chosen up front (so a killed process restarts on the same address and takes its shards and
partitions back), over SQLite or a PostgreSQL database. Processes are started with the
operator's command (`tideflow-server start --config ... --roles ...`), waited for through
gRPC health checking, and can be killed with SIGKILL and restarted.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.support.postgres import free_port

SERVER = str(Path(sys.executable).with_name("tideflow-server"))


@dataclass
class ServerProcess:
    name: str
    roles: list[str]
    config: Path
    ports: dict[str, int]
    log_path: Path
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [SERVER, "start", "--config", str(self.config), "--roles", ",".join(self.roles)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            start_new_session=True,
        )
        log.close()

    async def wait_serving(self, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        for role in self.roles:
            address = f"127.0.0.1:{self.ports[role]}"
            async with grpc.aio.insecure_channel(address) as channel:
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
    """Three role processes instead of one process with all roles."""
    shard_count: int = 4
    processes: dict[str, ServerProcess] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.ports = {role: free_port() for role in ("frontend", "history", "matching")}
        self.config = self.root / "tideflow.yaml"
        self.config.write_text(
            yaml.safe_dump(
                {
                    "persistence": self.persistence,
                    "cluster": {"name": "test", "history_shard_count": self.shard_count},
                    "services": {
                        role: {"host": "127.0.0.1", "port": port}
                        for role, port in self.ports.items()
                    },
                    "membership": {"heartbeat_interval_s": 0.5, "ttl_s": 5.0},
                    "history": {"ack_interval_s": 0.5, "long_poll_timeout_s": 10.0},
                    "matching": {"long_poll_timeout_s": 5.0},
                }
            )
        )
        groups: Sequence[list[str]] = (
            [["history"], ["matching"], ["frontend"]]
            if self.split
            else [["frontend", "history", "matching"]]
        )
        for roles in groups:
            name = "+".join(roles)
            self.processes[name] = ServerProcess(
                name=name,
                roles=roles,
                config=self.config,
                ports=self.ports,
                log_path=self.root / f"{name}.log",
            )

    @property
    def frontend(self) -> str:
        return f"127.0.0.1:{self.ports['frontend']}"

    def process_of(self, role: str) -> ServerProcess:
        return next(p for p in self.processes.values() if role in p.roles)

    def schema_setup(self) -> None:
        subprocess.run(
            [SERVER, "schema", "setup", "--config", str(self.config)],
            check=True,
            capture_output=True,
            timeout=60,
        )

    async def start(self) -> None:
        for process in self.processes.values():
            process.start()
        await asyncio.gather(*(p.wait_serving() for p in self.processes.values()))

    async def restart(self, role: str) -> None:
        process = self.process_of(role)
        process.start()
        await process.wait_serving()

    def stop(self) -> None:
        for process in self.processes.values():
            process.stop()

    def logs(self) -> str:
        return "\n".join(f"== {p.name}\n{p.logs()}" for p in self.processes.values())
