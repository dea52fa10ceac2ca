"""Store implementations shared by the SQL backends (SQLite, PostgreSQL).

The backends differ in how they connect, lock and report errors, not in their queries; each
provides a `SqlDatabase` and these stores run the same statements on both.
"""

from tideflow_server.persistence.sql._database import SqlConn, SqlDatabase
from tideflow_server.persistence.sql._persistence import SqlPersistence

__all__ = ["SqlConn", "SqlDatabase", "SqlPersistence"]
