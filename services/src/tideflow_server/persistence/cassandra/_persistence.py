from __future__ import annotations

from collections.abc import Mapping, Sequence

from tideflow_server.persistence.cassandra._database import CassandraDatabase
from tideflow_server.persistence.cassandra._driver import connect
from tideflow_server.persistence.cassandra._events import CassandraEventStore
from tideflow_server.persistence.cassandra._execution import (
    CassandraExecutionStore,
    CassandraShardStore,
)
from tideflow_server.persistence.cassandra._history import CassandraHistoryStore
from tideflow_server.persistence.cassandra._metadata import (
    CassandraClusterStore,
    CassandraMetadataStore,
)
from tideflow_server.persistence.cassandra._task import CassandraTaskStore
from tideflow_server.persistence.sql import SqlPersistence


class CassandraPersistence:
    """Every store but visibility over one Cassandra keyspace; visibility is a SQL
    database's store (SQLite for one node, PostgreSQL otherwise), opened and closed with it."""

    backend = "cassandra"

    def __init__(
        self, db: CassandraDatabase, visibility: SqlPersistence, *, group_commit: bool = True
    ) -> None:
        self.db = db
        self.visibility_persistence = visibility
        self.shards = CassandraShardStore(db)
        self.history = CassandraHistoryStore(db)
        self.executions = CassandraExecutionStore(db, self.history, group_commit=group_commit)
        self.tasks = CassandraTaskStore(db)
        self.metadata = CassandraMetadataStore(db)
        self.cluster = CassandraClusterStore(db)
        self.events = CassandraEventStore(db)
        self.visibility = visibility.visibility

    async def close(self) -> None:
        try:
            await self.db.close()
        finally:
            await self.visibility_persistence.close()


async def open_cassandra(
    *,
    contact_points: Sequence[str],
    port: int,
    keyspace: str,
    replication: Mapping[str, object],
    visibility: SqlPersistence,
    local_dc: str | None = None,
    consistency: str = "LOCAL_QUORUM",
    serial_consistency: str = "LOCAL_SERIAL",
    connect_timeout_s: float = 10.0,
    request_timeout_s: float = 30.0,
    username: str | None = None,
    password: str | None = None,
    group_commit: bool = True,
) -> CassandraPersistence:
    """Connect; the schema is set up separately (`tideflow-server schema`). Takes ownership
    of `visibility` (closed with the returned persistence, or here if connecting fails)."""
    try:
        session = await connect(
            contact_points,
            port,
            local_dc=local_dc,
            connect_timeout_s=connect_timeout_s,
            request_timeout_s=request_timeout_s,
            consistency=consistency,
            serial_consistency=serial_consistency,
            username=username,
            password=password,
        )
    except BaseException:
        await visibility.close()
        raise
    return CassandraPersistence(
        CassandraDatabase(session, keyspace, replication), visibility, group_commit=group_commit
    )
