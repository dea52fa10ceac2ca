"""A keyspace of one Cassandra cluster, with the schema runner's bookkeeping."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from tideflow_server.persistence.cassandra._driver import CassandraSession, Params, Result

_IDENT = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,47}")


def _strip_comments(script: str) -> str:
    return "\n".join(line.split("--", 1)[0] for line in script.splitlines())


def split_statements(script: str) -> list[str]:
    return [s.strip() for s in _strip_comments(script).split(";") if s.strip()]


class CassandraDatabase:
    """Statements name tables as `{ks}.table`; `{ks}` is replaced by the keyspace."""

    name = "cassandra"
    script_suffix = ".cql"

    def __init__(
        self, session: CassandraSession, keyspace: str, replication: Mapping[str, object]
    ) -> None:
        if not _IDENT.fullmatch(keyspace):
            raise ValueError(f"not a valid keyspace name: {keyspace!r}")
        self.session = session
        self.keyspace = keyspace
        self.replication = dict(replication)

    def _cql(self, cql: str) -> str:
        return cql.replace("{ks}", self.keyspace)

    async def execute(
        self,
        cql: str,
        params: Params = (),
        *,
        paging_state: bytes | None = None,
        fetch_size: int | None = None,
        serial_read: bool = False,
    ) -> Result:
        return await self.session.execute(
            self._cql(cql),
            params,
            paging_state=paging_state,
            fetch_size=fetch_size,
            serial_read=serial_read,
        )

    async def execute_all(self, cql: str, params: Params = ()) -> Result:
        return await self.session.execute_all(self._cql(cql), params)

    async def batch(
        self, statements: Sequence[tuple[str, Params]], *, logged: bool = True
    ) -> Result:
        return await self.session.batch([(self._cql(c), p) for c, p in statements], logged=logged)

    # -- schema runner hooks (see persistence/schema.py) -----------------------------------

    async def table_exists(self, name: str) -> bool:
        found = await self.session.execute(
            "SELECT table_name FROM system_schema.tables"
            " WHERE keyspace_name = ? AND table_name = ?",
            (self.keyspace, name),
        )
        return bool(found.rows)

    async def read_schema_version(self) -> int | None:
        if not await self.table_exists("schema_version"):
            return None
        found = await self.execute("SELECT version FROM {ks}.schema_version WHERE id = 1")
        return int(found.rows[0][0]) if found.rows else None

    async def apply_schema_version(
        self, version: int, script: str, checksum: str, now_ms: int
    ) -> None:
        """Cassandra has no transactional DDL: statements run one by one, and when one fails
        the tables this version created are dropped again before the error goes up, so a
        failed version leaves neither its tables nor a record behind."""
        replication = ", ".join(f"'{k}': '{v}'" for k, v in self.replication.items())
        await self.session.simple(
            f"CREATE KEYSPACE IF NOT EXISTS {self.keyspace} WITH replication = {{{replication}}}"
        )
        await self.session.simple(f"USE {self.keyspace}")
        created: list[str] = []
        try:
            for statement in split_statements(script):
                await self.session.simple(statement)
                match = re.match(
                    r"CREATE\s+TABLE\s+(?:IF\s+NOT\s+EXISTS\s+)?(?:\w+\.)?(\w+)",
                    statement,
                    re.IGNORECASE,
                )
                if match:
                    created.append(match.group(1))
        except BaseException:
            for table in reversed(created):
                await self.session.simple(f"DROP TABLE IF EXISTS {self.keyspace}.{table}")
            raise
        for statement in (
            "CREATE TABLE IF NOT EXISTS {ks}.schema_version"
            " (id int PRIMARY KEY, version int, updated_ms bigint)",
            "CREATE TABLE IF NOT EXISTS {ks}.schema_update_history"
            " (version int PRIMARY KEY, applied_ms bigint, checksum text)",
        ):
            await self.session.simple(self._cql(statement))
        await self.execute(
            "INSERT INTO {ks}.schema_update_history (version, applied_ms, checksum)"
            " VALUES (?, ?, ?)",
            (version, now_ms, checksum),
        )
        await self.execute(
            "INSERT INTO {ks}.schema_version (id, version, updated_ms) VALUES (1, ?, ?)",
            (version, now_ms),
        )

    async def close(self) -> None:
        await self.session.close()
