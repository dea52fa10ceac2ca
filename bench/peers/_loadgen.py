"""The load shapes every peer driver runs, so that both peers are timed the same way.

Stdlib only: the drivers run in a peer's own virtual environment and import this module
from their folder. A driver supplies one coroutine, `run(run_id)`, that starts one run of
the scenario under that id and returns when the driver has seen it complete; this module
decides when runs start, which of them are measured, and how they are timed.

- Sequential: one run at a time, start-to-complete.
- Closed window: N lanes, each starting a run when its previous one completed.
- Open window: runs start at a constant rate on the wall clock (run i at t0 + i/R, however
  many are still in flight). Latency counts from the scheduled start, so a driver that
  falls behind does not hide the delay (no coordinated omission).

A window has `warmup_s` unmeasured, then `window_s` measured: only runs started inside the
measured part count, and they are awaited (at most `drain_s`) before the next window.
CPU is sampled from /proc at the two edges of the measured part.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

RunOnce = Callable[[str], Awaitable[None]]

_TICKS = os.sysconf("SC_CLK_TCK")


def proc_cpu_s(pid: int, *, children: bool = True) -> float | None:
    """utime+stime of a process (all its threads), plus its reaped children's if asked."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name is in parentheses and may hold spaces; fields 14-17 follow it.
    fields = raw[raw.rindex(")") + 2 :].split()
    utime, stime, cutime, cstime = (int(x) for x in fields[11:15])
    ticks = utime + stime + (cutime + cstime if children else 0)
    return ticks / _TICKS


def _parent_of(pid: int) -> int | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(raw[raw.rindex(")") + 2 :].split()[1])


def tree_cpu_s(root: int) -> float | None:
    """CPU of a server and its direct children (a postmaster and its backends).

    Backends that exited are in the root's reaped-children time; those still running are
    summed one by one, so a delta between two samples counts each CPU second once.
    """
    total = proc_cpu_s(root, children=True)
    if total is None:
        return None
    for entry in os.scandir("/proc"):
        if entry.name.isdigit() and _parent_of(int(entry.name)) == root:
            total += proc_cpu_s(int(entry.name), children=False) or 0.0
    return total


@dataclass
class CpuProbe:
    """CPU seconds of the processes a run involves: the driver itself, named single
    processes (a server, a worker) and named process trees (PostgreSQL)."""

    processes: dict[str, int] = field(default_factory=dict)
    trees: dict[str, int] = field(default_factory=dict)

    def sample(self) -> dict[str, float]:
        times = os.times()
        out = {"driver": times.user + times.system}
        for name, pid in self.processes.items():
            value = proc_cpu_s(pid)
            if value is not None:
                out[name] = value
        for name, root in self.trees.items():
            value = tree_cpu_s(root)
            if value is not None:
                out[name] = value
        return out

    @staticmethod
    def delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
        return {k: round(after[k] - before[k], 3) for k in after if k in before}


@dataclass
class Window:
    """One measured window, as the contract's PeerWindow plus what the driver needs to
    finish it (the ids of the measured runs that completed, failures)."""

    mode: str
    inflight: int | None
    target_rate: float | None
    completed: int = 0
    seconds: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)
    schedule_to_start_ms: list[float] = field(default_factory=list)
    cpu_s: dict[str, float] = field(default_factory=dict)
    completed_ids: list[str] = field(default_factory=list)
    failed: int = 0
    unfinished: int = 0
    first_error: str | None = None

    @property
    def label(self) -> str:
        if self.mode == "closed":
            return f"closed {self.inflight}"
        return f"open {self.target_rate:g}/s"

    def contract(self) -> dict[str, Any]:
        d = asdict(self)
        for extra in ("completed_ids", "failed", "unfinished", "first_error"):
            d.pop(extra)
        return d


class _Tally:
    def __init__(self, window: Window) -> None:
        self.window = window
        self.pending: set[str] = set()

    async def timed(self, run: RunOnce, run_id: str, started: float, measured: bool) -> None:
        if measured:
            self.pending.add(run_id)
        try:
            await run(run_id)
        except Exception as e:
            if measured:
                self.pending.discard(run_id)
                self.window.failed += 1
                if self.window.first_error is None:
                    self.window.first_error = f"{type(e).__name__}: {e}"[:500]
            # A peer that fails at once must not turn a lane into a busy loop.
            await asyncio.sleep(0.01)
            return
        if measured:
            self.pending.discard(run_id)
            self.window.latencies_ms.append(round((time.perf_counter() - started) * 1000, 3))
            self.window.completed_ids.append(run_id)


def new_run_id(tag: str) -> str:
    return f"{tag}-{uuid.uuid4().hex}"


async def sequential(run: RunOnce, count: int, *, tag: str) -> list[float]:
    """Start-to-complete of `count` runs, one at a time. A failure ends the driver."""
    latencies: list[float] = []
    for _ in range(count):
        started = time.perf_counter()
        await run(new_run_id(tag))
        latencies.append(round((time.perf_counter() - started) * 1000, 3))
    return latencies


