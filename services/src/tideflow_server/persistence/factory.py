from __future__ import annotations

from tideflow_server.config import PersistenceConfig
from tideflow_server.persistence.postgres import open_postgres
from tideflow_server.persistence.sql import SqlPersistence
from tideflow_server.persistence.sqlite import open_sqlite


async def open_persistence(config: PersistenceConfig) -> SqlPersistence:
    """Open the configured backend's stores."""
    if config.backend == "sqlite":
        return await open_sqlite(
            config.sqlite.path,
            synchronous=config.sqlite.synchronous,
            busy_timeout_ms=config.sqlite.busy_timeout_ms,
        )
    pg = config.postgres
    return await open_postgres(
        pg.dsn,
        min_connections=pg.min_connections,
        max_connections=pg.max_connections,
        connect_timeout_s=pg.connect_timeout_s,
        statement_timeout_s=pg.statement_timeout_s,
    )
