from __future__ import annotations

from tideflow_server.persistence.errors import NotFound
from tideflow_server.persistence.records import ApiKeyRow, FlowRow, NamespaceRow, Page
from tideflow_server.persistence.sql import _paging
from tideflow_server.persistence.sql._database import Row, SqlDatabase


def _flow(namespace_id: str, r: Row) -> FlowRow:
    return FlowRow(
        namespace_id=namespace_id, name=r[0], version=r[1], create_time_ms=r[2], data=bytes(r[3])
    )


class SqlMetadataStore:
    def __init__(self, db: SqlDatabase) -> None:
        self._db = db

    async def create_namespace(self, row: NamespaceRow) -> None:
        async with self._db.write() as conn:
            await conn.execute(
                "INSERT INTO namespaces (id, name, data) VALUES (?, ?, ?)",
                row.id,
                row.name,
                row.data,
            )

    async def _get_namespace(self, column: str, value: str) -> NamespaceRow:
        async with self._db.read() as conn:
            found = await conn.fetchone(
                f"SELECT id, name, data FROM namespaces WHERE {column} = ?", value
            )
        if found is None:
            raise NotFound(f"namespace {value!r} not found")
        return NamespaceRow(id=found[0], name=found[1], data=bytes(found[2]))

    async def get_namespace_by_id(self, namespace_id: str) -> NamespaceRow:
        return await self._get_namespace("id", namespace_id)

    async def get_namespace_by_name(self, name: str) -> NamespaceRow:
        return await self._get_namespace("name", name)

    async def update_namespace(self, row: NamespaceRow) -> None:
        async with self._db.write() as conn:
            changed = await conn.execute(
                "UPDATE namespaces SET data = ? WHERE id = ?", row.data, row.id
            )
        if changed != 1:
            raise NotFound(f"namespace {row.name!r} not found")

    async def list_namespaces(
        self, *, page_size: int, page_token: bytes | None = None
    ) -> Page[NamespaceRow]:
        after = "" if page_token is None else str(_paging.decode(page_token, str)[0])
        async with self._db.read() as conn:
            rows = await conn.fetchall(
                "SELECT id, name, data FROM namespaces WHERE name > ? ORDER BY name LIMIT ?",
                after,
                page_size + 1,
            )
        items = [NamespaceRow(id=r[0], name=r[1], data=bytes(r[2])) for r in rows[:page_size]]
        more = len(rows) > page_size
        return Page(items, _paging.encode(items[-1].name) if more else None)

    async def create_flow(self, row: FlowRow) -> None:
        async with self._db.write() as conn:
            await conn.execute(
                "INSERT INTO flows (namespace_id, name, version, create_time_ms, data)"
                " VALUES (?, ?, ?, ?, ?)",
                row.namespace_id,
                row.name,
                row.version,
                row.create_time_ms,
                row.data,
            )

    async def get_flow(self, namespace_id: str, name: str, version: int) -> FlowRow:
        async with self._db.read() as conn:
            found = await conn.fetchone(
                "SELECT name, version, create_time_ms, data FROM flows"
                " WHERE namespace_id = ? AND name = ? AND version = ?",
                namespace_id,
                name,
                version,
            )
        if found is None:
            raise NotFound(f"flow {name}@{version} not found")
        return _flow(namespace_id, found)

    async def get_latest_flow(self, namespace_id: str, name: str) -> FlowRow:
        async with self._db.read() as conn:
            found = await conn.fetchone(
                "SELECT name, version, create_time_ms, data FROM flows"
                " WHERE namespace_id = ? AND name = ? ORDER BY version DESC LIMIT 1",
                namespace_id,
                name,
            )
        if found is None:
            raise NotFound(f"flow {name!r} has no version")
        return _flow(namespace_id, found)

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
        where = "namespace_id = ? AND (name, version) > (?, ?)"
        args: list[object] = [namespace_id, after_name, after_version]
        if name is not None:
            where += " AND name = ?"
            args.append(name)
        async with self._db.read() as conn:
            rows = await conn.fetchall(
                f"SELECT name, version, create_time_ms, data FROM flows WHERE {where}"
                " ORDER BY name, version LIMIT ?",
                *args,
                page_size + 1,
            )
        items = [_flow(namespace_id, r) for r in rows[:page_size]]
        more = len(rows) > page_size
        return Page(items, _paging.encode(items[-1].name, items[-1].version) if more else None)

    async def create_api_key(self, row: ApiKeyRow) -> None:
        async with self._db.write() as conn:
            await conn.execute(
                "INSERT INTO api_keys (key_id, namespace, data) VALUES (?, ?, ?)",
                row.key_id,
                row.namespace,
                row.data,
            )

    async def get_api_key(self, key_id: str) -> ApiKeyRow:
        async with self._db.read() as conn:
            found = await conn.fetchone(
                "SELECT key_id, namespace, data FROM api_keys WHERE key_id = ?", key_id
            )
        if found is None:
            raise NotFound(f"API key {key_id!r} not found")
        return ApiKeyRow(key_id=found[0], namespace=found[1], data=bytes(found[2]))

    async def update_api_key(self, row: ApiKeyRow) -> None:
        async with self._db.write() as conn:
            changed = await conn.execute(
                "UPDATE api_keys SET data = ? WHERE key_id = ?", row.data, row.key_id
            )
        if changed != 1:
            raise NotFound(f"API key {row.key_id!r} not found")

    async def list_api_keys(self, namespace: str, *, limit: int) -> list[ApiKeyRow]:
        async with self._db.read() as conn:
            rows = await conn.fetchall(
                "SELECT key_id, namespace, data FROM api_keys WHERE namespace = ?"
                " ORDER BY key_id LIMIT ?",
                namespace,
                limit,
            )
        return [ApiKeyRow(key_id=r[0], namespace=r[1], data=bytes(r[2])) for r in rows]
