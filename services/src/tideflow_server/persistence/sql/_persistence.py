from __future__ import annotations

from tideflow_server.persistence.sql._cluster import SqlClusterStore
from tideflow_server.persistence.sql._database import SqlDatabase
from tideflow_server.persistence.sql._events import SqlEventStore
from tideflow_server.persistence.sql._execution import SqlExecutionStore
from tideflow_server.persistence.sql._history import SqlHistoryStore
from tideflow_server.persistence.sql._metadata import SqlMetadataStore
from tideflow_server.persistence.sql._shard import SqlShardStore
from tideflow_server.persistence.sql._task import SqlTaskStore
from tideflow_server.persistence.sql._visibility import SqlVisibilityStore


class SqlPersistence:
    """Every store over one SQL database (a `Persistence`; mypy checks each store against its
    protocol wherever one is passed as the other)."""

    def __init__(
        self,
        db: SqlDatabase,
        *,
        executions: SqlExecutionStore | None = None,
        visibility: SqlVisibilityStore | None = None,
    ) -> None:
        self.db = db
        self.backend = db.name
        self.shards = SqlShardStore(db)
        self.executions = executions or SqlExecutionStore(db)
        self.history = SqlHistoryStore(db)
        self.tasks = SqlTaskStore(db)
        self.metadata = SqlMetadataStore(db)
        self.visibility = visibility or SqlVisibilityStore(db)
        self.cluster = SqlClusterStore(db)
        self.events = SqlEventStore(db)

    async def close(self) -> None:
        await self.db.close()
