"""Matching's integration tests run on SQLite and PostgreSQL (what they exercise is matching,
the same on every backend; the stores' part, the queue's row, is in the persistence
conformance suite), and share one cluster per backend where they can: each test uses queues
of its own. A module whose tests need other settings or leave load behind (the fairness
burst, in-flight first without direct dispatch, the rate limit's backlog) starts its own."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.conftest import make_cluster
from tests.support.cluster import Cluster
from tests.support.postgres import PostgresServer

BACKENDS = ["sqlite", "postgres"]


@pytest.fixture(scope="package", params=BACKENDS)
async def cluster(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Cluster]:
    root = tmp_path_factory.mktemp(f"matching-{request.param}")
    started = make_cluster(request.param, root, request)
    async with started.running():
        yield started


@pytest.fixture
async def two_matching_hosts(
    tmp_path: Path, postgres_server: PostgresServer, postgres_template: str
) -> AsyncIterator[Cluster]:
    """PostgreSQL with two matching processes, so a queue's partitions and workers' sticky
    queues spread over hosts. Its own, as tests kill its processes."""
    name = f"tideflow_matching_{uuid.uuid4().hex[:8]}"
    postgres_server.psql(f"CREATE DATABASE {name} TEMPLATE {postgres_template}")
    started = Cluster(
        tmp_path,
        {"backend": "postgres", "postgres": {"dsn": postgres_server.dsn(name)}},
        split=True,
        matching_processes=2,
    )
    async with started.running(settled=True):
        yield started
