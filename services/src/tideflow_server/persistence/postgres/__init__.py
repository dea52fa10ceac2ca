"""PostgreSQL backend (asyncpg). Decisions fence inside the transaction: the shard row is
read FOR SHARE, conditional updates check db_version, and acquisition updates the shard row,
so a stale owner's transaction either commits before the new owner's acquisition or fails."""

from tideflow_server.persistence.postgres._database import PostgresDatabase, open_postgres

__all__ = ["PostgresDatabase", "open_postgres"]
