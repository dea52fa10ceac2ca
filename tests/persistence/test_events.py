"""The event store: idempotent publishes, finding events by type and key, the waits index."""

from __future__ import annotations

from tideflow_server.persistence.records import EventRow, EventWaitRow
from tideflow_server.persistence.sql import SqlPersistence

FAR = 4_000_000_000_000  # expiry in 2096: kept by every backend's clock


def _event(event_id: str, published: int, *, key: str = "o-1", data: bytes = b"p") -> EventRow:
    return EventRow("ns-1", event_id, "paid", key, published, FAR, data)


async def test_a_publish_is_idempotent_by_event_id(persistence: SqlPersistence) -> None:
    events = persistence.events
    first = _event("e-1", 1_000, data=b"first")
    assert await events.publish(first) == first
    # A retry (even with other content) gets the event kept first, and adds none.
    assert await events.publish(_event("e-1", 2_000, data=b"second")) == first
    assert await events.find_events("ns-1", "paid", "o-1", now_ms=0, limit=10) == [first]
    other = EventRow("ns-2", "e-1", "paid", "o-1", 1_000, FAR, b"x")
    assert await events.publish(other) == other  # ids are unique per namespace


async def test_events_are_found_by_type_and_key_oldest_first(
    persistence: SqlPersistence,
) -> None:
    events = persistence.events
    late, early, same = _event("e-b", 3_000), _event("e-c", 1_000), _event("e-a", 3_000)
    for row in (late, early, same, _event("e-x", 2_000, key="o-2")):
        await events.publish(row)
    await events.publish(EventRow("ns-1", "e-y", "shipped", "o-1", 2_000, FAR, b""))
    found = await events.find_events("ns-1", "paid", "o-1", now_ms=0, limit=10)
    assert found == [early, same, late]
    assert await events.find_events("ns-1", "paid", "o-1", now_ms=0, limit=2) == [early, same]
    assert await events.find_events("ns-1", "paid", "o-3", now_ms=0, limit=10) == []


async def test_expired_events_are_not_found_and_deleted_in_batches(
    persistence: SqlPersistence,
) -> None:
    events = persistence.events
    now = 4_100_000_000_000
    for i in range(3):
        await events.publish(EventRow("ns-1", f"old-{i}", "paid", "o-1", 1_000 + i, FAR, b""))
    kept = EventRow("ns-1", "new", "paid", "o-1", 5_000, now + 60_000, b"")
    await events.publish(kept)
    assert await events.find_events("ns-1", "paid", "o-1", now_ms=now, limit=10) == [kept]
    if persistence.backend == "cassandra":
        return  # expired by TTL, not by deletes
    assert await events.delete_expired_events(now_ms=now, limit=2) == 2
    assert await events.delete_expired_events(now_ms=now, limit=2) == 1
    assert await events.delete_expired_events(now_ms=now, limit=2) == 0
    assert await events.find_events("ns-1", "paid", "o-1", now_ms=0, limit=10) == [kept]


async def test_waits_are_indexed_by_type_and_key(persistence: SqlPersistence) -> None:
    events = persistence.events
    a = EventWaitRow("ns-1", "paid", "o-1", "run-a", "ex-a", "pay")
    b = EventWaitRow("ns-1", "paid", "o-1", "run-b", "ex-b", "pay")
    elsewhere = EventWaitRow("ns-1", "paid", "o-2", "run-c", "ex-c", "pay")
    for row in (a, b, a, elsewhere):
        await events.add_event_wait(row)  # idempotent
    waits = await events.event_waits("ns-1", "paid", "o-1", limit=10)
    assert sorted(waits, key=lambda w: w.run_id) == [a, b]
    assert len(await events.event_waits("ns-1", "paid", "o-1", limit=1)) == 1
    await events.remove_event_wait(a)
    await events.remove_event_wait(a)  # gone: nothing
    assert await events.event_waits("ns-1", "paid", "o-1", limit=10) == [b]
    assert await events.event_waits("ns-1", "shipped", "o-1", limit=10) == []
