"""A restarted PostgreSQL: in-flight work fails with a typed error, nothing half-written
survives, and the stores work again once the server is back, without reopening."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from typing import TypeVar

import pytest

from tests.conftest import running_postgres
from tests.persistence.builders import acquire, all_history, batch, key, new_execution, next_step
from tests.support.postgres import PostgresServer
from tideflow_server.persistence import Unavailable, schema
from tideflow_server.persistence.postgres import open_postgres

T = TypeVar("T")


async def _retry_unavailable(call: Callable[[], Awaitable[T]], attempts: int = 10) -> T:
    for _ in range(attempts - 1):
        try:
            return await call()
        except Unavailable:
            continue
    return await call()


@pytest.fixture
def own_server() -> Iterator[PostgresServer]:
    """A server of this test's own, so restarting it disturbs no other case; durable (fsync,
    synchronous commit) like production, unlike the shared test server."""
    with running_postgres(durable=True) as server:
        yield server


async def test_restarted_database_loses_no_committed_decision(own_server: PostgresServer) -> None:
    persistence = await open_postgres(own_server.dsn(), min_connections=2, max_connections=4)
    try:
        await schema.setup_schema(persistence.db)
        r = await acquire(persistence)
        create = new_execution("survivor", range_id=r)
        await persistence.executions.create_execution(create)
        committed = next_step(create.execution, range_id=r, events=[batch(3, txn=(r << 20) + 1)])
        await persistence.executions.update_execution(committed)

        own_server.stop(mode="immediate")  # a crash: no clean shutdown
        lost = next_step(committed.execution, range_id=r, events=[batch(4, txn=(r << 20) + 2)])
        with pytest.raises(Unavailable):
            await persistence.executions.update_execution(lost)
        own_server.start()

        # Connections broken by the crash fail once each and are replaced; the decision that
        # failed is then retried, as a history host does after Unavailable.
        k = key("survivor", create.execution.execution_id)
        stored = await _retry_unavailable(lambda: persistence.executions.get_execution(k))
        assert stored == committed.execution
        await _retry_unavailable(lambda: persistence.executions.update_execution(lost))
        assert [b.first_event_id for b in await all_history(persistence, k)] == [1, 3, 4]
    finally:
        await persistence.close()
