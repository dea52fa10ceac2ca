from __future__ import annotations

from tideflow_server.persistence.errors import NotFound, ShardOwnershipLost
from tideflow_server.persistence.records import ShardRow
from tideflow_server.persistence.sql._database import SqlConn, SqlDatabase


class SqlShardStore:
    def __init__(self, db: SqlDatabase) -> None:
        self._db = db

    async def create_shard(self, row: ShardRow) -> None:
        async with self._db.write() as conn:
            await conn.execute(
                "INSERT INTO shards (shard_id, range_id, data) VALUES (?, ?, ?)",
                row.shard_id,
                row.range_id,
                row.data,
            )

    async def get_shard(self, shard_id: int) -> ShardRow:
        async with self._db.read() as conn:
            found = await conn.fetchone(
                "SELECT range_id, data FROM shards WHERE shard_id = ?", shard_id
            )
        if found is None:
            raise NotFound(f"shard {shard_id} does not exist")
        return ShardRow(shard_id=shard_id, range_id=found[0], data=bytes(found[1]))

    async def update_shard(self, row: ShardRow, *, previous_range_id: int) -> None:
        async with self._db.write() as conn:
            changed = await conn.execute(
                "UPDATE shards SET range_id = ?, data = ? WHERE shard_id = ? AND range_id = ?",
                row.range_id,
                row.data,
                row.shard_id,
                previous_range_id,
            )
            if changed != 1:
                raise await _ownership_lost(conn, row.shard_id, previous_range_id)

    async def fence(self, shard_id: int, range_id: int) -> None:
        # The update waits for the row's share locks: every transaction still fenced on the
        # shard (a commit whose reply was lost) has committed or rolled back when it returns.
        async with self._db.write() as conn:
            changed = await conn.execute(
                "UPDATE shards SET range_id = ? WHERE shard_id = ? AND range_id = ?",
                range_id,
                shard_id,
                range_id,
            )
            if changed != 1:
                raise await _ownership_lost(conn, shard_id, range_id)


async def _ownership_lost(conn: SqlConn, shard_id: int, expected: int) -> ShardOwnershipLost:
    """What a fenced write that changed no row ran into: the range_id as it now stands."""
    actual = await conn.fetchone("SELECT range_id FROM shards WHERE shard_id = ?", shard_id)
    return ShardOwnershipLost(
        shard_id=shard_id,
        expected_range_id=expected,
        actual_range_id=None if actual is None else actual[0],
    )


async def check_range(db: SqlDatabase, conn: SqlConn, shard_id: int, range_id: int) -> None:
    """Fence a write transaction on the shard's range_id.

    The row stays share-locked until commit, so an acquisition (which updates it) waits for
    this transaction or makes it fail here; either way a stale owner commits nothing.
    """
    found = await conn.fetchone(
        f"SELECT range_id FROM shards WHERE shard_id = ?{db.for_share}", shard_id
    )
    actual = None if found is None else found[0]
    if actual != range_id:
        raise ShardOwnershipLost(
            shard_id=shard_id, expected_range_id=range_id, actual_range_id=actual
        )
