"""PublishEvent: keep the event in its namespace, then offer it to the event blocks waiting
for its type and key (each through the history host that owns the block's run).

The event is stored before the waits are read, and an event block's wait is stored before it
reads the kept events (history/tasks/event_waits.py), so one of the two always sees the other.
A publish that fails midway is retried by the caller with the same event id: the store keeps
the first, and each run takes an event id once. Expired events are deleted here, in bounded
batches, at most once per `events.expire_interval_s` per frontend, off the request's path.
"""

from __future__ import annotations

import asyncio
import time
import uuid

import structlog

from tideflow.api.v1 import flow_service_pb2
from tideflow_server.config import EventsConfig
from tideflow_server.history import events
from tideflow_server.internal.v1 import history_service_pb2 as hs
from tideflow_server.persistence.interfaces import EventStore
from tideflow_server.persistence.records import EventRow, EventWaitRow
from tideflow_server.rpc.clients import HistoryClient

log = structlog.get_logger(__name__)


class EventPublisher:
    def __init__(self, store: EventStore, history: HistoryClient, config: EventsConfig) -> None:
        self._store = store
        self._history = history
        self._config = config
        self._next_expiry = 0.0
        self._expiring: asyncio.Task[None] | None = None

    async def publish(
        self, namespace_id: str, request: flow_service_pb2.PublishEventRequest
    ) -> flow_service_pb2.PublishEventResponse:
        now_ms = int(time.time() * 1000)
        row = EventRow(
            namespace_id=namespace_id,
            event_id=request.event_id or str(uuid.uuid4()),
            event_type=request.event_type,
            correlation_key=request.correlation_key,
            publish_time_ms=now_ms,
            expire_ms=now_ms + int(self._config.retention_s * 1000),
            data=request.payload.SerializeToString(),
        )
        kept = await self._store.publish(row)
        self._expire_soon()
        waits = await self._store.event_waits(
            namespace_id,
            kept.event_type,
            kept.correlation_key,
            limit=self._config.max_waits_per_publish,
        )
        published = events.published(kept)
        await asyncio.gather(*(self._deliver(wait, published) for wait in waits))
        return flow_service_pb2.PublishEventResponse(event_id=kept.event_id, delivered=len(waits))

    async def _deliver(self, wait: EventWaitRow, event: hs.PublishedEvent) -> None:
        request = hs.DeliverEventRequest(
            namespace_id=wait.namespace_id, block_id=wait.block_id, event=event
        )
        request.run.run_id = wait.run_id
        request.run.execution_id = wait.execution_id
        response = await self._history.deliver_event(request)
        if not response.waiting:
            await self._store.remove_event_wait(wait)

    def _expire_soon(self) -> None:
        now = time.monotonic()
        if now < self._next_expiry or (self._expiring is not None and not self._expiring.done()):
            return
        self._next_expiry = now + self._config.expire_interval_s
        self._expiring = asyncio.create_task(self._expire())

    async def _expire(self) -> None:
        try:
            now_ms = int(time.time() * 1000)
            deleted = self._config.expire_batch
            # Batch after batch while they come full; the next publish past the interval
            # goes on with what is left.
            for _ in range(10):
                if deleted < self._config.expire_batch:
                    break
                deleted = await self._store.delete_expired_events(
                    now_ms=now_ms, limit=self._config.expire_batch
                )
        except Exception as e:  # retried after the interval
            log.warning("expired events not deleted", error=str(e))
