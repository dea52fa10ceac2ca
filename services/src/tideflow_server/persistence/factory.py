from __future__ import annotations

from tideflow_server.config import PersistenceConfig, PostgresConfig, SqliteConfig
from tideflow_server.persistence.cassandra import CassandraPersistence, open_cassandra
from tideflow_server.persistence.postgres import open_postgres
from tideflow_server.persistence.schema import SchemaDatabase
from tideflow_server.persistence.sql import SqlPersistence
from tideflow_server.persistence.sqlite import open_sqlite

AnyPersistence = SqlPersistence | CassandraPersistence


async def _open_sql(backend: str, sqlite: SqliteConfig, postgres: PostgresConfig) -> SqlPersistence:
    if backend == "sqlite":
        return await open_sqlite(
            sqlite.path, synchronous=sqlite.synchronous, busy_timeout_ms=sqlite.busy_timeout_ms
        )
    return await open_postgres(
        postgres.dsn,
        min_connections=postgres.min_connections,
        max_connections=postgres.max_connections,
        connect_timeout_s=postgres.connect_timeout_s,
        statement_timeout_s=postgres.statement_timeout_s,
        group_commit_calls=postgres.group_commit_calls,
    )


async def open_persistence(config: PersistenceConfig) -> AnyPersistence:
    """Open the configured backend's stores."""
    if config.backend != "cassandra":
        return await _open_sql(config.backend, config.sqlite, config.postgres)
    vis = config.visibility
    visibility = await _open_sql(vis.backend, vis.sqlite, vis.postgres)
    c = config.cassandra
    return await open_cassandra(
        contact_points=c.contact_points,
        port=c.port,
        keyspace=c.keyspace,
        replication=c.replication,
        visibility=visibility,
        local_dc=c.local_dc,
        consistency=c.consistency,
        serial_consistency=c.serial_consistency,
        connect_timeout_s=c.connect_timeout_s,
        request_timeout_s=c.request_timeout_s,
        username=c.username,
        password=c.password,
        group_commit=c.group_commit,
    )


def schema_databases(persistence: AnyPersistence) -> list[SchemaDatabase]:
    """Every database whose schema the server needs: Cassandra's keyspace and the SQL
    database that holds its visibility."""
    if isinstance(persistence, CassandraPersistence):
        return [persistence.db, persistence.visibility_persistence.db]
    return [persistence.db]
