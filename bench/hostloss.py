"""Host loss under load (`--kill history@20`): one server process is killed (SIGKILL, as when
its machine dies) a set number of seconds into the first open-loop window, and not restarted.

What the report gets, in `Window.fault`:

- `reowned_s`: from the kill until every shard the killed history host owned has a new owner
  with a higher range id (read with ListShards, every 100 ms). The bound is the membership
  settings': a host is gone after `membership.ttl_s` without a heartbeat, and the others see
  that on their next `heartbeat_interval_s` beat, so at most ttl + one beat, plus acquiring.
- `completions_by_second`: runs that completed in each second of the window, any start time:
  the throughput dip and its length, plotted in `dip.png`.
- `recovered_s`: from the kill until completions per second are back to at least 90% of the
  offered rate for three seconds in a row.
- Lost and duplicated runs: every run started in the window is read back (its close event),
  and the runs in flight at the kill have their whole history read, each block's completion
  counted. A run the driver saw fail (its request died with the host) is lost only if its
  history says it did not complete.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import grpc

from bench.load import Measured
from bench.tideflow import NAMESPACE
from deploy.local.deployment import Deployment
from tideflow.api.v1 import (
    common_pb2,
    flow_service_pb2,
    flow_service_pb2_grpc,
    history_pb2,
    operator_service_pb2,
    operator_service_pb2_grpc,
)

logger = logging.getLogger("bench.hostloss")

ROLES = ("history", "matching")
RECOVERED_SHARE = 0.9
RECOVERED_FOR_S = 3
READ_CONCURRENCY = 32


@dataclass(frozen=True)
class Fault:
    role: str
    at_s: float

    @classmethod
    def parse(cls, text: str) -> Fault:
        """`history@20`: kill the first history process 20 s into the window."""
        role, _, at = text.partition("@")
        if role not in ROLES or not at:
            raise ValueError(f"--kill {text!r}: use ROLE@SECONDS, ROLE one of {ROLES}")
        seconds = float(at)
        if seconds <= 0:
            raise ValueError(f"--kill {text!r}: the seconds must be positive")
        return cls(role, seconds)


@dataclass
class FaultResult:
    role: str
    process: str
    at_s: float
    """Seconds into the window when the process died."""
    reowned_s: float | None = None
    """History: until the killed host's shards all had new owners (None: not within the
    window)."""
    shards_moved: int = 0
    completions_by_second: list[int] = field(default_factory=list)
    recovered_s: float | None = None
    """Until completions per second held >= 90% of the offered rate for 3 s (None: never)."""
    lowest_per_s: int | None = None
    """The fewest completions in one second after the kill."""
    runs_checked: int = 0
    """Runs started in the window whose close was read back."""
    lost: list[str] = field(default_factory=list)
    """Runs started in the window that did not complete."""
    histories_checked: int = 0
    """Runs in flight at the kill whose every block completion was counted."""
    duplicated: list[str] = field(default_factory=list)
    """Runs with a block whose completion is recorded more than once."""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class HostKiller:
    """Kills `fault.role`'s first process of `deployment` at the fault's time into a window,
    and watches its shards move."""

    def __init__(self, deployment: Deployment, fault: Fault) -> None:
        assert deployment.cluster is not None
        self.deployment = deployment
        self.fault = fault
        self.process = deployment.cluster.process_of(fault.role)
        self.killed_at: float | None = None
        """On the event loop's clock."""
        self.reowned_s: float | None = None
        self.shards_moved = 0
        self._task: asyncio.Task[None] | None = None

    def arm(self, window_start: float) -> None:
        """Kill at `window_start` (event loop clock) + the fault's seconds."""
        self._task = asyncio.create_task(self._run(window_start + self.fault.at_s))

    async def _run(self, when: float) -> None:
        loop = asyncio.get_running_loop()
        assert self.deployment.cluster is not None
        async with self.deployment.cluster.channel() as channel:
            operator = operator_service_pb2_grpc.OperatorServiceStub(channel)
            await asyncio.sleep(max(0.0, when - loop.time()))
            port = self.process.ports[self.fault.role]
            before = await _shards(operator)
            owned = {
                shard_id: range_id
                for shard_id, (owner, range_id) in before.items()
                if owner.endswith(f":{port}")
            }
            self.process.kill()
            self.killed_at = loop.time()
            logger.info("killed %s (pid gone) owning shards %s", self.process.name, sorted(owned))
            self.shards_moved = len(owned)
            if self.fault.role != "history":
                return
            while owned:
                await asyncio.sleep(0.1)
                try:
                    now = await _shards(operator)
                except grpc.aio.AioRpcError:
                    continue
                if all(
                    now[s][1] > r and not now[s][0].endswith(f":{port}") for s, r in owned.items()
                ):
                    self.reowned_s = loop.time() - self.killed_at
                    logger.info("its shards owned again after %.1f s", self.reowned_s)
                    return

    async def result(self, measured: Measured) -> FaultResult:
        """Once the window is over: the kill, the dip, and every run read back."""
        if self._task is not None:
            try:
                await asyncio.wait_for(self._task, 120)
            except TimeoutError:
                logger.warning("the killed host's shards were not owned again within 120 s")
        killed = self.killed_at if self.killed_at is not None else math.inf
        per_second = completions_by_second(measured)
        at = killed - measured.window_start
        result = FaultResult(
            role=self.fault.role,
            process=self.process.name,
            at_s=round(at, 2),
            reowned_s=None if self.reowned_s is None else round(self.reowned_s, 2),
            shards_moved=self.shards_moved,
            completions_by_second=per_second,
        )
        rate = measured.target_rate or 0.0
        result.recovered_s, result.lowest_per_s = recovery(per_second, at, rate)
        in_flight = [s.key for s in measured.counted if s.issued <= killed <= (s.closed or 0.0)]
        closes, histories = await _read_back(
            self.deployment.frontend, [s.key for s in measured.counted], in_flight
        )
        result.runs_checked = len(closes)
        result.lost = sorted(k for k, completed in closes.items() if not completed)
        result.histories_checked = len(histories)
        result.duplicated = sorted(k for k, twice in histories.items() if twice)
        return result


