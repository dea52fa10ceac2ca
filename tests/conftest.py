"""Fixtures shared by every suite: backends are chosen here, tests stay backend-agnostic."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from itertools import count
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from tests.support.cassandra import launcher
from tests.support.cluster import Cluster
from tests.support.example_workers import build_go_worker, build_node_worker
from tests.support.flows import Client
from tests.support.postgres import PostgresServer, PostgresUnavailable
from tideflow_server.persistence import schema
from tideflow_server.persistence.cassandra import CassandraPersistence, open_cassandra
from tideflow_server.persistence.postgres import open_postgres
from tideflow_server.persistence.sql import SqlPersistence
from tideflow_server.persistence.sqlite import open_sqlite

if TYPE_CHECKING:
    from deploy.local.pki import Pki

IN_CI = os.environ.get("CI", "").lower() == "true"
BACKENDS = ["sqlite", "postgres", "cassandra"]


def backend_unavailable(backend: str, reason: str) -> None:
    """A backend that cannot start is a skip locally and a failure in CI."""
    message = f"{backend} unavailable: {reason}"
    if IN_CI:
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


@contextlib.contextmanager
def running_postgres(*, durable: bool = False) -> Iterator[PostgresServer]:
    """A throwaway server for the duration of the block (skip or CI failure if it can't)."""
    try:
        began = time.monotonic()
        server = PostgresServer(durable=durable).start()
        _startup.setdefault("postgres", time.monotonic() - began)
    except PostgresUnavailable as e:
        backend_unavailable("postgres", str(e))
    try:
        yield server
    finally:
        server.remove()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """Shared by the session; fast rather than durable (no fsync)."""
    with running_postgres() as server:
        yield server


_TEMPLATE = "tideflow_template"


@pytest.fixture(scope="session")
def postgres_template(postgres_server: PostgresServer) -> str:
    """A database with the schema set up by the operator's command, copied for each test
    (CREATE DATABASE ... TEMPLATE) so every case starts on an empty schema in milliseconds."""
    postgres_server.psql(f"CREATE DATABASE {_TEMPLATE}")
    env = {
        **os.environ,
        "TIDEFLOW_PERSISTENCE__BACKEND": "postgres",
        "TIDEFLOW_PERSISTENCE__POSTGRES__DSN": postgres_server.dsn(_TEMPLATE),
    }
    subprocess.run(
        [str(Path(sys.executable).with_name("tideflow-server")), "schema", "setup"],
        env=env,
        check=True,
        capture_output=True,
        timeout=60,
    )
    return _TEMPLATE


_database_ids = count(1)


@pytest.fixture
def postgres_dsn(postgres_server: PostgresServer, postgres_template: str) -> str:
    name = f"tideflow_test_{next(_database_ids)}"
    postgres_server.psql(f"CREATE DATABASE {name} TEMPLATE {postgres_template}")
    return postgres_server.dsn(name)


@pytest.fixture(scope="session")
def cassandra_port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """One node for the session (jars fetched with Maven on first use); its native port."""
    module = launcher()
    node = module.CassandraNode(tmp_path_factory.mktemp("cassandra"))
    began = time.monotonic()
    try:
        ports = node.start()
        _startup["cassandra"] = time.monotonic() - began
    except (module.CassandraError, OSError, subprocess.SubprocessError) as e:
        backend_unavailable("cassandra", str(e))
    try:
        yield int(ports.native)
    finally:
        node.stop()


_keyspace_ids = count(1)


async def open_cassandra_keyspace(port: int, tmp_path: Path) -> CassandraPersistence:
    """A fresh keyspace set up by the schema runner, visibility in a per-test SQLite file."""
    visibility = await open_sqlite(tmp_path / "visibility.db")
    await schema.setup_schema(visibility.db)
    opened = await open_cassandra(
        contact_points=["127.0.0.1"],
        port=port,
        keyspace=f"tideflow_test_{os.getpid()}_{next(_keyspace_ids)}",
        replication={"class": "SimpleStrategy", "replication_factor": 1},
        visibility=visibility,
    )
    try:
        await schema.setup_schema(opened.db)
    except BaseException:
        await opened.close()
        raise
    return opened


async def open_sqlite_schema(tmp_path: Path) -> SqlPersistence:
    """A fresh SQLite file with the schema set up."""
    opened = await open_sqlite(tmp_path / "tideflow.db")
    await schema.setup_schema(opened.db)
    return opened


async def open_backend(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> SqlPersistence | CassandraPersistence:
    if backend == "sqlite":
        return await open_sqlite_schema(tmp_path)
    if backend == "cassandra":
        return await open_cassandra_keyspace(request.getfixturevalue("cassandra_port"), tmp_path)
    dsn: str = request.getfixturevalue("postgres_dsn")
    return await open_postgres(dsn, min_connections=1, max_connections=10)


@pytest.fixture
async def sqlite_persistence(tmp_path: Path) -> AsyncIterator[SqlPersistence]:
    """Every store on a fresh SQLite file with the schema set up, for tests of one backend."""
    opened = await open_sqlite_schema(tmp_path)
    try:
        yield opened
    finally:
        await opened.close()


async def _drop_keyspace(opened: CassandraPersistence) -> None:
    with contextlib.suppress(Exception):
        await opened.db.session.simple(f"DROP KEYSPACE IF EXISTS {opened.db.keyspace}")


@pytest.fixture(params=BACKENDS)
async def persistence(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[SqlPersistence | CassandraPersistence]:
    """Every store of one backend, on a fresh database."""
    opened = await open_backend(request.param, request, tmp_path)
    try:
        yield opened
    finally:
        if isinstance(opened, CassandraPersistence):
            await _drop_keyspace(opened)
        await opened.close()


# -- clusters of real server processes ------------------------------------------------------
# SQLite runs all roles in one process; PostgreSQL runs frontend, history and matching as
# three processes; Cassandra too, with visibility in PostgreSQL as deploy/config/cassandra.yaml
# has it. Module-scoped: a module's cases share one cluster.

CLUSTER_BACKENDS = ["sqlite", "postgres", "cassandra"]

_cluster_databases = count(1)


def make_cluster(
    backend: str,
    root: Path,
    request: pytest.FixtureRequest,
    *,
    split: bool | None = None,
    pki: Pki | None = None,
) -> Cluster:
    """A cluster on a fresh database of `backend`, schema set up, not started yet. SQLite runs
    one process with all roles unless `split`; the others always run three role processes.
    With `pki`, the roles talk to each other over mutual TLS (the public port stays
    plaintext)."""
    tls: dict[str, Any] = {"pki": pki, "public_tls": False}
    if backend == "sqlite":
        cluster = Cluster(
            root,
            {"backend": "sqlite", "sqlite": {"path": str(root / "t.db")}},
            split=bool(split),
            **tls,
        )
        cluster.schema_setup()
        return cluster
    postgres_server: PostgresServer = request.getfixturevalue("postgres_server")
    name = f"tideflow_cluster_{next(_cluster_databases)}"
    if backend == "postgres":
        template: str = request.getfixturevalue("postgres_template")
        postgres_server.psql(f"CREATE DATABASE {name} TEMPLATE {template}")
        return Cluster(
            root,
            {"backend": "postgres", "postgres": {"dsn": postgres_server.dsn(name)}},
            split=True,
            **tls,
        )
    port: int = request.getfixturevalue("cassandra_port")
    postgres_server.psql(f"CREATE DATABASE {name}")
    cluster = Cluster(
        root,
        {
            "backend": "cassandra",
            "cassandra": {
                "contact_points": ["127.0.0.1"],
                "port": port,
                "keyspace": name,
                "replication": {"class": "SimpleStrategy", "replication_factor": 1},
            },
            "visibility": {"backend": "postgres", "postgres": {"dsn": postgres_server.dsn(name)}},
        },
        split=True,
        **tls,
    )
    cluster.schema_setup()
    return cluster


@pytest.fixture(scope="module", params=CLUSTER_BACKENDS)
async def cluster(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Cluster]:
    root = tmp_path_factory.mktemp(f"cluster-{request.param}")
    started = make_cluster(request.param, root, request)
    async with started.running():
        yield started


@pytest.fixture(scope="session")
def go_worker() -> Path:
    """workers/go's example worker binary, built."""
    return build_go_worker()


@pytest.fixture(scope="session")
def node_worker() -> Path:
    """workers/node's example worker (dist/example.js), built."""
    return build_node_worker()


@pytest.fixture
async def client(cluster: Cluster) -> AsyncIterator[Client]:
    opened = Client(cluster.frontend)
    await opened.ensure_namespace()
    try:
        yield opened
    finally:
        await opened.close()


# -- conformance report ---------------------------------------------------------------------
# The suite in tests/persistence/ is the definition of a correct backend, so the run says how
# many cases each backend passed, and in CI a skipped case fails the run whatever its reason.

_conformance: dict[str, Counter[str]] = {}
_startup: dict[str, float] = {}
"""Seconds from launch until each test database server answered (first start)."""


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if not report.nodeid.startswith("tests/persistence/"):
        return
    backend = next((b for b in BACKENDS if f"[{b}" in report.nodeid), None)
    if backend is None:
        return
    if report.when == "call" or (report.when == "setup" and not report.passed):
        _conformance.setdefault(backend, Counter())[report.outcome] += 1


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _startup:
        terminalreporter.section("test database servers")
        for name, seconds in sorted(_startup.items()):
            terminalreporter.write_line(f"{name}: answering {seconds:.1f} s after launch")
    if not _conformance:
        return
    terminalreporter.section("persistence conformance")
    for backend in BACKENDS:
        counts = _conformance.get(backend, Counter())
        terminalreporter.write_line(
            f"{backend}: {counts['passed']} passed, {counts['failed']} failed, "
            f"{counts['skipped']} skipped"
        )


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    skipped = sum(c["skipped"] for c in _conformance.values())
    if IN_CI and skipped and exitstatus == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
