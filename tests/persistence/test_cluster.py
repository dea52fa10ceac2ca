"""Cluster metadata and membership."""

from __future__ import annotations

import asyncio

import pytest

from tideflow_server.persistence import NotFound
from tideflow_server.persistence.records import ClusterMetadataRow, MemberRow
from tideflow_server.persistence.sql import SqlPersistence


async def test_shard_count_is_fixed_by_the_first_init(persistence: SqlPersistence) -> None:
    with pytest.raises(NotFound):
        await persistence.cluster.get_cluster_metadata()
    results = await asyncio.gather(
        *(
            persistence.cluster.init_cluster_metadata(ClusterMetadataRow("c1", count))
            for count in (16, 32, 64)
        )
    )
    assert len({r.history_shard_count for r in results}) == 1
    stored = await persistence.cluster.get_cluster_metadata()
    assert stored == results[0]
    later = await persistence.cluster.init_cluster_metadata(ClusterMetadataRow("c1", 128))
    assert later.history_shard_count == stored.history_shard_count


async def test_membership_expires(persistence: SqlPersistence) -> None:
    def member(host: str, role: str, expires_ms: int) -> MemberRow:
        return MemberRow(
            host, role, f"127.0.0.1:{7000 + len(host)}", 0, expires_ms - 10, expires_ms
        )

    await persistence.cluster.upsert_member(member("h1", "history", 1_000))
    await persistence.cluster.upsert_member(member("h2", "matching", 5_000))
    await persistence.cluster.upsert_member(member("h3", "history", 5_000))
    assert [m.host_id for m in await persistence.cluster.list_members(now_ms=2_000)] == ["h2", "h3"]
    assert [
        m.host_id for m in await persistence.cluster.list_members(now_ms=0, role="history")
    ] == ["h1", "h3"]

    await persistence.cluster.upsert_member(member("h1", "history", 9_000))  # heartbeat
    assert len(await persistence.cluster.list_members(now_ms=6_000)) == 1
    assert await persistence.cluster.prune_members(now_ms=6_000) == 2
    assert [m.host_id for m in await persistence.cluster.list_members(now_ms=0)] == ["h1"]
