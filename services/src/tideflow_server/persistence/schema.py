"""Versioned schemas and the small runner that applies them.

Versions live in `services/schema/<backend>/vN/*.sql` (`*.cql` for Cassandra; packaged as
`tideflow_server/_schema` in a wheel). A database records its version in `schema_version` and
every applied version in `schema_update_history`; each SQL version is applied with its
bookkeeping in one transaction (Cassandra, without transactional DDL, undoes a failed
version's tables itself: see CassandraDatabase.apply_schema_version).
"""

from __future__ import annotations

import hashlib
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import tideflow_server
from tideflow_server.persistence.sql import SqlDatabase


@runtime_checkable
class SchemaTarget(Protocol):
    """A database that keeps its own schema bookkeeping (Cassandra: no transactional DDL,
    so applying a version and recording it is the backend's job)."""

    name: str
    script_suffix: str

    async def table_exists(self, name: str) -> bool: ...

    async def read_schema_version(self) -> int | None: ...

    async def apply_schema_version(
        self, version: int, script: str, checksum: str, now_ms: int
    ) -> None: ...


SchemaDatabase = SqlDatabase | SchemaTarget


def script_suffix(backend: str) -> str:
    """How the schema files of a backend end."""
    return ".cql" if backend == "cassandra" else ".sql"


class SchemaError(Exception):
    """The database's schema cannot serve, or cannot be moved to, the version asked for."""


@dataclass(frozen=True, slots=True)
class SchemaVersion:
    version: int
    script: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.script.encode()).hexdigest()


def schema_root() -> Path:
    package = Path(tideflow_server.__file__).parent
    for candidate in (package / "_schema", package.parents[1] / "schema"):
        if candidate.is_dir():
            return candidate
    raise SchemaError(f"no schema files found next to {package}")


def load_versions(backend: str, root: Path | None = None) -> list[SchemaVersion]:
    folder = (root or schema_root()) / backend
    versions: list[SchemaVersion] = []
    for path in folder.iterdir() if folder.is_dir() else ():
        match = re.fullmatch(r"v(\d+)", path.name)
        if match and path.is_dir():
            files = sorted(path.glob(f"*{script_suffix(backend)}"))
            script = "\n".join(p.read_text() for p in files)
            versions.append(SchemaVersion(int(match.group(1)), script))
    versions.sort(key=lambda v: v.version)
    if not versions or [v.version for v in versions] != list(range(1, len(versions) + 1)):
        raise SchemaError(f"{folder}: expected schema versions v1..vN, found {versions}")
    return versions


_BOOKKEEPING = """
CREATE TABLE IF NOT EXISTS schema_version (
  id         INTEGER PRIMARY KEY CHECK (id = 1),
  version    INTEGER NOT NULL,
  updated_ms BIGINT  NOT NULL
);
CREATE TABLE IF NOT EXISTS schema_update_history (
  version    INTEGER PRIMARY KEY,
  applied_ms BIGINT  NOT NULL,
  checksum   TEXT    NOT NULL
);
"""


async def current_version(db: SchemaDatabase) -> int | None:
    """The recorded version, or None for a database that was never set up."""
    if isinstance(db, SchemaTarget):
        return await db.read_schema_version()
    if not await db.table_exists("schema_version"):
        return None
    async with db.read() as conn:
        found = await conn.fetchone("SELECT version FROM schema_version WHERE id = 1")
    return None if found is None else int(found[0])


async def _apply(db: SchemaDatabase, version: SchemaVersion) -> None:
    now = int(time.time() * 1000)
    if isinstance(db, SchemaTarget):
        await db.apply_schema_version(version.version, version.script, version.checksum, now)
        return
    # Values are integers and a hex digest: safe to inline into the script.
    await db.run_script(
        f"{version.script}\n{_BOOKKEEPING}\n"
        f"INSERT INTO schema_update_history (version, applied_ms, checksum)"
        f" VALUES ({version.version}, {now}, '{version.checksum}');\n"
        f"DELETE FROM schema_version;\n"
        f"INSERT INTO schema_version (id, version, updated_ms)"
        f" VALUES (1, {version.version}, {now});\n"
    )


async def setup_schema(db: SchemaDatabase, *, root: Path | None = None) -> int:
    """Create the schema in an empty database; return the version it is at."""
    found = await current_version(db)
    if found is not None:
        raise SchemaError(
            f"{db.name} database already has schema v{found}; use 'schema update' instead"
        )
    versions = load_versions(db.name, root)
    for version in versions:
        await _apply(db, version)
    return versions[-1].version


async def update_schema(db: SchemaDatabase, *, root: Path | None = None) -> list[int]:
    """Apply the versions above the database's; return the ones applied."""
    found = await current_version(db)
    if found is None:
        raise SchemaError(f"{db.name} database has no schema yet; use 'schema setup' first")
    versions = load_versions(db.name, root)
    if found > versions[-1].version:
        raise SchemaError(
            f"{db.name} database is at v{found}, newer than this server's v{versions[-1].version}"
        )
    applied = []
    for version in versions[found:]:
        await _apply(db, version)
        applied.append(version.version)
    return applied


async def check_schema(db: SchemaDatabase, *, root: Path | None = None) -> int:
    """Refuse to serve a database whose schema is missing or not this server's latest."""
    found = await current_version(db)
    latest = load_versions(db.name, root)[-1].version
    if found is None:
        raise SchemaError(f"{db.name} database has no schema: run 'tideflow-server schema setup'")
    if found != latest:
        raise SchemaError(
            f"{db.name} database schema is v{found}, this server needs v{latest}: "
            "run 'tideflow-server schema update'"
        )
    return found
