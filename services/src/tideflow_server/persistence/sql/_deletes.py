"""Retention's deletes, grouped: the runs whose retention ends together leave in one
transaction per table set, not one each.

Retention deletes a run's visibility row, history and execution as three idempotent calls
(history/tasks/retention.py). At ten million runs a day that is 116 runs a second, three
commits each. Here the calls that arrive while another group is being deleted wait and go
together (persistence/group.py), so a busy host commits once per group and an idle one
deletes at once. A group that fails with an unknown outcome fails every call in it (each is
retried by its timer, and deleting again is harmless); a group the database refuses is
deleted one key at a time, so one bad key fails only its own call.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

from tideflow_server.persistence.errors import PersistenceError
from tideflow_server.persistence.group import GroupCommit
from tideflow_server.persistence.sql._database import SqlDatabase

Key = TypeVar("Key")

MAX_GROUP = 256
"""Keys in one transaction at most (a backlog of due deletions drains in groups this big)."""


class GroupedDelete(Generic[Key]):
    def __init__(
        self,
        db: SqlDatabase,
        statements: Sequence[str],
        args: Callable[[Key], Sequence[object]],
    ) -> None:
        """`statements` run in order for each key, with `args(key)` as their parameters."""
        self._db = db
        self._statements = tuple(statements)
        self._args = args
        self._group: GroupCommit[Key] = GroupCommit(
            self._one,
            self._many,
            calls=2,
            max_group=MAX_GROUP,
            size=lambda _: 1,
            max_bytes=MAX_GROUP,
        )

    async def delete(self, key: Key) -> None:
        await self._group.write(key)

    @property
    def transactions(self) -> int:
        """Transactions sent (groups and lone keys): for tests and the curious."""
        return self._group.statements

    async def _one(self, key: Key) -> None:
        async with self._db.write() as conn:
            for statement in self._statements:
                await conn.execute(statement, *self._args(key))

    async def _many(self, keys: Sequence[Key]) -> list[PersistenceError | None]:
        rows = [self._args(key) for key in keys]
        async with self._db.write() as conn:
            for statement in self._statements:
                await conn.executemany(statement, rows)
        return [None] * len(keys)
