"""GetRunHistory: committed events in pages; with wait_new_event, a long poll that returns
as soon as the run appends an event past the caller's position (or closes)."""

from __future__ import annotations

import asyncio
import contextlib
import json

from tideflow.api.v1 import common_pb2, history_pb2
from tideflow_server.history.api._common import execution_id_of
from tideflow_server.history.shard.port import Shard
from tideflow_server.internal.v1 import history_service_pb2, records_pb2
from tideflow_server.persistence import errors as store
from tideflow_server.rpc.errors import FieldViolation, InvalidArgument, Unavailable

_CLOSE_EVENTS = {
    history_pb2.EVENT_TYPE_RUN_COMPLETED,
    history_pb2.EVENT_TYPE_RUN_FAILED,
    history_pb2.EVENT_TYPE_RUN_TIMED_OUT,
    history_pb2.EVENT_TYPE_RUN_CANCELED,
    history_pb2.EVENT_TYPE_RUN_TERMINATED,
}
DEFAULT_PAGE_SIZE = 1_000


def _token(execution_id: str, next_event_id: int) -> bytes:
    return json.dumps({"e": execution_id, "n": next_event_id}).encode()


def _parse_token(token: bytes, execution_id: str) -> int:
    try:
        parsed = json.loads(token)
    except (ValueError, RecursionError):
        parsed = None
    position = parsed.get("n") if isinstance(parsed, dict) else None
    if (
        not isinstance(parsed, dict)
        or parsed.get("e") != execution_id
        or not isinstance(position, int)
        or isinstance(position, bool)
        or position < 1
    ):
        raise InvalidArgument(
            [
                FieldViolation(
                    "next_page_token",
                    "is not a page token of this execution's history; pass the token the "
                    "previous page returned, unchanged",
                )
            ]
        )
    return position


async def closing_event(
    shard: Shard, namespace_id: str, run: common_pb2.RunRef, *, timeout_s: float
) -> history_pb2.HistoryEvent | None:
    """The event that closed `run`, waiting up to `timeout_s` for it; None while it is open."""
    request = history_service_pb2.GetRunHistoryRequest(namespace_id=namespace_id)
    request.request.run.CopyFrom(run)
    request.request.wait_new_event = timeout_s > 0
    request.request.history_event_filter_type = history_pb2.HISTORY_EVENT_FILTER_TYPE_CLOSE_EVENT
    events = (await invoke(shard, request, timeout_s=timeout_s)).response.history.events
    return events[-1] if events else None


async def invoke(
    shard: Shard,
    request: history_service_pb2.GetRunHistoryRequest,
    *,
    timeout_s: float | None = None,
) -> history_service_pb2.GetRunHistoryResponse:
    given = request.request
    execution_id = await execution_id_of(shard, request.namespace_id, given.run)
    start = _parse_token(given.next_page_token, execution_id) if given.next_page_token else 1
    close_only = (
        given.history_event_filter_type == history_pb2.HISTORY_EVENT_FILTER_TYPE_CLOSE_EVENT
    )
    page_size = given.page_size or DEFAULT_PAGE_SIZE
    if timeout_s is None:
        timeout_s = shard.config.long_poll_timeout_s
    deadline = asyncio.get_running_loop().time() + timeout_s

    while True:
        async with shard.locked(request.namespace_id, given.run.run_id, execution_id) as entry:
            info = records_pb2.RunExecutionInfo()
            info.CopyFrom(entry.state.execution_info)
            changed = entry.changed
            last_batch = entry.last_batch
        closed = info.state == records_pb2.RUN_STATE_COMPLETED
        has_new = info.next_event_id > start
        if has_new and (not close_only or closed):
            break
        if not given.wait_new_event or closed:
            break
        remaining = deadline - asyncio.get_running_loop().time()
        if remaining <= 0:
            break
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(changed.wait(), remaining)

    response = history_service_pb2.GetRunHistoryResponse()
    out = response.response
    if info.next_event_id <= start:
        # Nothing new yet: hand back the same position so the caller can keep waiting.
        if info.status == common_pb2.RUN_STATUS_RUNNING and given.wait_new_event:
            out.next_page_token = _token(execution_id, start)
        return response
    if close_only:
        start = info.next_event_id - 1  # the close event is the last one, in the last batch
    first = info.last_batch_event_id if close_only else start
    if (
        last_batch
        and last_batch[0].event_id <= first
        and last_batch[-1].event_id == info.next_event_id - 1
    ):
        # Everything asked for is in the batch this host just committed.
        cached: list[history_pb2.HistoryEvent] = [e for e in last_batch if e.event_id >= first]
        events = [e for e in cached[:page_size] if e.event_id >= start]
    else:
        try:
            page = await shard.manager.read_history(
                shard.shard_id, info, min_event_id=first, page_size=page_size
            )
        except store.PersistenceError as e:
            raise Unavailable(str(e)) from e
        events = [e for e in page.events if e.event_id >= start]
    if close_only:
        events = [e for e in events if e.event_type in _CLOSE_EVENTS]
    out.history.events.extend(events)
    last = events[-1].event_id if events else start - 1
    more = last + 1 < info.next_event_id
    if more or (info.status == common_pb2.RUN_STATUS_RUNNING and given.wait_new_event):
        out.next_page_token = _token(execution_id, last + 1)
    return response
