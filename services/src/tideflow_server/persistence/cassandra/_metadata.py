"""Namespaces (one partition in name order, ids made unique by `namespace_ids`), flows,
cluster metadata and members."""

from __future__ import annotations

import time

from tideflow_server.persistence.cassandra._database import CassandraDatabase
from tideflow_server.persistence.errors import AlreadyExists, InvalidPageToken, NotFound
from tideflow_server.persistence.records import (
    ApiKeyRow,
    ClusterMetadataRow,
    FlowRow,
    MemberRow,
    NamespaceRow,
    Page,
)
from tideflow_server.persistence.sql import _paging

_FLOW_COLUMNS = "name, version, create_time_ms, data"
_MEMBER_COLUMNS = "host_id, role, rpc_address, session_start_ms, last_heartbeat_ms, expires_ms"


class CassandraMetadataStore:
    def __init__(self, db: CassandraDatabase) -> None:
        self._db = db

    async def create_namespace(self, row: NamespaceRow) -> None:
        claimed = await self._db.execute(
            "INSERT INTO {ks}.namespace_ids (id, name) VALUES (?, ?) IF NOT EXISTS",
            (row.id, row.name),
        )
        if not claimed.applied:
            raise AlreadyExists(f"namespace id {row.id!r} is taken")
        named = await self._db.execute(
            "INSERT INTO {ks}.namespaces (bucket, name, id, data) VALUES (0, ?, ?, ?)"
            " IF NOT EXISTS",
            (row.name, row.id, row.data),
        )
        if not named.applied:
            await self._db.execute(
                "DELETE FROM {ks}.namespace_ids WHERE id = ? IF name = ?", (row.id, row.name)
            )
            raise AlreadyExists(f"namespace {row.name!r} already exists")

    async def get_namespace_by_name(self, name: str) -> NamespaceRow:
        found = await self._db.execute(
            "SELECT id, name, data FROM {ks}.namespaces WHERE bucket = 0 AND name = ?", (name,)
        )
        if not found.rows:
            raise NotFound(f"namespace {name!r} not found")
        id_, name_, data = found.rows[0]
        return NamespaceRow(id=id_, name=name_, data=bytes(data))

    async def get_namespace_by_id(self, namespace_id: str) -> NamespaceRow:
        found = await self._db.execute(
            "SELECT name FROM {ks}.namespace_ids WHERE id = ?", (namespace_id,)
        )
        if found.rows:
            with_name = await self.get_namespace_by_name(found.rows[0][0])
            if with_name.id == namespace_id:
                return with_name
        raise NotFound(f"namespace {namespace_id!r} not found")

    async def update_namespace(self, row: NamespaceRow) -> None:
        current = await self.get_namespace_by_id(row.id)
        result = await self._db.execute(
            "UPDATE {ks}.namespaces SET data = ? WHERE bucket = 0 AND name = ? IF id = ?",
            (row.data, current.name, row.id),
        )
        if not result.applied:
            raise NotFound(f"namespace {row.name!r} not found")

    # API keys: one partition (there are few), like the namespaces.

    async def create_api_key(self, row: ApiKeyRow) -> None:
        created = await self._db.execute(
            "INSERT INTO {ks}.api_keys (bucket, key_id, namespace, data) VALUES (0, ?, ?, ?)"
            " IF NOT EXISTS",
            (row.key_id, row.namespace, row.data),
        )
        if not created.applied:
            raise AlreadyExists(f"API key {row.key_id!r} exists")

    async def get_api_key(self, key_id: str) -> ApiKeyRow:
        found = await self._db.execute(
            "SELECT key_id, namespace, data FROM {ks}.api_keys WHERE bucket = 0 AND key_id = ?",
            (key_id,),
        )
        if not found.rows:
            raise NotFound(f"API key {key_id!r} not found")
        key_id_, namespace, data = found.rows[0]
        return ApiKeyRow(key_id=key_id_, namespace=namespace, data=bytes(data))

    async def update_api_key(self, row: ApiKeyRow) -> None:
        result = await self._db.execute(
            "UPDATE {ks}.api_keys SET data = ? WHERE bucket = 0 AND key_id = ? IF EXISTS",
            (row.data, row.key_id),
        )
        if not result.applied:
            raise NotFound(f"API key {row.key_id!r} not found")

    async def list_api_keys(self, namespace: str, *, limit: int) -> list[ApiKeyRow]:
        found = await self._db.execute(
            "SELECT key_id, namespace, data FROM {ks}.api_keys WHERE bucket = 0", ()
        )
        rows = [
            ApiKeyRow(key_id=k, namespace=n, data=bytes(d))
            for k, n, d in found.rows
            if n == namespace
        ]
        return rows[:limit]

    async def list_namespaces(
        self, *, page_size: int, page_token: bytes | None = None
    ) -> Page[NamespaceRow]:
        after = "" if page_token is None else str(_paging.decode(page_token, str)[0])
        found = await self._db.execute(
            "SELECT id, name, data FROM {ks}.namespaces WHERE bucket = 0 AND name > ? LIMIT ?",
            (after, page_size + 1),
        )
        rows = found.rows
        items = [NamespaceRow(id=r[0], name=r[1], data=bytes(r[2])) for r in rows[:page_size]]
        more = len(rows) > page_size
        return Page(items, _paging.encode(items[-1].name) if more else None)

    async def create_flow(self, row: FlowRow) -> None:
        result = await self._db.execute(
            "INSERT INTO {ks}.flows (namespace_id, name, version, create_time_ms, data)"
            " VALUES (?, ?, ?, ?, ?) IF NOT EXISTS",
            (row.namespace_id, row.name, row.version, row.create_time_ms, row.data),
        )
        if not result.applied:
            raise AlreadyExists(f"flow {row.name}@{row.version} already exists")

    @staticmethod
    def _flow(namespace_id: str, r: tuple[object, ...]) -> FlowRow:
        name, version, create_time_ms, data = r
        return FlowRow(namespace_id, str(name), int(version), int(create_time_ms), bytes(data))  # type: ignore[call-overload]

    async def get_flow(self, namespace_id: str, name: str, version: int) -> FlowRow:
        found = await self._db.execute(
            f"SELECT {_FLOW_COLUMNS} FROM {{ks}}.flows"
            " WHERE namespace_id = ? AND name = ? AND version = ?",
            (namespace_id, name, version),
        )
        if not found.rows:
            raise NotFound(f"flow {name}@{version} not found")
        return self._flow(namespace_id, found.rows[0])

    async def get_latest_flow(self, namespace_id: str, name: str) -> FlowRow:
        found = await self._db.execute(
            f"SELECT {_FLOW_COLUMNS} FROM {{ks}}.flows WHERE namespace_id = ? AND name = ?"
            " ORDER BY name DESC, version DESC LIMIT 1",
            (namespace_id, name),
        )
        if not found.rows:
            raise NotFound(f"flow {name!r} has no version")
        return self._flow(namespace_id, found.rows[0])

    async def list_flows(
        self,
        namespace_id: str,
        *,
        name: str | None = None,
        page_size: int,
        page_token: bytes | None = None,
    ) -> Page[FlowRow]:
        after_name, after_version = "", 0
        if page_token is not None:
            after_name, after_version = _paging.decode(page_token, str, int)
        if name is None:
            found = await self._db.execute(
                f"SELECT {_FLOW_COLUMNS} FROM {{ks}}.flows WHERE namespace_id = ?"
                " AND (name, version) > (?, ?) LIMIT ?",
                (namespace_id, after_name, after_version, page_size + 1),
            )
        elif page_token is not None and after_name != name:
            raise InvalidPageToken("page token is not one this server issued")
        else:
            found = await self._db.execute(
                f"SELECT {_FLOW_COLUMNS} FROM {{ks}}.flows WHERE namespace_id = ?"
                " AND name = ? AND version > ? LIMIT ?",
                (namespace_id, name, after_version, page_size + 1),
            )
        rows = found.rows
        items = [self._flow(namespace_id, r) for r in rows[:page_size]]
        more = len(rows) > page_size
        return Page(items, _paging.encode(items[-1].name, items[-1].version) if more else None)


