"""Cassandra backend (cassandra-driver).

A shard's row, executions, current-run pointers and outbox live in one partition of
`shard_partitions`, so a decision is one single-partition conditional batch fenced by
`IF range_id = ?` on the shard row and `IF db_version = ?` / `IF NOT EXISTS` on the
execution. History batches live in their own table: appended before the batch, deleted again
if it is not applied, and invisible meanwhile (reads stop at the committed next_event_id and
follow the committed chain). Visibility stays in SQL.
"""

from tideflow_server.persistence.cassandra._database import CassandraDatabase
from tideflow_server.persistence.cassandra._persistence import (
    CassandraPersistence,
    open_cassandra,
)

__all__ = ["CassandraDatabase", "CassandraPersistence", "open_cassandra"]