def completions_by_second(measured: Measured) -> list[int]:
    """Runs (any start time) that completed in each second of the window."""
    seconds = [0] * max(1, math.ceil(measured.window_s))
    for s in measured.all_samples:
        if s.ok and s.closed is not None:
            second = math.floor(s.closed - measured.window_start)
            if 0 <= second < len(seconds):
                seconds[second] += 1
    return seconds


def recovery(per_second: Sequence[int], at: float, rate: float) -> tuple[float | None, int | None]:
    """(Seconds from the kill at `at` until completions held >= 90% of `rate` for three
    seconds, or None; the fewest completions in a second from the kill on.)"""
    first = math.floor(at) if math.isfinite(at) else len(per_second)
    after = list(per_second[first:])
    lowest = min(after) if after else None
    floor = RECOVERED_SHARE * rate
    for start in range(first + 1, len(per_second) - RECOVERED_FOR_S + 1):
        if all(n >= floor for n in per_second[start : start + RECOVERED_FOR_S]):
            return round(start - at, 1), lowest
    return None, lowest


async def _shards(operator: Any) -> dict[int, tuple[str, int]]:
    listed = await operator.ListShards(operator_service_pb2.ListShardsRequest(), timeout=5)
    return {s.shard_id: (s.owner_host, s.range_id) for s in listed.shards}


async def _read_back(
    address: str, keys: list[str], in_flight: list[str]
) -> tuple[dict[str, bool], dict[str, bool]]:
    """(run -> whether it completed, for `keys`; run -> whether a block's completion is
    recorded twice, for `in_flight`)."""
    gate = asyncio.Semaphore(READ_CONCURRENCY)
    closes: dict[str, bool] = {}
    twice: dict[str, bool] = {}
    async with grpc.aio.insecure_channel(address) as channel:
        stub = flow_service_pb2_grpc.FlowServiceStub(channel)

        async def close_of(key: str) -> None:
            request = flow_service_pb2.GetRunHistoryRequest(
                namespace=NAMESPACE,
                run=common_pb2.RunRef(run_id=key),
                history_event_filter_type=history_pb2.HISTORY_EVENT_FILTER_TYPE_CLOSE_EVENT,
            )
            async with gate:
                reply = await stub.GetRunHistory(request, timeout=30)
            events = reply.history.events
            closes[key] = bool(events) and (
                events[-1].event_type == history_pb2.EVENT_TYPE_RUN_COMPLETED
            )

        async def history_of(key: str) -> None:
            request = flow_service_pb2.GetRunHistoryRequest(
                namespace=NAMESPACE, run=common_pb2.RunRef(run_id=key)
            )
            events: list[history_pb2.HistoryEvent] = []
            async with gate:
                while True:
                    reply = await stub.GetRunHistory(request, timeout=30)
                    events += reply.history.events
                    if not reply.next_page_token:
                        break
                    request.next_page_token = reply.next_page_token
            completed = Counter(
                e.block_completed_event_attributes.scheduled_event_id
                for e in events
                if e.event_type == history_pb2.EVENT_TYPE_BLOCK_COMPLETED
            )
            twice[key] = any(n > 1 for n in completed.values())

        began = time.monotonic()
        await asyncio.gather(*(close_of(k) for k in keys), *(history_of(k) for k in in_flight))
        logger.info(
            "read back %d closes and %d histories in %.1f s",
            len(keys),
            len(in_flight),
            time.monotonic() - began,
        )
    return closes, twice
