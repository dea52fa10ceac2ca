"""A whole local system: the database servers a topology needs and a `Cluster` on them,
started together and removed together.

| topology | processes | default backend |
|---|---|---|
| dev | one process with all roles | sqlite |
| split | frontend, history and matching processes | postgres |
| cluster | frontend, N history and M matching processes | postgres |

`cassandra` keeps histories on a throwaway Cassandra (deploy/cassandra/): one node, or a ring
of `cassandra_nodes` on 127.0.0.1-N with replication factor N, LOCAL_QUORUM and SERIAL; and
visibility on PostgreSQL, as deploy/config/cassandra.yaml does. PostgreSQL always runs durable
here (fsync, synchronous_commit and full_page_writes on).
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

from deploy.cassandra.cassandra import CassandraNode, CassandraRing
from deploy.local.cluster import Cluster
from deploy.local.postgres import PostgresServer

Topology = Literal["dev", "split", "cluster"]
Backend = Literal["sqlite", "postgres", "cassandra"]
TOPOLOGIES: tuple[str, ...] = get_args(Topology)
BACKENDS: tuple[str, ...] = get_args(Backend)
DEFAULT_BACKEND: Mapping[str, Backend] = {
    "dev": "sqlite",
    "split": "postgres",
    "cluster": "postgres",
}
DATABASE = "tideflow"
"""The cluster's database on the PostgreSQL server (histories, or visibility on Cassandra)."""
KEYSPACE = "tideflow"


@dataclass
class Deployment:
    topology: Topology
    backend: Backend
    shard_count: int = 16
    history_processes: int = 1
    """Only with the cluster topology."""
    matching_processes: int = 1
    """Only with the cluster topology."""
    settings: Mapping[str, Any] = field(default_factory=dict)
    """Server config sections besides persistence, cluster and services; `{}` keeps the
    server's defaults."""
    max_connections: int = 20
    """Database connections per server process (PostgreSQL pools)."""
    cassandra_nodes: int = 1
    """With the cassandra backend: one node, or a ring of this many (replication factor the
    same)."""
    with_postgres: bool = False
    """Start PostgreSQL even when the backend does not need it (e.g. for other systems)."""
    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="tideflow-local-")))
    postgres: PostgresServer | None = None
    cassandra: CassandraNode | None = None
    ring: CassandraRing | None = None
    cluster: Cluster | None = None

    def __post_init__(self) -> None:
        if self.topology != "cluster" and (self.history_processes, self.matching_processes) != (
            1,
            1,
        ):
            raise ValueError("several history or matching processes need --topology cluster")
        if self.backend == "sqlite" and self.topology == "cluster":
            raise ValueError("the cluster topology runs on postgres or cassandra, not sqlite")

    @property
    def frontend(self) -> str:
        assert self.cluster is not None, "not started"
        return self.cluster.frontend

    def _persistence(self) -> dict[str, object]:
        if self.backend == "sqlite":
            return {"backend": "sqlite", "sqlite": {"path": str(self.root / "tideflow.db")}}
        assert self.postgres is not None
        postgres = {"dsn": self.postgres.dsn(DATABASE), "max_connections": self.max_connections}
        if self.backend == "postgres":
            return {"backend": "postgres", "postgres": postgres}
        cassandra: dict[str, object] = {"keyspace": KEYSPACE}
        if self.ring is not None:
            cassandra |= {
                "contact_points": list(self.ring.addresses),
                "port": self.ring.native_port,
                "replication": {"class": "SimpleStrategy", "replication_factor": self.ring.size},
                "consistency": "LOCAL_QUORUM",
                "serial_consistency": "SERIAL",
            }
        else:
            assert self.cassandra is not None
            ports = self.cassandra.ports()
            assert ports is not None
            cassandra |= {
                "contact_points": ["127.0.0.1"],
                "port": ports.native,
                "replication": {"class": "SimpleStrategy", "replication_factor": 1},
            }
        return {
            "backend": "cassandra",
            "cassandra": cassandra,
            "visibility": {"backend": "postgres", "postgres": postgres},
        }

    async def start(self) -> None:
        """Start the databases, set the schema up and start the cluster; on failure, remove
        whatever was started."""
        try:
            if self.backend != "sqlite" or self.with_postgres:
                self.postgres = PostgresServer(durable=True).start()
                self.postgres.psql(f"CREATE DATABASE {DATABASE}")
            if self.backend == "cassandra" and self.cassandra_nodes > 1:
                self.ring = CassandraRing(self.root / "cassandra", self.cassandra_nodes)
                self.ring.start()
            elif self.backend == "cassandra":
                self.cassandra = CassandraNode(self.root / "cassandra")
                self.cassandra.start()
            self.cluster = Cluster(
                self.root,
                self._persistence(),
                split=self.topology != "dev",
                shard_count=self.shard_count,
                history_processes=self.history_processes,
                matching_processes=self.matching_processes,
                settings=self.settings,
                cluster_name=f"local-{self.topology}",
            )
            self.cluster.schema_setup()
            await self.cluster.start()
            await self.cluster.wait_settled()
        except BaseException:
            self.stop()
            raise

    def pids(self) -> dict[str, int]:
        """Process ids to measure, by name: each server process, `postgres` (the postmaster)
        and `cassandra` (the JVM)."""
        found: dict[str, int] = {}
        if self.cluster is not None:
            for name, process in self.cluster.processes.items():
                if process.pid is not None:
                    found["server" if self.topology == "dev" else name] = process.pid
        if self.postgres is not None and (pid := self.postgres.pid()) is not None:
            found["postgres"] = pid
        if self.cassandra is not None and (pid := self.cassandra.pid()) is not None:
            found["cassandra"] = pid
        for i, node in enumerate(self.ring.nodes if self.ring is not None else []):
            if (pid := node.pid()) is not None:
                found["cassandra" if i == 0 else f"cassandra{i + 1}"] = pid
        return found

    def logs(self) -> str:
        return self.cluster.logs() if self.cluster is not None else ""

    def stop(self, *, keep_postgres: bool = False) -> None:
        """Stop the servers (gracefully), Cassandra and, unless kept, PostgreSQL, and remove
        their files. Safe to call twice."""
        if self.cluster is not None:
            with contextlib.suppress(Exception):
                self.cluster.stop()
            self.cluster = None
        if self.cassandra is not None:
            with contextlib.suppress(Exception):
                self.cassandra.stop()
            self.cassandra = None
        if self.ring is not None:
            with contextlib.suppress(Exception):
                self.ring.stop()
            self.ring = None
        if self.postgres is not None and not keep_postgres:
            self.postgres.remove()
            self.postgres = None
        shutil.rmtree(self.root, ignore_errors=True)
