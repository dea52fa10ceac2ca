"""The async client: namespaces, flows and runs over the public FlowService API."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import uuid
from collections.abc import AsyncIterator, Iterable, Mapping
from datetime import datetime, timedelta
from types import TracebackType
from typing import Any, TypedDict, TypeVar, Unpack

import grpc
from google.protobuf import duration_pb2, field_mask_pb2, json_format

from tideflow import errors
from tideflow._converter import DefaultConverter, PayloadConverter, to_payloads
from tideflow.api.v1 import (
    blueprint_pb2,
    common_pb2,
    flow_pb2,
    flow_service_pb2,
    flow_service_pb2_grpc,
    namespace_pb2,
    operator_service_pb2,
    operator_service_pb2_grpc,
    run_pb2,
    task_queue_pb2,
)
from tideflow.client._handle import RunHandle

logger = logging.getLogger("tideflow.client")

T = TypeVar("T")

DEFAULT_ADDRESS = "127.0.0.1:7233"


class StartOptions(TypedDict, total=False):
    """What `Client.start_run` takes besides the flow and its input, for `execute_run`."""

    run_id: str | None
    version: int
    task_queue: str | None
    request_id: str | None
    run_timeout: timedelta | None
    reuse_policy: str | int | None
    memo: Mapping[str, Any] | None


# How long one start-and-wait call may be held open before the wait goes on as a long poll.
_EXECUTE_WAIT_S = 60.0
# A pause before repeating a start-and-wait that failed because a server was away.
_RETRY_PAUSE_S = 0.2


def _stub(channel: grpc.aio.Channel) -> flow_service_pb2_grpc.FlowServiceAsyncStub:
    # Given an aio channel the generated stub is the async variant, which exists only in the
    # type stubs.
    return flow_service_pb2_grpc.FlowServiceStub(channel)


def _enum_value(enum: Any, prefix: str, value: str | int) -> Any:
    # Any: the generated enums type their values as a per-enum NewType of int.
    if isinstance(value, int):
        return value
    name = value.upper()
    return int(enum.Value(name if name.startswith(prefix) else prefix + name))


class Client:
    """A connection to a Tideflow frontend, bound to one namespace. Create with `connect`."""

    def __init__(
        self,
        channel: grpc.aio.Channel,
        *,
        namespace: str,
        api_key: str | None = None,
        converter: PayloadConverter | None = None,
        timeout_s: float = 30.0,
    ) -> None:
        self._channel = channel
        self._stub = _stub(channel)
        # Given an aio channel the generated stub is the async variant.
        self._operator: operator_service_pb2_grpc.OperatorServiceAsyncStub = (
            operator_service_pb2_grpc.OperatorServiceStub(channel)
        )
        self.namespace = namespace
        self.converter: PayloadConverter = converter or DefaultConverter()
        self.timeout_s = timeout_s
        self.identity = f"{socket.gethostname()}:{os.getpid()}"
        self._metadata: tuple[tuple[str, str], ...] = (
            (("authorization", f"Bearer {api_key}"),) if api_key else ()
        )

    @classmethod
    async def connect(
        cls,
        address: str = DEFAULT_ADDRESS,
        *,
        namespace: str = "default",
        api_key: str | None = None,
        tls: bool | grpc.ChannelCredentials = False,
        converter: PayloadConverter | None = None,
        timeout_s: float = 30.0,
    ) -> Client:
        """Open a channel to `address` and wait (up to `timeout_s`) until it is ready.

        `timeout_s` is also the deadline of each call that is not a long poll."""
        if tls is False:
            channel = grpc.aio.insecure_channel(address)
        else:
            credentials = grpc.ssl_channel_credentials() if tls is True else tls
            channel = grpc.aio.secure_channel(address, credentials)
        try:
            await asyncio.wait_for(channel.channel_ready(), timeout_s)
        except TimeoutError as e:
            await channel.close(None)
            raise errors.UnavailableError(
                f"could not connect to {address} within {timeout_s}s",
                code=grpc.StatusCode.UNAVAILABLE,
            ) from e
        logger.debug("connected to %s (namespace %s)", address, namespace)
        return cls(
            channel,
            namespace=namespace,
            api_key=api_key,
            converter=converter,
            timeout_s=timeout_s,
        )

    async def close(self) -> None:
        """Close the channel; calls in flight are cancelled."""
        await self._channel.close(None)

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def _call(
        self,
        method: grpc.aio.UnaryUnaryMultiCallable[Any, T],
        request: Any,
        *,
        timeout_s: float | None = None,
    ) -> T:
        try:
            return await method(
                request,
                timeout=self.timeout_s if timeout_s is None else timeout_s,
                metadata=self._metadata,
            )
        except grpc.aio.AioRpcError as e:
            raise errors.from_grpc(e) from e

    # Namespaces.

    async def register_namespace(
        self, name: str, *, description: str = "", retention_days: float | None = None
    ) -> namespace_pb2.NamespaceInfo:
        """Create namespace `name`; AlreadyExistsError if it exists."""
        request = flow_service_pb2.RegisterNamespaceRequest(namespace=name, description=description)
        if retention_days is not None:
            request.config.retention.FromTimedelta(timedelta(days=retention_days))
        reply = await self._call(self._stub.RegisterNamespace, request)
        return reply.info

    async def update_namespace(
        self,
        name: str | None = None,
        *,
        retention: timedelta | None = None,
        description: str | None = None,
    ) -> flow_service_pb2.DescribeNamespaceResponse:
        """Change `name`'s (default: this client's namespace) retention (it applies to runs
        that close from now on) and description; only what is given changes. Returns the
        namespace as it now stands."""
        request = flow_service_pb2.UpdateNamespaceRequest(namespace=name or self.namespace)
        if retention is not None:
            request.config.retention.FromTimedelta(retention)
            request.update_mask.paths.append("config.retention")
        if description is not None:
            request.info.description = description
            request.update_mask.paths.append("info.description")
        reply = await self._call(self._stub.UpdateNamespace, request)
        return flow_service_pb2.DescribeNamespaceResponse(info=reply.info, config=reply.config)

    async def describe_namespace(
        self, name: str | None = None
    ) -> flow_service_pb2.DescribeNamespaceResponse:
        """Info and config of `name` (default: this client's namespace)."""
        request = flow_service_pb2.DescribeNamespaceRequest(namespace=name or self.namespace)
        return await self._call(self._stub.DescribeNamespace, request)

    async def list_namespaces(
        self, *, page_size: int = 100
    ) -> AsyncIterator[flow_service_pb2.DescribeNamespaceResponse]:
        """Every namespace, fetched a page at a time."""
        token = b""
        while True:
            request = flow_service_pb2.ListNamespacesRequest(
                page_size=page_size, next_page_token=token
            )
            reply = await self._call(self._stub.ListNamespaces, request)
            for namespace in reply.namespaces:
                yield namespace
            token = reply.next_page_token
            if not token:
                return

    # Flows.

    async def register_flow(
        self, blueprint: blueprint_pb2.Blueprint | Mapping[str, Any]
    ) -> flow_pb2.FlowDefinition:
        """Register a blueprint (a message, or a dict in its JSON form); the stored definition.

        Registering the same definition again is a no-op; InvalidArgumentError lists every
        problem in `violations`."""
        if not isinstance(blueprint, blueprint_pb2.Blueprint):
            blueprint = json_format.ParseDict(dict(blueprint), blueprint_pb2.Blueprint())
        request = flow_service_pb2.RegisterFlowRequest(
            namespace=self.namespace, blueprint=blueprint, identity=self.identity
        )
        reply = await self._call(self._stub.RegisterFlow, request)
        return reply.flow

    async def describe_flow(self, name: str, *, version: int = 0) -> flow_pb2.FlowDefinition:
        """One version of a flow; 0 = the latest."""
        request = flow_service_pb2.DescribeFlowRequest(
            namespace=self.namespace, name=name, version=version
        )
        reply = await self._call(self._stub.DescribeFlow, request)
        return reply.flow

    async def list_flows(
        self, *, name: str | None = None, page_size: int = 100
    ) -> AsyncIterator[flow_pb2.FlowDefinition]:
        """Registered flow definitions (only versions of `name` when given)."""
        token = b""
        while True:
            request = flow_service_pb2.ListFlowsRequest(
                namespace=self.namespace,
                page_size=page_size,
                next_page_token=token,
                name=name or "",
            )
            reply = await self._call(self._stub.ListFlows, request)
            for flow in reply.flows:
                yield flow
            token = reply.next_page_token
            if not token:
                return

    # Runs.

    def _start_fields(
        self, flow: str, input: Any, **options: Unpack[StartOptions]
    ) -> dict[str, Any]:
        fields: dict[str, Any] = {
            "namespace": self.namespace,
            "run_id": options.get("run_id") or str(uuid.uuid4()),
            "flow": common_pb2.FlowRef(name=flow, version=options.get("version", 0)),
            "input": to_payloads(self.converter, input),
            "identity": self.identity,
            # Generated once per call, so the transport's retries of this call are idempotent.
            "request_id": options.get("request_id") or str(uuid.uuid4()),
        }
        task_queue = options.get("task_queue")
        run_timeout = options.get("run_timeout")
        reuse_policy = options.get("reuse_policy")
        memo = options.get("memo")
        if task_queue:
            fields["task_queue"] = common_pb2.TaskQueue(name=task_queue)
        if run_timeout is not None:
            fields["run_timeout"] = duration_pb2.Duration()
            fields["run_timeout"].FromTimedelta(run_timeout)
        if reuse_policy is not None:
            fields["run_id_reuse_policy"] = _enum_value(
                common_pb2.RunIdReusePolicy, "RUN_ID_REUSE_POLICY_", reuse_policy
            )
        if memo:
            fields["memo"] = common_pb2.Memo(
                fields={k: self.converter.to_payload(v) for k, v in memo.items()}
            )
        return fields

    async def start_run(
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
    ) -> RunHandle:
        """Start a run of `flow` (version 0 = latest); a handle to it.

        `run_id` defaults to a new uuid; a retry with the same `request_id` returns the same
        execution. `task_queue` replaces the blueprint's for the whole run (blocks that name
        their own queue keep it). `reuse_policy` is a RunIdReusePolicy, e.g.
        "REJECT_DUPLICATE"."""
        request = flow_service_pb2.StartRunRequest(
            **self._start_fields(
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
        reply = await self._call(self._stub.StartRun, request)
        return RunHandle(self, request.run_id, reply.execution_id, started=reply.started)

    # The timeout parameter is the public contract, as in RunHandle.result.
    async def execute_run(
        self,
        flow: str,
        input: Any = None,
        *,
        timeout: float | None = None,  # noqa: ASYNC109
        **options: Unpack[StartOptions],
    ) -> Any:
        """Start a run of `flow` and return its decoded result, as `start_run` (which takes
        the same `options`) then `RunHandle.result`, in one call when the run closes within
        the server's long poll.

        Raises RunFailedError if the run failed, was canceled, terminated or timed out, and
        TimeoutError if it is still open after `timeout` seconds."""
        request = flow_service_pb2.StartRunRequest(
            **self._start_fields(flow, input, **options), wait_for_close=True
        )
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            wait_s = _EXECUTE_WAIT_S if deadline is None else deadline - loop.time()
            if wait_s <= 0:
                raise TimeoutError(f"run {request.run_id} did not close in time")
            try:
                # The server answers before this deadline, with or without the close.
                reply = await self._call(
                    self._stub.StartRun, request, timeout_s=min(wait_s, _EXECUTE_WAIT_S)
                )
                break
            except (errors.DeadlineExceededError, errors.UnavailableError):
                # Same request_id: a repeat waits for the execution the first one started.
                await asyncio.sleep(_RETRY_PAUSE_S)
        handle = RunHandle(self, request.run_id, reply.execution_id, started=reply.started)
        if reply.HasField("close_event"):
            return handle.outcome(reply.close_event)
        return await handle.result(
            timeout=None if deadline is None else max(0.0, deadline - loop.time())
        )

    async def signal_with_start(
        self,
        flow: str,
        input: Any = None,
        *,
        signal: str,
        signal_input: Any = None,
        run_id: str,
        version: int = 0,
        task_queue: str | None = None,
        request_id: str | None = None,
        run_timeout: timedelta | None = None,
        reuse_policy: str | int | None = None,
        memo: Mapping[str, Any] | None = None,
    ) -> RunHandle:
        """Signal the open execution of `run_id`, starting it first if there is none."""
        request = flow_service_pb2.SignalWithStartRunRequest(
            **self._start_fields(
                flow,
                input,
                run_id=run_id,
                version=version,
                task_queue=task_queue,
                request_id=request_id,
                run_timeout=run_timeout,
                reuse_policy=reuse_policy,
                memo=memo,
            ),
            signal_name=signal,
            signal_input=to_payloads(self.converter, signal_input),
        )
        reply = await self._call(self._stub.SignalWithStartRun, request)
        return RunHandle(self, run_id, reply.execution_id, started=reply.started)

    async def publish_event(
        self,
        event_type: str,
        payload: Any = None,
        *,
        correlation_key: str = "",
        event_id: str | None = None,
    ) -> str:
        """Publish an event to the namespace: the `event` blocks waiting for its type and
        key take it, now or later within the server's retention. Returns its id (`event_id`,
        or one the server assigned); publishing an id again delivers it again, and each run
        takes it once, so retry a failed publish with the id it was given."""
        request = flow_service_pb2.PublishEventRequest(
            namespace=self.namespace,
            event_type=event_type,
            correlation_key=correlation_key,
            payload=to_payloads(self.converter, payload),
            event_id=event_id or "",
            identity=self.identity,
        )
        reply = await self._call(self._stub.PublishEvent, request)
        return reply.event_id

    async def describe_task_queue(self, name: str) -> flow_service_pb2.DescribeTaskQueueResponse:
        """A task queue's pollers, its backlog and each partition's state (owner, rates,
        sticky hits and fallbacks, concurrency in use), and the config in force."""
        request = flow_service_pb2.DescribeTaskQueueRequest(
            namespace=self.namespace, task_queue=common_pb2.TaskQueue(name=name)
        )
        return await self._call(self._stub.DescribeTaskQueue, request)

    # Task queues.

    async def update_task_queue_config(
        self,
        task_queue: str,
        *,
        rate_per_second: float | None = None,
        burst: int | None = None,
        partitions: int | None = None,
        max_concurrency: int | None = None,
        block_concurrency: Mapping[str, int] | None = None,
        fairness_weights: Mapping[str, float] | None = None,
        in_flight_first: bool | None = None,
        sticky_schedule_to_start: timedelta | None = None,
    ) -> task_queue_pb2.TaskQueueConfig:
        """Set a task queue's limits and routing; only the arguments given change (0 = none,
        or the default). Returns the whole config now in force; InvalidArgumentError names
        each bad field, and then nothing changed."""
        config = task_queue_pb2.TaskQueueConfig()
        mask: list[str] = []
        scalars: dict[str, float | int | bool | None] = {
            "rate_per_second": rate_per_second,
            "burst": burst,
            "partitions": partitions,
            "max_concurrency": max_concurrency,
            "in_flight_first": in_flight_first,
        }
        for field, given in scalars.items():
            if given is not None:
                setattr(config, field, given)
                mask.append(field)
        if block_concurrency is not None:
            config.block_concurrency.update(block_concurrency)
            mask.append("block_concurrency")
        if fairness_weights is not None:
            config.fairness_weights.update(fairness_weights)
            mask.append("fairness_weights")
        if sticky_schedule_to_start is not None:
            config.sticky_schedule_to_start.FromTimedelta(sticky_schedule_to_start)
            mask.append("sticky_schedule_to_start")
        if not mask:
            raise ValueError("give at least one setting to change")
        request = flow_service_pb2.UpdateTaskQueueConfigRequest(
            namespace=self.namespace,
            task_queue=common_pb2.TaskQueue(name=task_queue),
            config=config,
            update_mask=field_mask_pb2.FieldMask(paths=mask),
            identity=self.identity,
        )
        reply = await self._call(self._stub.UpdateTaskQueueConfig, request)
        return reply.config

    # API keys (an admin key of the namespace, or of the cluster, is needed).

    async def create_api_key(
        self,
        *,
        role: str,
        namespace: str | None = None,
        task_queues: Iterable[str] = (),
        description: str = "",
    ) -> tuple[operator_service_pb2.ApiKeyInfo, str]:
        """A new key for `namespace` (default: the client's; "*" for a cluster key) with
        `role` (admin, writer, reader or worker); returns its info and the key, which the
        server keeps only as a hash: store it now."""
        request = operator_service_pb2.CreateApiKeyRequest(
            namespace=self.namespace if namespace is None else namespace,
            role=_enum_value(operator_service_pb2.ApiKeyRole, "API_KEY_ROLE_", role),
            task_queues=list(task_queues),
            description=description,
        )
        reply = await self._call(self._operator.CreateApiKey, request)
        return reply.info, reply.key

    async def list_api_keys(
        self, *, namespace: str | None = None
    ) -> list[operator_service_pb2.ApiKeyInfo]:
        """The keys of `namespace` (default: the client's; "*" for the cluster keys)."""
        request = operator_service_pb2.ListApiKeysRequest(
            namespace=self.namespace if namespace is None else namespace
        )
        return list((await self._call(self._operator.ListApiKeys, request)).keys)

    async def revoke_api_key(
        self, key_id: str, *, namespace: str | None = None
    ) -> operator_service_pb2.ApiKeyInfo:
        """Revoke the key `key_id` of `namespace` (default: the client's)."""
        request = operator_service_pb2.RevokeApiKeyRequest(
            namespace=self.namespace if namespace is None else namespace, key_id=key_id
        )
        return (await self._call(self._operator.RevokeApiKey, request)).info

    def get_run(self, run_id: str, *, execution_id: str = "") -> RunHandle:
        """A handle to an existing run; empty `execution_id` = its latest execution."""
        return RunHandle(self, run_id, execution_id)

    async def list_runs(
        self,
        *,
        statuses: Iterable[str | int] = (),
        flow: str | None = None,
        run_id: str | None = None,
        started_after: datetime | None = None,
        started_before: datetime | None = None,
        page_size: int = 100,
    ) -> AsyncIterator[run_pb2.RunInfo]:
        """Runs matching every given filter, newest start first. Statuses are RunStatus values
        or names ("COMPLETED")."""
        request = flow_service_pb2.ListRunsRequest(
            namespace=self.namespace,
            page_size=page_size,
            statuses=[_enum_value(common_pb2.RunStatus, "RUN_STATUS_", s) for s in statuses],
            flow_name=flow or "",
            run_id=run_id or "",
        )
        if started_after is not None:
            request.start_time_min.FromDatetime(started_after)
        if started_before is not None:
            request.start_time_max.FromDatetime(started_before)
        while True:
            reply = await self._call(self._stub.ListRuns, request)
            for info in reply.runs:
                yield info
            if not reply.next_page_token:
                return
            request.next_page_token = reply.next_page_token
