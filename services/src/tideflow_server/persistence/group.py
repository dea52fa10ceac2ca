"""Group commit: concurrent writes of one kind go to the database as one statement.

A write queued now waits for the end of the event loop's current pass, so that the writes
queued in the same pass (a worker's batch of completions, many runs' timers) go together.
At most `calls` statements are in flight; writes that come while all are busy wait for one to
return and then go together. An idle store so writes at once, and a busy one makes a
statement (and a commit, a WAL flush, a round trip) per group, not per write.

Every write gets its own outcome: `write_many` answers each with None or the error a lone
write would have raised. When a group fails as a whole with an error that proves nothing was
written (the server refused the statement), each write is tried alone, so one bad write fails
only itself. When the outcome is unknown (the connection went away), every write of the group
gets that error: each caller treats its write as possibly landed, as for a lone write.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

from tideflow_server.persistence.errors import PersistenceError, Unavailable

Request = TypeVar("Request")

WriteOne = Callable[[Request], Awaitable[None]]
WriteMany = Callable[[Sequence[Request]], Awaitable[Sequence[PersistenceError | None]]]
"""Writes a group as one statement; each request's outcome, in order."""


GROUP_OBSERVERS: list[Callable[[int], None]] = []
"""Told the size of every group as it goes out (the server's commit batch size metric).
Process-wide: a process has one set of telemetry instruments."""


class GroupCommit(Generic[Request]):
    def __init__(
        self,
        write_one: WriteOne[Request],
        write_many: WriteMany[Request],
        *,
        calls: int,
        max_group: int,
        size: Callable[[Request], int],
        max_bytes: int,
    ) -> None:
        self._write_one = write_one
        self._write_many = write_many
        self._calls = calls
        self._max_group = max_group
        self._size = size
        self._max_bytes = max_bytes
        self._waiting: list[tuple[Request, asyncio.Future[None]]] = []
        self._in_flight: set[asyncio.Task[None]] = set()
        self._pump_scheduled = False
        self.statements = 0
        """Statements sent (groups and lone writes): for tests and the curious."""

    async def write(self, request: Request) -> None:
        """Write `request` with whatever else is waiting; raises what a lone write would. A
        caller cancelled while waiting leaves the write to go on (its outcome is unknown)."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append((request, done))
        if not self._pump_scheduled:
            self._pump_scheduled = True
            asyncio.get_running_loop().call_soon(self._pump)
        await asyncio.shield(done)

    def _pump(self) -> None:
        self._pump_scheduled = False
        while self._waiting and len(self._in_flight) < self._calls:
            taken, total = 0, 0
            for request, _ in self._waiting[: self._max_group]:
                total += self._size(request)
                if taken and total > self._max_bytes:
                    break  # a group stays a statement of bounded size (the first always goes)
                taken += 1
            group = self._waiting[:taken]
            del self._waiting[:taken]
            for observe in GROUP_OBSERVERS:
                observe(taken)
            call = asyncio.create_task(self._send(group), name="group-commit")
            self._in_flight.add(call)
            call.add_done_callback(self._call_done)

    def _call_done(self, call: asyncio.Task[None]) -> None:
        self._in_flight.discard(call)
        self._pump()

    async def _send(self, group: list[tuple[Request, asyncio.Future[None]]]) -> None:
        if len(group) == 1:
            await self._alone(*group[0])
            return
        self.statements += 1
        try:
            outcomes = await self._write_many([request for request, _ in group])
        except Unavailable as e:
            for _, done in group:
                _settle(done, Unavailable(str(e)))
            return
        except PersistenceError:
            # The server refused the statement, so nothing of the group was written: each
            # write alone finds out whether it was the one at fault.
            await asyncio.gather(*(self._alone(request, done) for request, done in group))
            return
        except asyncio.CancelledError:
            for _, done in group:
                _settle(done, Unavailable("group commit cancelled; the outcome is unknown"))
            raise
        except Exception as e:
            for _, done in group:
                _settle(done, e)
            return
        for (_, done), outcome in zip(group, outcomes, strict=True):
            _settle(done, outcome)

    async def _alone(self, request: Request, done: asyncio.Future[None]) -> None:
        self.statements += 1
        try:
            await self._write_one(request)
        except asyncio.CancelledError:
            _settle(done, Unavailable("write cancelled; the outcome is unknown"))
            raise
        except Exception as e:
            _settle(done, e)
        else:
            _settle(done, None)


def _settle(done: asyncio.Future[None], outcome: BaseException | None) -> None:
    if done.done():
        return
    if outcome is None:
        done.set_result(None)
    else:
        done.set_exception(outcome)
