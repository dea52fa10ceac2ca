"""RunHandle: one run's result, history, signals and cancellation."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from tideflow import errors
from tideflow._converter import from_payloads, to_payloads
from tideflow.api.v1 import common_pb2, failure_pb2, flow_service_pb2, history_pb2

if TYPE_CHECKING:
    from tideflow.client._client import Client

# How long one long poll may be held open before it is re-issued.
_POLL_S = 60.0
# A pause before re-issuing a poll that failed because a server is away.
_RETRY_PAUSE_S = 0.2

_CLOSE = history_pb2.HISTORY_EVENT_FILTER_TYPE_CLOSE_EVENT


def _failure_type(failure: failure_pb2.Failure) -> str:
    """The first application error type along the failure's cause chain."""
    while True:
        if failure.HasField("application_failure_info"):
            return failure.application_failure_info.type
        if not failure.HasField("cause"):
            return ""
        failure = failure.cause


def _failure_message(failure: failure_pb2.Failure) -> str:
    messages = [failure.message]
    while failure.HasField("cause"):
        failure = failure.cause
        messages.append(failure.message)
    return ": ".join(m for m in messages if m)


class RunHandle:
    """A run, addressed by `run_id` and (optionally) one `execution_id` of it."""

    def __init__(
        self, client: Client, run_id: str, execution_id: str = "", *, started: bool = True
    ) -> None:
        self._client = client
        self.run_id = run_id
        self.execution_id = execution_id
        self.started = started
        """False when a start was a duplicate of the one that started the execution."""

    def __repr__(self) -> str:
        return f"RunHandle(run_id={self.run_id!r}, execution_id={self.execution_id!r})"

    @property
    def _ref(self) -> common_pb2.RunRef:
        return common_pb2.RunRef(run_id=self.run_id, execution_id=self.execution_id)

    async def _poll_history(
        self,
        request: flow_service_pb2.GetRunHistoryRequest,
        *,
        deadline: float | None,
    ) -> flow_service_pb2.GetRunHistoryResponse:
        """One long poll, re-issued while a server is away or the poll merely expired."""
        loop = asyncio.get_running_loop()
        while True:
            timeout = _POLL_S
            if deadline is not None:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise TimeoutError(f"run {self.run_id} did not close in time")
                timeout = min(timeout, remaining)
            try:
                return await self._client._call(
                    self._client._stub.GetRunHistory, request, timeout_s=timeout
                )
            except errors.DeadlineExceededError:
                continue
            except errors.UnavailableError:
                await asyncio.sleep(_RETRY_PAUSE_S)

    # The timeout parameter is the public contract; it bounds every re-issued long poll.
    async def result(self, *, timeout: float | None = None) -> Any:  # noqa: ASYNC109
        """Wait for the run to close and return its decoded result.

        Raises RunFailedError if it failed, was canceled, terminated or timed out, and
        TimeoutError if it is still open after `timeout` seconds."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        request = flow_service_pb2.GetRunHistoryRequest(
            namespace=self._client.namespace,
            run=self._ref,
            wait_new_event=True,
            history_event_filter_type=_CLOSE,
        )
        while True:
            reply = await self._poll_history(request, deadline=deadline)
            if reply.history.events:
                return self.outcome(reply.history.events[-1])
            request.next_page_token = reply.next_page_token

    def outcome(self, event: history_pb2.HistoryEvent) -> Any:
        """The decoded result a close event carries, or the error it stands for."""
        kind = event.WhichOneof("attributes")
        converter = self._client.converter
        if kind == "run_completed_event_attributes":
            return from_payloads(converter, event.run_completed_event_attributes.result)
        if kind == "run_failed_event_attributes":
            failure = event.run_failed_event_attributes.failure
            raise errors.RunFailedError(
                _failure_message(failure) or f"run {self.run_id} failed",
                status="FAILED",
                failure_type=_failure_type(failure),
                failure=failure,
            ) from errors.from_failure(failure, converter)
        if kind == "run_canceled_event_attributes":
            raise errors.RunFailedError(f"run {self.run_id} was canceled", status="CANCELED")
        if kind == "run_terminated_event_attributes":
            reason = event.run_terminated_event_attributes.reason
            raise errors.RunFailedError(
                f"run {self.run_id} was terminated" + (f": {reason}" if reason else ""),
                status="TERMINATED",
            )
        if kind == "run_timed_out_event_attributes":
            raise errors.RunFailedError(f"run {self.run_id} timed out", status="TIMED_OUT")
        raise errors.TideflowError(f"unexpected close event {kind} for run {self.run_id}")

    async def signal(self, name: str, input: Any = None, *, request_id: str | None = None) -> None:
        """Send signal `name`; a repeated `request_id` is dropped by the run."""
        request = flow_service_pb2.SignalRunRequest(
            namespace=self._client.namespace,
            run=self._ref,
            signal_name=name,
            input=to_payloads(self._client.converter, input),
            identity=self._client.identity,
            request_id=request_id or "",
        )
        await self._client._call(self._client._stub.SignalRun, request)

    async def cancel(self, *, reason: str = "") -> None:
        """Ask the run to cancel: open blocks are canceled and compensations run."""
        request = flow_service_pb2.CancelRunRequest(
            namespace=self._client.namespace,
            run=self._ref,
            reason=reason,
            identity=self._client.identity,
        )
        await self._client._call(self._client._stub.CancelRun, request)

    async def terminate(self, *, reason: str = "") -> None:
        """Close the run at once, without compensation."""
        request = flow_service_pb2.TerminateRunRequest(
            namespace=self._client.namespace,
            run=self._ref,
            reason=reason,
            identity=self._client.identity,
        )
        await self._client._call(self._client._stub.TerminateRun, request)

    async def describe(self) -> flow_service_pb2.DescribeRunResponse:
        """The run's status, pending blocks and block summaries."""
        request = flow_service_pb2.DescribeRunRequest(
            namespace=self._client.namespace, run=self._ref
        )
        return await self._client._call(self._client._stub.DescribeRun, request)

    async def history(
        self, *, follow: bool = False, page_size: int = 0
    ) -> AsyncIterator[history_pb2.HistoryEvent]:
        """The run's events in order. With `follow`, keep waiting for new events until the
        run closes; the close event is the last one yielded."""
        request = flow_service_pb2.GetRunHistoryRequest(
            namespace=self._client.namespace,
            run=self._ref,
            page_size=page_size,
            wait_new_event=follow,
        )
        while True:
            if follow:
                reply = await self._poll_history(request, deadline=None)
            else:
                reply = await self._client._call(self._client._stub.GetRunHistory, request)
            for event in reply.history.events:
                yield event
            if not reply.next_page_token:
                return
            request.next_page_token = reply.next_page_token
