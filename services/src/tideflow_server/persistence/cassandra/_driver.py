"""The only module that touches cassandra-driver (it ships no type stubs).

`CassandraSession` turns the driver's callback futures into asyncio awaitables without
blocking the event loop, caches prepared statements, pages explicitly, and translates the
driver's exceptions into the closed persistence error set.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import cassandra  # type: ignore[import-untyped]
from cassandra import ConsistencyLevel
from cassandra.auth import PlainTextAuthProvider  # type: ignore[import-untyped]
from cassandra.cluster import (  # type: ignore[import-untyped]
    EXEC_PROFILE_DEFAULT,
    Cluster,
    ExecutionProfile,
    NoHostAvailable,
    Session,
)
from cassandra.connection import ConnectionException  # type: ignore[import-untyped]
from cassandra.policies import (  # type: ignore[import-untyped]
    DCAwareRoundRobinPolicy,
    TokenAwarePolicy,
)
from cassandra.query import (  # type: ignore[import-untyped]
    BatchStatement,
    BatchType,
    SimpleStatement,
    tuple_factory,
)

from tideflow_server.persistence.errors import PersistenceError, Unavailable

Params = Sequence[object]


@dataclass(frozen=True, slots=True)
class Result:
    """One page of rows (tuples) with its column names, and where the next page starts."""

    columns: list[str]
    rows: list[tuple[Any, ...]]
    paging_state: bytes | None

    @property
    def applied(self) -> bool:
        """For a conditional statement or batch: whether it was applied."""
        return bool(self.rows and self.rows[0][0])

    def dicts(self) -> list[dict[str, Any]]:
        return [dict(zip(self.columns, row, strict=True)) for row in self.rows]


def _translate(error: BaseException) -> PersistenceError:
    if isinstance(error, PersistenceError):
        return error
    if isinstance(
        error,
        (
            NoHostAvailable,
            ConnectionException,
            cassandra.OperationTimedOut,
            cassandra.Timeout,
            cassandra.Unavailable,
            cassandra.CoordinationFailure,
        ),
    ):
        return Unavailable(f"cassandra: {error}")
    return PersistenceError(f"cassandra: {error}")


class CassandraSession:
    def __init__(
        self,
        cluster: Any,
        session: Any,
        *,
        consistency: str,
        serial_consistency: str,
        request_timeout_s: float,
    ) -> None:
        self._cluster = cluster
        self._session: Session = session
        self._consistency = ConsistencyLevel.name_to_value[consistency]
        self._serial = ConsistencyLevel.name_to_value[serial_consistency]
        self._timeout = request_timeout_s
        self._prepared: dict[str, Any] = {}

    async def _prepare(self, cql: str) -> Any:
        found: Any = self._prepared.get(cql)
        if found is None:
            # The driver only prepares synchronously: do it on a worker thread, once per
            # statement text.
            loop = asyncio.get_running_loop()
            try:
                found = await loop.run_in_executor(None, self._session.prepare, cql)
            except Exception as e:
                raise _translate(e) from e
            found.consistency_level = self._consistency
            found.serial_consistency_level = self._serial
            self._prepared[cql] = found
        return found

    async def execute(
        self,
        cql: str,
        params: Params = (),
        *,
        paging_state: bytes | None = None,
        fetch_size: int | None = None,
        serial_read: bool = False,
    ) -> Result:
        """Run one prepared statement; one page of its rows."""
        prepared = await self._prepare(cql)
        bound = prepared.bind(list(params))
        if fetch_size is not None:
            bound.fetch_size = fetch_size
        if serial_read:
            bound.consistency_level = self._serial
        return await self._run(bound, paging_state)

    async def execute_all(self, cql: str, params: Params = (), *, fetch_size: int = 1000) -> Result:
        """Every page of a query, fetched page by page."""
        first = await self.execute(cql, params, fetch_size=fetch_size)
        rows, state = list(first.rows), first.paging_state
        while state is not None:
            page = await self.execute(cql, params, paging_state=state, fetch_size=fetch_size)
            rows += page.rows
            state = page.paging_state
        return Result(first.columns, rows, None)

    async def batch(
        self, statements: Sequence[tuple[str, Params]], *, logged: bool = True
    ) -> Result:
        """A batch (conditional when any statement has IF), one round trip. Unlogged: rows
        of several partitions in one request, each partition applied atomically on its own."""
        batch = BatchStatement(
            batch_type=BatchType.LOGGED if logged else BatchType.UNLOGGED,
            consistency_level=self._consistency,
            serial_consistency_level=self._serial,
        )
        for cql, params in statements:
            prepared = await self._prepare(cql)
            batch.add(prepared, list(params))
        return await self._run(batch, None)

    async def simple(self, cql: str) -> Result:
        """An unprepared statement (schema changes)."""
        statement = SimpleStatement(cql, consistency_level=self._consistency)
        return await self._run(statement, None)

    async def _run(self, statement: Any, paging_state: bytes | None) -> Result:
        loop = asyncio.get_running_loop()
        try:
            future = self._session.execute_async(
                statement, paging_state=paging_state, timeout=self._timeout
            )
        except Exception as e:
            raise _translate(e) from e
        result: Result = await _wrap(loop, future, _page)
        return result

    async def close(self) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self._cluster.shutdown)


def _page(future: Any) -> Result:
    result = future.result()  # already complete: does not block
    columns = list(result.column_names or [])
    return Result(columns, list(result.current_rows), result.paging_state)


async def _wrap(loop: asyncio.AbstractEventLoop, future: Any, extract: Any) -> Any:
    """Await a driver future: its callbacks run on the driver's thread and hand the outcome
    to the loop with call_soon_threadsafe. A cancelled waiter just drops the outcome."""
    waiter: asyncio.Future[Any] = loop.create_future()

    def settle(ok: bool, value: Any) -> None:
        if waiter.done():
            return
        if ok:
            waiter.set_result(value)
        else:
            waiter.set_exception(_translate(value))

    def on_done(_: object) -> None:
        try:
            value, ok = extract(future), True
        except BaseException as e:
            value, ok = e, False
        loop.call_soon_threadsafe(settle, ok, value)

    def on_error(error: BaseException) -> None:
        loop.call_soon_threadsafe(settle, False, error)

    future.add_callbacks(on_done, on_error)
    return await waiter


async def connect(
    contact_points: Sequence[str],
    port: int,
    *,
    local_dc: str | None,
    connect_timeout_s: float,
    request_timeout_s: float,
    consistency: str,
    serial_consistency: str,
    username: str | None = None,
    password: str | None = None,
) -> CassandraSession:
    """Connect (the driver's blocking connect runs in a worker thread)."""
    auth = None
    if username is not None:
        auth = PlainTextAuthProvider(username=username, password=password or "")
    profile = ExecutionProfile(
        # To a replica of the statement's partition first (any node is one with RF = nodes).
        load_balancing_policy=TokenAwarePolicy(DCAwareRoundRobinPolicy(local_dc=local_dc)),
        row_factory=tuple_factory,
        request_timeout=request_timeout_s,
    )
    cluster = Cluster(
        list(contact_points),
        port=port,
        execution_profiles={EXEC_PROFILE_DEFAULT: profile},
        connect_timeout=connect_timeout_s,
        auth_provider=auth,
        protocol_version=5,
    )

    def open_session() -> Any:
        return cluster.connect()

    try:
        session = await asyncio.get_running_loop().run_in_executor(None, open_session)
    except Exception as e:
        cluster.shutdown()
        raise _translate(e) from e
    return CassandraSession(
        cluster,
        session,
        consistency=consistency,
        serial_consistency=serial_consistency,
        request_timeout_s=request_timeout_s,
    )
