from __future__ import annotations

from tideflow_server.persistence.errors import NotFound
from tideflow_server.persistence.records import ClusterMetadataRow, MemberRow
from tideflow_server.persistence.sql._database import SqlDatabase

_MEMBER_COLUMNS = "host_id, role, rpc_address, session_start_ms, last_heartbeat_ms, expires_ms"


class SqlClusterStore:
    def __init__(self, db: SqlDatabase) -> None:
        self._db = db

    async def init_cluster_metadata(self, row: ClusterMetadataRow) -> ClusterMetadataRow:
        async with self._db.write() as conn:
            await conn.execute(
                "INSERT INTO cluster_metadata (id, cluster_name, history_shard_count, data)"
                " VALUES (1, ?, ?, ?) ON CONFLICT DO NOTHING",
                row.cluster_name,
                row.history_shard_count,
                row.data,
            )
        return await self.get_cluster_metadata()

    async def get_cluster_metadata(self) -> ClusterMetadataRow:
        async with self._db.read() as conn:
            found = await conn.fetchone(
                "SELECT cluster_name, history_shard_count, data FROM cluster_metadata WHERE id = 1"
            )
        if found is None:
            raise NotFound("cluster metadata is not initialised")
        return ClusterMetadataRow(
            cluster_name=found[0], history_shard_count=found[1], data=bytes(found[2])
        )

    async def upsert_member(self, row: MemberRow) -> None:
        async with self._db.write() as conn:
            await conn.execute(
                f"INSERT INTO cluster_members ({_MEMBER_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (host_id) DO UPDATE SET role = excluded.role,"
                " rpc_address = excluded.rpc_address,"
                " session_start_ms = excluded.session_start_ms,"
                " last_heartbeat_ms = excluded.last_heartbeat_ms,"
                " expires_ms = excluded.expires_ms",
                row.host_id,
                row.role,
                row.rpc_address,
                row.session_start_ms,
                row.last_heartbeat_ms,
                row.expires_ms,
            )

    async def list_members(self, *, now_ms: int, role: str | None = None) -> list[MemberRow]:
        where, args = "expires_ms > ?", [now_ms]
        if role is not None:
            where += " AND role = ?"
            args.append(role)  # type: ignore[arg-type]
        async with self._db.read() as conn:
            rows = await conn.fetchall(
                f"SELECT {_MEMBER_COLUMNS} FROM cluster_members WHERE {where} ORDER BY host_id",
                *args,
            )
        return [MemberRow(*r) for r in rows]

    async def prune_members(self, *, now_ms: int) -> int:
        async with self._db.write() as conn:
            return await conn.execute("DELETE FROM cluster_members WHERE expires_ms <= ?", now_ms)
