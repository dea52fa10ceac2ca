"""Which shards this host owns, kept in line with membership.

Every history host computes the same assignment from the live members (rendezvous hashing)
and acquires the shards assigned to it through the fencing protocol (range_id bump), so a
restarted or added host takes shards over safely: the previous owner's next write fails and it
drops the shard. A shard whose ownership was lost is released and, if still assigned here,
acquired again after a short pause.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator

import structlog

from tideflow_server import observability
from tideflow_server.config import HistoryConfig
from tideflow_server.history.flows import FlowCache
from tideflow_server.history.interpreter import Limits
from tideflow_server.history.shard.context import ShardContext
from tideflow_server.history.shard.direct import DirectDispatch
from tideflow_server.history.shard.port import TimerExecutor, TransferExecutor
from tideflow_server.history.visibility import VisibilityWriter
from tideflow_server.membership import Membership
from tideflow_server.namespaces import NamespaceCache
from tideflow_server.persistence import errors as store
from tideflow_server.persistence.manager import PersistenceManager
from tideflow_server.rpc.clients import HISTORY, HistoryClient, MatchingClient, shard_key
from tideflow_server.rpc.errors import Unavailable
from tideflow_server.taskqueue_configs import TaskQueueConfigs

log = structlog.get_logger(__name__)

_REBALANCE_INTERVAL_S = 5.0


class ShardController:
    def __init__(
        self,
        *,
        manager: PersistenceManager,
        membership: Membership,
        matching: MatchingClient,
        history: HistoryClient,
        namespaces: NamespaceCache,
        config: HistoryConfig,
        shard_count: int,
        timer_executor: TimerExecutor,
        transfer_executor: TransferExecutor,
        blueprint_limits: Limits | None = None,
        task_queues: TaskQueueConfigs | None = None,
    ) -> None:
        """`timer_executor` and `transfer_executor` are what each shard's queues run
        (history/tasks/), handed in so that shard/ does not import them."""
        self._manager = manager
        self._membership = membership
        self._matching = matching
        self._history = history
        self._namespaces = namespaces
        self._config = config
        self._shard_count = shard_count
        self._timer_executor = timer_executor
        self._transfer_executor = transfer_executor
        self._host_id = ""
        self._flows = FlowCache(manager, limits=blueprint_limits)
        self._visibility = VisibilityWriter(manager.persistence.visibility)
        self._deletions = asyncio.Semaphore(config.deletions_in_flight)
        self._direct = DirectDispatch() if config.direct_dispatch else None
        self._task_queues = task_queues or TaskQueueConfigs(manager.persistence.tasks)
        self._shards: dict[int, ShardContext] = {}
        observability.watch_history(self._gauges)
        self._acquiring: dict[int, asyncio.Task[None]] = {}
        self._kick = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def owned(self) -> list[int]:
        return sorted(self._shards)

    def _assigned(self) -> set[int]:
        assigned = set()
        for shard_id in range(1, self._shard_count + 1):
            owner = self._membership.owner(HISTORY, shard_key(shard_id))
            if owner is not None and owner.host_id == self._host_id:
                assigned.add(shard_id)
        return assigned

    async def start(self, rpc_address: str) -> None:
        """Take the shards assigned to this host, which serves history at `rpc_address`."""
        self._host_id = self._membership.host_id(HISTORY, rpc_address)
        self._membership.subscribe(self._kick.set)
        await self._rebalance()
        self._task = asyncio.create_task(self._loop(), name="shard-controller")

    async def _loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._kick.wait(), _REBALANCE_INTERVAL_S)
            self._kick.clear()
            try:
                await self._rebalance()
            except Exception:
                log.warning("shard rebalance failed", exc_info=True)

    async def _rebalance(self) -> None:
        if not any(m.host_id == self._host_id for m in self._membership.members(HISTORY)):
            # A view without this host, which is running: its own row expired because its
            # heartbeats could not be written (the database was away). That is no reason to
            # give shards up; the next heartbeat puts the row back, and if another host takes
            # a shard meanwhile, the fence fails this host's next write and it drops it.
            return
        assigned = self._assigned()
        for shard_id in sorted(set(self._shards) - assigned):
            await self._release(shard_id)
        missing = [s for s in sorted(assigned) if s not in self._shards]
        await asyncio.gather(*(self._acquire(s) for s in missing))

    def _gauges(self) -> Iterator[tuple[str, float, dict[str, str]]]:
        shards = list(self._shards.values())
        yield "shards", len(shards), {}
        now_ms = int(time.time() * 1000)
        transfer, timer = (0.0, 0), (0.0, 0)
        for shard in shards:
            if shard.transfer is not None:
                lag, pending = shard.transfer.lag()
                transfer = (max(transfer[0], lag), transfer[1] + pending)
            if shard.timers is not None:
                lag, pending = shard.timers.lag(now_ms)
                timer = (max(timer[0], lag), timer[1] + pending)
        for queue, (lag, pending) in (("outbox", transfer), ("timer", timer)):
            yield "lag", lag, {"tideflow.queue": queue}
            yield "pending", pending, {"tideflow.queue": queue}

    async def _acquire(self, shard_id: int) -> None:
        try:
            lease = await self._manager.acquire_shard(shard_id, owner=self._host_id)
        except (store.ShardOwnershipLost, store.Unavailable, store.ConditionFailed) as e:
            log.info("shard not acquired; will retry", shard_id=shard_id, error=str(e))
            return
        shard = ShardContext(
            lease=lease,
            manager=self._manager,
            config=self._config,
            flows=self._flows,
            namespaces=self._namespaces,
            matching=self._matching,
            history=self._history,
            on_lost=self._lost,
            timer_executor=self._timer_executor,
            transfer_executor=self._transfer_executor,
            visibility=self._visibility,
            deletions=self._deletions,
            direct=self._direct,
            task_queues=self._task_queues,
        )
        await shard.start()
        self._shards[shard_id] = shard
        observability.shard_moved("acquired")
        log.info("shard acquired", shard_id=shard_id, range_id=lease.range_id)

    async def _release(self, shard_id: int) -> None:
        shard = self._shards.pop(shard_id, None)
        if shard is not None:
            await shard.stop()
            observability.shard_moved("released")
            log.info("shard released", shard_id=shard_id)

    async def close_shard(self, shard_id: int) -> None:
        """Drop the shard here (an operator's or a peer's request); re-acquired if assigned."""
        await self._release(shard_id)
        self._kick.set()

    def _lost(self, shard: ShardContext) -> None:
        if self._shards.get(shard.shard_id) is shard:
            del self._shards[shard.shard_id]
            observability.shard_moved("lost")
            asyncio.get_running_loop().create_task(shard.stop())
            self._kick.set()

    def get(self, shard_id: int) -> ShardContext:
        shard = self._shards.get(shard_id)
        if shard is None or shard.lost:
            raise Unavailable(
                f"shard {shard_id} is not owned by this host", reason="SHARD_NOT_OWNED"
            )
        return shard

    async def stop(self) -> None:
        """Release every shard: stop its queues and persist their ack levels."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for shard_id in list(self._shards):
            await self._release(shard_id)
