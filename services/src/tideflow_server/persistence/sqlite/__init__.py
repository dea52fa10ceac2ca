"""SQLite backend: the embedded default. One writer connection (WAL, BEGIN IMMEDIATE) and one
reader connection, so reads see the last commit without waiting for the writer."""

from tideflow_server.persistence.sqlite._database import SqliteDatabase, open_sqlite

__all__ = ["SqliteDatabase", "open_sqlite"]
