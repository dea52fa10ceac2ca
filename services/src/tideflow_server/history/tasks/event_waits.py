"""The outbox task of an event block that started waiting (`AwaitEvent`): register the wait in
the namespace's event store, then offer the block the events kept there, oldest first, until
it takes one.

The wait is stored before the kept events are read, and a publish stores its event before it
reads the waits: whichever comes second sees the other, so no event published while the block
waits is missed (it may be offered twice; the run takes it once). A wait whose block took an
event is dropped here; one whose block stopped waiting otherwise is dropped by the next publish
that finds it (DeliverEvent answers `waiting` false).
"""

from __future__ import annotations

import time

from tideflow.api.v1 import common_pb2
from tideflow_server.history import events
from tideflow_server.history.shard.port import Shard
from tideflow_server.internal.v1 import records_pb2
from tideflow_server.persistence import errors as store
from tideflow_server.persistence.records import EventWaitRow
from tideflow_server.rpc.errors import NotFound, ServiceError


async def register(shard: Shard, task: records_pb2.TransferTask) -> None:
    spec = task.register_event_wait
    try:
        async with shard.locked(task.namespace_id, task.run_id, task.execution_id) as entry:
            result = entry.state.block_results.get(spec.block_id)
            if result is None or not result.HasField("awaiting_event"):
                return  # it took an event, timed out, or the run closed: nothing to register
    except NotFound:
        return
    wait = EventWaitRow(
        task.namespace_id,
        spec.event_type,
        spec.correlation_key,
        task.run_id,
        task.execution_id,
        spec.block_id,
    )
    store_ = shard.manager.persistence.events
    try:
        await store_.add_event_wait(wait)
        kept = await store_.find_events(
            task.namespace_id,
            spec.event_type,
            spec.correlation_key,
            now_ms=int(time.time() * 1000),
            limit=shard.config.max_kept_event_matches,
        )
    except store.PersistenceError as e:
        raise ServiceError(str(e)) from e  # the transfer queue retries the task
    run = common_pb2.RunRef(run_id=task.run_id, execution_id=task.execution_id)
    for row in kept:
        published = events.published(row)
        if not await events.deliver(shard, task.namespace_id, run, spec.block_id, published):
            try:
                await store_.remove_event_wait(wait)
            except store.PersistenceError as e:
                raise ServiceError(str(e)) from e
            return
