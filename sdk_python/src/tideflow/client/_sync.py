"""A blocking facade over Client for scripts: its own event loop on a background thread."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Mapping
from datetime import timedelta
from types import TracebackType
from typing import Any, TypeVar, Unpack

import grpc

from tideflow._converter import PayloadConverter
from tideflow.api.v1 import blueprint_pb2, flow_pb2, flow_service_pb2
from tideflow.client._client import DEFAULT_ADDRESS, Client, StartOptions
from tideflow.client._handle import RunHandle

T = TypeVar("T")


class _LoopThread:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self.loop.run_forever, name="tideflow-sync-client", daemon=True
        )
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        if threading.current_thread() is self._thread:
            coro.close()
            raise RuntimeError("SyncClient cannot be called from its own event loop")
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join()
        self.loop.close()


class SyncRunHandle:
    """The blocking counterpart of RunHandle."""

    def __init__(self, handle: RunHandle, runner: _LoopThread) -> None:
        self._handle = handle
        self._runner = runner
        self.run_id = handle.run_id
        self.execution_id = handle.execution_id

    def result(self, *, timeout: float | None = None) -> Any:
        """Block until the run closes; see RunHandle.result."""
        return self._runner.run(self._handle.result(timeout=timeout))

    def signal(self, name: str, input: Any = None, *, request_id: str | None = None) -> None:
        """Send signal `name` to the run."""
        self._runner.run(self._handle.signal(name, input, request_id=request_id))

    def cancel(self, *, reason: str = "") -> None:
        """Ask the run to cancel."""
        self._runner.run(self._handle.cancel(reason=reason))

    def terminate(self, *, reason: str = "") -> None:
        """Close the run at once."""
        self._runner.run(self._handle.terminate(reason=reason))

    def describe(self) -> flow_service_pb2.DescribeRunResponse:
        """The run's status, pending blocks and block summaries."""
        return self._runner.run(self._handle.describe())


class SyncClient:
    """A blocking Client for scripts. Create with `connect`; `close` when done."""

    def __init__(self, client: Client, runner: _LoopThread) -> None:
        self._client = client
        self._runner = runner

    @classmethod
    def connect(
        cls,
        address: str = DEFAULT_ADDRESS,
        *,
        namespace: str = "default",
        api_key: str | None = None,
        tls: bool | grpc.ChannelCredentials = False,
        converter: PayloadConverter | None = None,
        timeout_s: float = 30.0,
    ) -> SyncClient:
        """Connect as Client.connect does, on a private event loop thread."""
        runner = _LoopThread()
        try:
            client = runner.run(
                Client.connect(
                    address,
                    namespace=namespace,
                    api_key=api_key,
                    tls=tls,
                    converter=converter,
                    timeout_s=timeout_s,
                )
            )
        except BaseException:
            runner.stop()
            raise
        return cls(client, runner)

    @property
    def client(self) -> Client:
        """The async client underneath (usable only on this facade's loop)."""
        return self._client

    def register_flow(
        self, blueprint: blueprint_pb2.Blueprint | Mapping[str, Any]
    ) -> flow_pb2.FlowDefinition:
        """Register a blueprint; see Client.register_flow."""
        return self._runner.run(self._client.register_flow(blueprint))

    def start_run(
        self,
        flow: str,
        input: Any = None,
        *,
        run_id: str | None = None,
        version: int = 0,
        task_queue: str | None = None,
        request_id: str | None = None,
        run_timeout: timedelta | None = None,
        reuse_policy: str | int | None = None,
        memo: Mapping[str, Any] | None = None,
    ) -> SyncRunHandle:
        """Start a run; see Client.start_run."""
        handle = self._runner.run(
            self._client.start_run(
                flow,
                input,
                run_id=run_id,
                version=version,
                task_queue=task_queue,
                request_id=request_id,
                run_timeout=run_timeout,
                reuse_policy=reuse_policy,
                memo=memo,
            )
        )
        return SyncRunHandle(handle, self._runner)

    def execute_run(
        self,
        flow: str,
        input: Any = None,
        *,
        timeout: float | None = None,
        **options: Unpack[StartOptions],
    ) -> Any:
        """Start a run and return its result; see Client.execute_run."""
        return self._runner.run(self._client.execute_run(flow, input, timeout=timeout, **options))

    def publish_event(
        self,
        event_type: str,
        payload: Any = None,
        *,
        correlation_key: str = "",
        event_id: str | None = None,
    ) -> str:
        """Publish an event to the namespace (see `Client.publish_event`); returns its id."""
        return self._runner.run(
            self._client.publish_event(
                event_type, payload, correlation_key=correlation_key, event_id=event_id
            )
        )

    def get_run(self, run_id: str, *, execution_id: str = "") -> SyncRunHandle:
        """A handle to an existing run."""
        return SyncRunHandle(self._client.get_run(run_id, execution_id=execution_id), self._runner)

    def close(self) -> None:
        """Close the channel and stop the loop thread."""
        try:
            self._runner.run(self._client.close())
        finally:
            self._runner.stop()

    def __enter__(self) -> SyncClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
