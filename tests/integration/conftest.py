"""Clusters of real server processes, one per backend: SQLite runs all roles in one process,
PostgreSQL runs frontend, history and matching as three processes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from itertools import count
from pathlib import Path

import pytest

from tests.support.cluster import Cluster
from tests.support.flows import Client
from tests.support.postgres import PostgresServer

_databases = count(1)


def make_cluster(
    backend: str, root: Path, postgres_server: PostgresServer | None, template: str | None
) -> Cluster:
    if backend == "sqlite":
        return Cluster(root, {"backend": "sqlite", "sqlite": {"path": str(root / "t.db")}})
    assert postgres_server is not None and template is not None
    name = f"tideflow_cluster_{next(_databases)}"
    postgres_server.psql(f"CREATE DATABASE {name} TEMPLATE {template}")
    return Cluster(
        root,
        {"backend": "postgres", "postgres": {"dsn": postgres_server.dsn(name)}},
        split=True,
    )


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
async def cluster(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Cluster]:
    root = tmp_path_factory.mktemp(f"cluster-{request.param}")
    server = template = None
    if request.param == "postgres":
        server = request.getfixturevalue("postgres_server")
        template = request.getfixturevalue("postgres_template")
    started = make_cluster(request.param, root, server, template)
    if request.param == "sqlite":
        started.schema_setup()
    try:
        await started.start()
        yield started
    finally:
        for process in started.processes.values():
            process.kill()


@pytest.fixture
async def client(cluster: Cluster) -> AsyncIterator[Client]:
    opened = Client(cluster.frontend)
    await opened.ensure_namespace()
    try:
        yield opened
    finally:
        await opened.close()
