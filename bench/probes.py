"""What the bench reads at the edges of a measured window: CPU time of processes, and
PostgreSQL's transaction counters.

CPU is utime + stime from /proc/<pid>/stat (every thread of the process). A process group
(PostgreSQL: the postmaster and its backends) also counts the children it has reaped
(cutime + cstime), so a backend that exits inside the window is not lost.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import asyncpg

_TICK = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may contain spaces and parentheses; it ends at the last ')'.
    return text.rsplit(")", 1)[1].split()


def _ticks(fields: list[str], *, reaped: bool) -> int:
    # fields[0] is field 3 (state) of proc(5): utime is field 14, stime 15, cutime 16, cstime 17.
    own = int(fields[11]) + int(fields[12])
    return own + (int(fields[13]) + int(fields[14]) if reaped else 0)


def _children(parent: int) -> list[int]:
    children = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            fields = _stat_fields(int(entry.name))
            if fields is not None and int(fields[1]) == parent:
                children.append(int(entry.name))
    return children


@dataclass(frozen=True)
class Tracked:
    """Processes whose CPU is summed under one name."""

    name: str
    pids: Sequence[int]
    with_children: bool = False
    """Add the live children and the reaped children's time (a postmaster and its backends)."""

    def cpu_seconds(self) -> float:
        ticks = 0
        for pid in self.pids:
            fields = _stat_fields(pid)
            if fields is None:
                continue
            ticks += _ticks(fields, reaped=self.with_children)
            if self.with_children:
                for child in _children(pid):
                    child_fields = _stat_fields(child)
                    if child_fields is not None:
                        ticks += _ticks(child_fields, reaped=False)
        return ticks / _TICK


def jit_seconds(pid: int) -> float:
    """CPU seconds a JVM's JIT compiler threads have used (threads named "C1/C2 CompilerThread")."""
    ticks = 0
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0.0
    for tid in tasks:
        try:
            name = Path(f"/proc/{pid}/task/{tid}/comm").read_text()
            text = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
        except OSError:
            continue
        if "Compiler" in name:
            ticks += _ticks(text.rsplit(")", 1)[1].split(), reaped=False)
    return ticks / _TICK


class CpuProbe:
    """CPU seconds of each tracked group, and their differences between two readings."""

    def __init__(self, groups: Sequence[Tracked]) -> None:
        self.groups = list(groups)

    def read(self) -> dict[str, float]:
        return {group.name: group.cpu_seconds() for group in self.groups}

    @staticmethod
    def delta(before: Mapping[str, float], after: Mapping[str, float]) -> dict[str, float]:
        return {name: round(after[name] - before.get(name, 0.0), 3) for name in after}


class PostgresProbe:
    """Transactions of one database: `xact_commit` of pg_stat_database, and transaction ids
    handed out (write transactions; from the cluster-wide next xid, so nothing else may write
    to the server during a window); and the database's size on disk (`pg_database_size`:
    tables, indexes and TOAST, dead rows until vacuum reuses their space).

    Backends publish their counters to pg_stat_database when idle, at most once a second, so
    `xact_commit` read at an instant lags by up to a second; over a steady window the lag at
    both edges is about the same and cancels out. The next xid has no lag. This probe's own
    connection is to another database and assigns no xid."""

    def __init__(self, dsn: str, database: str) -> None:
        self.dsn = dsn
        self.database = database
        self._connection: asyncpg.Connection | None = None

    async def read(self) -> dict[str, int]:
        if self._connection is None:
            self._connection = await asyncpg.connect(self.dsn)
        row = await self._connection.fetchrow(
            "SELECT (SELECT xact_commit FROM pg_stat_database WHERE datname = $1) AS commits,"
            " pg_snapshot_xmax(pg_current_snapshot())::text::bigint AS next_xid,"
            " pg_database_size($1) AS bytes",
            self.database,
        )
        assert row is not None
        return {
            "commits": int(row["commits"] or 0),
            "write_xacts": int(row["next_xid"]),
            "bytes": int(row["bytes"]),
        }

    @staticmethod
    def delta(before: Mapping[str, int], after: Mapping[str, int]) -> dict[str, int]:
        return {name: after[name] - before[name] for name in after}

    async def close(self) -> None:
        if self._connection is not None:
            await self._connection.close()
            self._connection = None
