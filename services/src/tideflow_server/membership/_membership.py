from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from collections.abc import Callable, Sequence

import structlog

from tideflow_server.config import MembershipConfig
from tideflow_server.persistence.interfaces import ClusterStore
from tideflow_server.persistence.records import MemberRow

log = structlog.get_logger(__name__)


def stable_hash(*parts: str) -> int:
    """A hash that is the same in every process and on every machine (unlike `hash`)."""
    digest = hashlib.blake2b("\x1f".join(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def rendezvous_owner(key: str, members: Sequence[MemberRow]) -> MemberRow | None:
    """Highest-random-weight hashing: each key goes to the member scoring highest for it, so a
    member joining or leaving moves only the keys it wins or held."""
    if not members:
        return None
    return max(members, key=lambda m: (stable_hash(key, m.host_id), m.host_id))


def _now_ms() -> int:
    return int(time.time() * 1000)


_MAX_REMEMBERED_OWNERS = 100_000


class Membership:
    """This process's membership rows (one per role it serves) and the cluster's view.

    Each row is refreshed every `heartbeat_interval_s` and expires `ttl_s` after its last
    refresh; the live members are re-read on the same beat. Listeners hear about changes.
    """

    def __init__(
        self,
        cluster: ClusterStore,
        config: MembershipConfig,
        *,
        clock_ms: Callable[[], int] = _now_ms,
    ) -> None:
        self._cluster = cluster
        self._config = config
        self._clock_ms = clock_ms
        self._own: dict[str, MemberRow] = {}
        self._members: dict[str, list[MemberRow]] = {}
        # (role, key) -> owner, valid while the members of every role stay the same.
        self._owners: dict[tuple[str, str], MemberRow | None] = {}
        self._listeners: list[Callable[[], None]] = []
        self._task: asyncio.Task[None] | None = None
        self._session_start = clock_ms()

    def host_id(self, role: str, rpc_address: str) -> str:
        return f"{role}@{rpc_address}"

    async def join(self, role: str, rpc_address: str) -> MemberRow:
        """Announce that this process serves `role` at `rpc_address` (its identity: a process
        restarted on the same address replaces its own row at once)."""
        now = self._clock_ms()
        row = MemberRow(
            host_id=self.host_id(role, rpc_address),
            role=role,
            rpc_address=rpc_address,
            session_start_ms=self._session_start,
            last_heartbeat_ms=now,
            expires_ms=now + int(self._config.ttl_s * 1000),
        )
        self._own[role] = row
        await self._cluster.upsert_member(row)
        await self.refresh()
        return row

    def me(self, role: str) -> MemberRow:
        return self._own[role]

    def members(self, role: str) -> list[MemberRow]:
        return list(self._members.get(role, []))

    def owner(self, role: str, key: str) -> MemberRow | None:
        """The member of `role` that owns `key` in the current view (remembered until the
        members change: every routed call asks)."""
        if (role, key) in self._owners:
            return self._owners[(role, key)]
        owner = rendezvous_owner(key, self._members.get(role, []))
        if len(self._owners) >= _MAX_REMEMBERED_OWNERS:
            self._owners.clear()
        self._owners[(role, key)] = owner
        return owner

    def subscribe(self, listener: Callable[[], None]) -> None:
        self._listeners.append(listener)

    async def refresh(self) -> None:
        rows = await self._cluster.list_members(now_ms=self._clock_ms())
        by_role: dict[str, list[MemberRow]] = {}
        for row in rows:
            by_role.setdefault(row.role, []).append(row)
        changed = {r: [m.host_id for m in ms] for r, ms in by_role.items()} != {
            r: [m.host_id for m in ms] for r, ms in self._members.items()
        }
        self._members = by_role
        if changed:
            self._owners.clear()
            log.info("membership changed", members={r: len(m) for r, m in by_role.items()})
            for listener in self._listeners:
                listener()

    async def _heartbeat(self) -> None:
        interval = self._config.heartbeat_interval_s
        while True:
            await asyncio.sleep(interval)
            try:
                now = self._clock_ms()
                for role, row in list(self._own.items()):
                    fresh = MemberRow(
                        host_id=row.host_id,
                        role=row.role,
                        rpc_address=row.rpc_address,
                        session_start_ms=row.session_start_ms,
                        last_heartbeat_ms=now,
                        expires_ms=now + int(self._config.ttl_s * 1000),
                    )
                    await self._cluster.upsert_member(fresh)
                    self._own[role] = fresh
                await self.refresh()
            except Exception:
                log.warning("membership heartbeat failed", exc_info=True)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._heartbeat(), name="membership-heartbeat")

    async def leave(self) -> None:
        """Expire this process's rows now, so others take over without waiting for the TTL."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        now = self._clock_ms()
        for row in self._own.values():
            gone = MemberRow(row.host_id, row.role, row.rpc_address, row.session_start_ms, now, now)
            with contextlib.suppress(Exception):
                await self._cluster.upsert_member(gone)
        self._own.clear()
