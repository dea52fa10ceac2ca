"""Ownership by rendezvous hashing over the live members, on a real SQLite cluster store: the
owner of a key is remembered between calls, and follows the members when they change."""

from __future__ import annotations

from tideflow_server.config import MembershipConfig
from tideflow_server.membership import Membership
from tideflow_server.membership._membership import rendezvous_owner
from tideflow_server.persistence.sql import SqlPersistence

KEYS = [f"shard/{i}" for i in range(1, 33)]


async def test_owners_follow_the_members_as_they_join_and_leave(
    sqlite_persistence: SqlPersistence,
) -> None:
    config = MembershipConfig(heartbeat_interval_s=60, ttl_s=60)
    a, b = (
        Membership(sqlite_persistence.cluster, config),
        Membership(sqlite_persistence.cluster, config),
    )
    await a.join("history", "10.0.0.1:7234")
    alone = {key: a.owner("history", key) for key in KEYS}
    assert {o.host_id for o in alone.values() if o} == {"history@10.0.0.1:7234"}

    await b.join("history", "10.0.0.2:7234")
    await a.refresh()
    both = {key: a.owner("history", key) for key in KEYS}
    members = a.members("history")
    assert all(both[key] == rendezvous_owner(key, members) for key in KEYS)
    assert {o.host_id for o in both.values() if o} == {
        "history@10.0.0.1:7234",
        "history@10.0.0.2:7234",
    }
    assert a.owner("history", KEYS[0]) is both[KEYS[0]]  # asked again: the same answer

    await b.leave()
    await a.refresh()
    assert {a.owner("history", key).host_id for key in KEYS} == {"history@10.0.0.1:7234"}  # type: ignore[union-attr]
    assert a.owner("matching", KEYS[0]) is None
