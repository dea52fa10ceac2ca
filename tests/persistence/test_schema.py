"""Versioned schemas: set up once, updated in order, checked before serving."""

from __future__ import annotations

from pathlib import Path

import pytest

from tideflow_server.persistence import schema
from tideflow_server.persistence.sql import SqlPersistence


def _versions(tmp_path: Path, backend: str, scripts: list[str]) -> Path:
    for number, script in enumerate(scripts, start=1):
        folder = tmp_path / "schema" / backend / f"v{number}"
        folder.mkdir(parents=True)
        (folder / f"001{schema.script_suffix(backend)}").write_text(script)
    return tmp_path / "schema"


async def test_setup_refuses_a_database_that_has_a_schema(persistence: SqlPersistence) -> None:
    db = persistence.db
    latest = len(schema.load_versions(db.name))
    assert await schema.current_version(db) == latest
    with pytest.raises(schema.SchemaError, match=f"already has schema v{latest}"):
        await schema.setup_schema(db)
    assert await schema.update_schema(db) == []
    assert await schema.check_schema(db) == latest


async def test_update_applies_newer_versions_in_order(
    persistence: SqlPersistence, tmp_path: Path
) -> None:
    db = persistence.db
    shipped = schema.load_versions(db.name)
    root = _versions(
        tmp_path,
        db.name,
        [v.script for v in shipped]
        + [
            "CREATE TABLE extra_a (id int PRIMARY KEY);",
            "CREATE TABLE extra_b (id int PRIMARY KEY);",
        ],
    )
    latest = len(shipped)
    with pytest.raises(schema.SchemaError, match=f"needs v{latest + 2}"):
        await schema.check_schema(db, root=root)
    assert await schema.update_schema(db, root=root) == [latest + 1, latest + 2]
    assert await db.table_exists("extra_a") and await db.table_exists("extra_b")
    assert await schema.check_schema(db, root=root) == latest + 2
    # The server that shipped fewer versions refuses to run on it.
    with pytest.raises(schema.SchemaError, match="newer than this server"):
        await schema.update_schema(db)


async def test_a_failing_version_is_not_recorded(
    persistence: SqlPersistence, tmp_path: Path
) -> None:
    db = persistence.db
    shipped = schema.load_versions(db.name)
    root = _versions(
        tmp_path,
        db.name,
        [v.script for v in shipped]
        + ["CREATE TABLE half_done (id int PRIMARY KEY); THIS IS NOT SQL;"],
    )
    with pytest.raises(Exception):  # noqa: B017 - each database words its syntax error its own way
        await schema.update_schema(db, root=root)
    assert await schema.current_version(db) == len(shipped)
    assert not await db.table_exists("half_done")