async def _sleep_until(deadline: float) -> None:
    # Yields even when already late, so that an open loop catching up still lets the runs
    # it started make progress.
    await asyncio.sleep(max(0.0, deadline - time.perf_counter()))


async def _measure_cpu(cpu: CpuProbe, window: Window, t_measure: float, t_end: float) -> None:
    await _sleep_until(t_measure)
    before = cpu.sample()
    started = time.perf_counter()
    await _sleep_until(t_end)
    window.cpu_s = CpuProbe.delta(before, cpu.sample())
    window.seconds = round(time.perf_counter() - started, 3)


async def _drain(tally: _Tally, tasks: set[asyncio.Task[None]], drain_s: float) -> None:
    if tasks:
        _, late = await asyncio.wait(tasks, timeout=drain_s)
        for task in late:
            task.cancel()
        await asyncio.gather(*late, return_exceptions=True)
    tally.window.unfinished = len(tally.pending)
    tally.window.completed = len(tally.window.latencies_ms)


async def closed_window(
    run: RunOnce,
    *,
    index: int,
    inflight: int,
    warmup_s: float,
    window_s: float,
    drain_s: float,
    cpu: CpuProbe,
) -> Window:
    window = Window(mode="closed", inflight=inflight, target_rate=None)
    tally = _Tally(window)
    t_measure = time.perf_counter() + warmup_s
    t_end = t_measure + window_s

    async def lane() -> None:
        while (now := time.perf_counter()) < t_end:
            measured = now >= t_measure
            run_id = new_run_id(f"w{index}{'m' if measured else 'u'}")
            await tally.timed(run, run_id, now, measured)

    lanes = {asyncio.create_task(lane()) for _ in range(inflight)}
    await _measure_cpu(cpu, window, t_measure, t_end)
    await _drain(tally, lanes, drain_s)
    return window


async def open_window(
    run: RunOnce,
    *,
    index: int,
    rate: float,
    warmup_s: float,
    window_s: float,
    drain_s: float,
    cpu: CpuProbe,
) -> Window:
    window = Window(mode="open", inflight=None, target_rate=rate)
    tally = _Tally(window)
    t0 = time.perf_counter()
    t_measure = t0 + warmup_s
    t_end = t_measure + window_s
    tasks: set[asyncio.Task[None]] = set()
    meter = asyncio.create_task(_measure_cpu(cpu, window, t_measure, t_end))
    i = 0
    while (due := t0 + i / rate) < t_end:
        await _sleep_until(due)
        measured = due >= t_measure
        run_id = new_run_id(f"w{index}{'m' if measured else 'u'}")
        task = asyncio.create_task(tally.timed(run, run_id, due, measured))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        i += 1
    await meter
    await _drain(tally, set(tasks), drain_s)
    return window


@dataclass
class Plan:
    """The driver's view of plan.json (PeerPlan plus what run_peer set up)."""

    scenario: str
    warmup_runs: int
    sequential_runs: int
    closed_inflight: list[int]
    open_rates: list[float]
    warmup_s: float
    window_s: float
    drain_s: float
    cpu_processes: dict[str, int]
    cpu_trees: dict[str, int]
    peer: dict[str, Any]

    @classmethod
    def load(cls, path: Path) -> Plan:
        return cls(**json.loads(path.read_text()))


async def drive(plan: Plan, run: RunOnce) -> tuple[list[float], list[Window]]:
    """Warm-up runs, the sequential phase, then every closed window and every open window."""
    await sequential(run, plan.warmup_runs, tag="warm")
    sequential_ms = await sequential(run, plan.sequential_runs, tag="seq")
    cpu = CpuProbe(plan.cpu_processes, plan.cpu_trees)
    windows: list[Window] = []
    common = {"warmup_s": plan.warmup_s, "window_s": plan.window_s, "drain_s": plan.drain_s}
    for n in plan.closed_inflight:
        windows.append(await closed_window(run, index=len(windows), inflight=n, cpu=cpu, **common))
    for rate in plan.open_rates:
        windows.append(await open_window(run, index=len(windows), rate=rate, cpu=cpu, **common))
    return sequential_ms, windows


def window_notes(windows: list[Window]) -> list[str]:
    notes = []
    for w in windows:
        if w.failed or w.unfinished:
            error = f" (first error: {w.first_error})" if w.first_error else ""
            notes.append(
                f"{w.label}: {w.failed} measured runs failed, {w.unfinished} did not complete "
                f"within the drain time{error}"
            )
    return notes


def write_result(
    path: Path,
    *,
    version: str,
    sequential_ms: list[float],
    windows: list[Window],
    notes: list[str],
) -> None:
    path.write_text(
        json.dumps(
            {
                "version": version,
                "sequential_ms": sequential_ms,
                "windows": [w.contract() for w in windows],
                "notes": notes + window_notes(windows),
            }
        )
    )
