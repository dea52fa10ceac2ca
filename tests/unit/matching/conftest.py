from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from tests.unit.matching.support import FakeClock, FakeHistory
from tideflow_server.matching import MatchingConfig, MatchingEngine
from tideflow_server.persistence.manager import PersistenceManager
from tideflow_server.persistence.sql import SqlPersistence
from tideflow_server.rpc.clients import MatchingClient

EngineFactory = Callable[..., MatchingEngine]

# Short enough that a missing task fails fast; ack levels persist only on stop unless a test
# asks for the periodic writer.
TEST_CONFIG: dict[str, Any] = {
    "long_poll_timeout": 5.0,
    "retry_backoff": 0.01,
    "ack_persist_interval": 3600.0,
    "idle_unload_after": 3600.0,
    "sync_match_wait": 0.0,  # an add without a waiting poll persists at once, unless a test waits
}


@pytest.fixture
def history() -> FakeHistory:
    return FakeHistory()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def manager(persistence: SqlPersistence) -> PersistenceManager:
    return PersistenceManager(persistence)


@pytest.fixture
async def make_engine(
    manager: PersistenceManager, history: FakeHistory, clock: FakeClock
) -> AsyncIterator[EngineFactory]:
    made: list[MatchingEngine] = []

    def make(
        host_id: str = "host-a", *, peers: MatchingClient | None = None, **config: Any
    ) -> MatchingEngine:
        engine = MatchingEngine(
            manager,
            history,
            host_id=host_id,
            config=MatchingConfig(**{**TEST_CONFIG, **config}),
            clock=clock,
            peers=peers,
        )
        made.append(engine)
        return engine

    yield make
    for engine in made:
        await engine.stop()


@pytest.fixture
def engine(make_engine: EngineFactory) -> MatchingEngine:
    return make_engine()
