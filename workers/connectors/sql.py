"""`sql@1`: one parameterised query on a PostgreSQL connection the worker's config names."""

from __future__ import annotations

import base64
import datetime
import decimal
import uuid
from typing import Any

import asyncpg

from tideflow.errors import ApplicationError
from workers.connectors.secrets import Secrets

DEFAULT_MAX_ROWS = 1000


def to_json(value: Any) -> Any:
    """A column value as JSON: dates and times as ISO 8601, decimals as strings (no precision
    lost), bytes as base64, UUIDs as strings; lists and dicts element by element."""
    if isinstance(value, datetime.date | datetime.time):
        return value.isoformat()
    if isinstance(value, datetime.timedelta):
        return value.total_seconds()
    if isinstance(value, decimal.Decimal | uuid.UUID):
        return str(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode()
    if isinstance(value, list | tuple):
        return [to_json(v) for v in value]
    if isinstance(value, dict):
        return {str(k): to_json(v) for k, v in value.items()}
    return value


class SqlBlock:
    def __init__(self, connections: dict[str, dict[str, Any]], secrets: Secrets) -> None:
        self._connections = connections
        self._secrets = secrets
        self._pools: dict[str, asyncpg.Pool] = {}

    async def close(self) -> None:
        for pool in self._pools.values():
            await pool.close()

    async def _pool(self, name: str) -> asyncpg.Pool:
        pool = self._pools.get(name)
        if pool is not None:
            return pool
        config = self._connections.get(name)
        if config is None:
            raise ApplicationError(
                f"no connection {name!r} in the worker's config "
                f"(configured: {sorted(self._connections)})",
                type="SqlError",
                non_retryable=True,
            )
        dsn = self._secrets.get(config["dsn_secret"]) if "dsn_secret" in config else config["dsn"]
        try:
            pool = await asyncpg.create_pool(dsn, min_size=0, max_size=int(config.get("pool", 4)))
        except (OSError, asyncpg.PostgresError) as e:
            raise ApplicationError(f"connection {name!r}: {e!r}", type="SqlConnectionError") from e
        self._pools[name] = pool
        return pool

    async def __call__(self, value: dict[str, Any]) -> dict[str, Any]:
        if not isinstance(value, dict) or not isinstance(value.get("query"), str):
            raise ApplicationError("input.query is required", type="BadInput", non_retryable=True)
        pool = await self._pool(str(value.get("connection", "")))
        max_rows = int(value.get("max_rows", DEFAULT_MAX_ROWS))
        try:
            async with pool.acquire() as connection:
                records = await connection.fetch(value["query"], *(value.get("params") or []))
        except asyncpg.PostgresError as e:
            raise ApplicationError(
                f"{type(e).__name__}: {e}",
                {"sqlstate": e.sqlstate},
                type="SqlError",
                non_retryable=True,
            ) from None
        except (OSError, asyncpg.InterfaceError) as e:
            raise ApplicationError(f"{e!r}", type="SqlConnectionError") from e
        rows = [{k: to_json(v) for k, v in r.items()} for r in records[:max_rows]]
        return {"rows": rows, "row_count": len(records), "truncated": len(records) > max_rows}
