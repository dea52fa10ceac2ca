"""What matching needs from history: one call, with typed errors that say what to do with the
task. `tideflow_server.rpc.clients.HistoryClient` (routed by shard) satisfies it."""

from __future__ import annotations

from typing import Protocol

from tideflow_server.internal.v1 import history_service_pb2


class HistoryClient(Protocol):
    async def record_block_started(
        self, request: history_service_pb2.RecordBlockStartedRequest
    ) -> history_service_pb2.RecordBlockStartedResponse:
        """Mark the attempt started for the poll `request.request_id`.

        Raises `tideflow_server.rpc.errors` types: NotFound (run or pending block gone, or
        already completed), FailedPrecondition or AlreadyExists (started by another poll) mean
        the task is stale, and only these drop it; anything else (Unavailable, a deadline, a
        failure of any other kind or layer) keeps the task for a later try.
        """
        ...
