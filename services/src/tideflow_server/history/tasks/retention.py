"""Retention: a closed run leaves the database once its namespace's retention has passed.

Each run gets a durable timer when it closes (`closing.arm_deletion`, in the commit that
closes it), due at its close time plus the namespace's retention as it stood then. When it
fires, the run's visibility row, history, execution row and current-run pointer are deleted.

A timer per run rather than a periodic sweep of each shard because:

- the timer queue already exists, is per shard, survives restarts and shard moves, and
  fires each deletion once, at its time, in task-id order with the rest of the shard's timers;
- a sweep has to find the expired runs, which needs an index by close time that no backend
  has for executions (Cassandra least of all), or a scan of every closed run each pass;
- the deletion rate then follows the close rate a retention period earlier, which is the
  steadiest load there is.

What that costs: a retention changed later applies to runs that close afterwards, not to
those already closed (the same rule as Temporal's).

A deletion waits until every outbox task committed before it is delivered (the close's
visibility row, the report to a parent), so it can never be overtaken by them; runs it finds
open (none should be) are left alone. At most `history.deletions_in_flight` deletions run at
once on a host, so a backlog of due deletions drains at a bounded pace beside the runs being
decided. A parent closed with an abandoned child still open is deleted on time: the child's
close report then finds no parent and is dropped.
"""

from __future__ import annotations

import structlog

from tideflow_server.history.shard.port import Shard
from tideflow_server.internal.v1 import records_pb2
from tideflow_server.rpc.errors import Unavailable

log = structlog.get_logger(__name__)


async def delete(shard: Shard, timer: records_pb2.TimerTask) -> None:
    """The run of `timer`, deleted (a run already gone raises NotFound: nothing to do)."""
    if not shard.outbox_done_through(timer.task_id):
        # Raised to the timer queue, which tries again with a backoff.
        raise Unavailable("the run's close is still being delivered; deletion waits")
    run = (timer.namespace_id, timer.run_id, timer.execution_id)
    async with shard.deletions, shard.locked(*run) as entry:
        if entry.salvaged.state.execution_info.state != records_pb2.RUN_STATE_COMPLETED:
            return
        await shard.delete_execution(entry)
    log.debug("run deleted (retention)", run_id=timer.run_id, execution_id=timer.execution_id)