class CassandraClusterStore:
    def __init__(self, db: CassandraDatabase) -> None:
        self._db = db

    async def init_cluster_metadata(self, row: ClusterMetadataRow) -> ClusterMetadataRow:
        await self._db.execute(
            "INSERT INTO {ks}.cluster_metadata (id, cluster_name, history_shard_count, data)"
            " VALUES (1, ?, ?, ?) IF NOT EXISTS",
            (row.cluster_name, row.history_shard_count, row.data),
        )
        return await self._get(serial=True)

    async def get_cluster_metadata(self) -> ClusterMetadataRow:
        return await self._get(serial=False)

    async def _get(self, *, serial: bool) -> ClusterMetadataRow:
        found = await self._db.execute(
            "SELECT cluster_name, history_shard_count, data FROM {ks}.cluster_metadata"
            " WHERE id = 1",
            serial_read=serial,
        )
        if not found.rows:
            raise NotFound("cluster metadata is not initialised")
        name, count, data = found.rows[0]
        return ClusterMetadataRow(cluster_name=name, history_shard_count=count, data=bytes(data))

    async def upsert_member(self, row: MemberRow) -> None:
        # The TTL is only garbage collection for hosts that vanish: expiry is decided by
        # `expires_ms`, so the row outlives it by a margin.
        remaining_s = max(0, (row.expires_ms - int(time.time() * 1000)) // 1000)
        ttl = min(remaining_s + 3600, 630_720_000)
        await self._db.execute(
            f"INSERT INTO {{ks}}.cluster_members (bucket, {_MEMBER_COLUMNS})"
            " VALUES (0, ?, ?, ?, ?, ?, ?) USING TTL ?",
            (
                row.host_id,
                row.role,
                row.rpc_address,
                row.session_start_ms,
                row.last_heartbeat_ms,
                row.expires_ms,
                ttl,
            ),
        )

    async def _members(self) -> list[MemberRow]:
        found = await self._db.execute_all(
            f"SELECT {_MEMBER_COLUMNS} FROM {{ks}}.cluster_members WHERE bucket = 0"
        )
        return [MemberRow(*r) for r in found.rows]

    async def list_members(self, *, now_ms: int, role: str | None = None) -> list[MemberRow]:
        return [
            m
            for m in await self._members()
            if m.expires_ms > now_ms and (role is None or m.role == role)
        ]

    async def prune_members(self, *, now_ms: int) -> int:
        expired = [m for m in await self._members() if m.expires_ms <= now_ms]
        for member in expired:
            await self._db.execute(
                "DELETE FROM {ks}.cluster_members WHERE bucket = 0 AND host_id = ?"
                " IF expires_ms <= ?",
                (member.host_id, now_ms),
            )
        return len(expired)
