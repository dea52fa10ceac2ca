"""One grpc.aio server per role, with health checking and reflection, shut down gracefully."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, TypeAlias, cast

import grpc
from google.protobuf.message import DecodeError
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from tideflow_server.config import RoleEndpoint
from tideflow_server.rpc import reflection
from tideflow_server.rpc.errors import InvalidArgument, abort

_OPTIONS = [
    ("grpc.max_receive_message_length", 8 * 1024 * 1024),
    ("grpc.max_send_message_length", 8 * 1024 * 1024),
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.so_reuseport", 0),
]


@dataclass(frozen=True)
class _Undecodable:
    """What a request that does not parse as its message type becomes, so that the call can
    end with INVALID_ARGUMENT: gRPC itself answers a failed deserializer with UNKNOWN."""

    message_type: str
    reason: str

    def error(self) -> InvalidArgument:
        return InvalidArgument(
            f"the request is not a valid {self.message_type} message ({self.reason})",
            reason="UNDECODABLE_REQUEST",
        )


def _decoding(deserializer: Callable[[bytes], object], method: str) -> Callable[[bytes], object]:
    # Generated handlers pass the request class's FromString; its class names the message.
    message = getattr(getattr(deserializer, "__self__", None), "DESCRIPTOR", None)
    message_type = message.full_name if message is not None else f"request of {method}"

    def decode(data: bytes) -> object:
        try:
            return deserializer(data)
        except DecodeError as e:
            return _Undecodable(message_type, str(e) or "DecodeError")

    return decode


async def _checked_requests(
    requests: AsyncIterator[object], context: grpc.aio.ServicerContext[Any, Any]
) -> AsyncIterator[object]:
    async for request in requests:
        if isinstance(request, _Undecodable):
            await abort(context, request.error())
        yield request


class _CheckedContext:
    """A servicer context whose `read` ends the call on an undecodable request, for stream
    handlers that read through the context rather than the request iterator."""

    def __init__(self, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        self._context = context

    async def read(self) -> object:
        request = await self._context.read()
        if isinstance(request, _Undecodable):
            await abort(self._context, request.error())
        return request

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)


async def _check_request(
    request: object, context: grpc.aio.ServicerContext[Any, Any]
) -> tuple[object, Any]:
    if isinstance(request, _Undecodable):
        await abort(context, request.error())
    return request, context


async def _check_requests(
    requests: AsyncIterator[object], context: grpc.aio.ServicerContext[Any, Any]
) -> tuple[object, Any]:
    return _checked_requests(requests, context), _CheckedContext(context)


_Check = Callable[[Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[tuple[object, Any]]]


def _checked(behavior: Callable[..., Any], check: _Check) -> Callable[..., Any]:
    """`behavior`, called once `check` has seen its request (or wrapped its request stream).
    gRPC tells a response stream from a single response by the function's kind, so the
    wrapper is of the kind of what it wraps."""
    if inspect.isasyncgenfunction(behavior):

        async def responses(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            request, checked_context = await check(request, context)
            async for response in behavior(request, checked_context):
                yield response

        return responses

    async def response(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        request, checked_context = await check(request, context)
        result = behavior(request, checked_context)
        return await result if inspect.isawaitable(result) else result

    return response


_BEHAVIORS: dict[tuple[bool, bool], str] = {
    (False, False): "unary_unary",
    (False, True): "unary_stream",
    (True, False): "stream_unary",
    (True, True): "stream_stream",
}
"""The RpcMethodHandler attribute holding the behavior, by (request_streaming,
response_streaming)."""


# Both are generic in the type stubs only.
_Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"
if TYPE_CHECKING:
    _Interceptor = grpc.aio.ServerInterceptor[Any, Any]
else:
    _Interceptor = grpc.aio.ServerInterceptor


class _DecodeRequests(_Interceptor):
    """Every method of every service: a request that does not parse is INVALID_ARGUMENT with a
    BadRequest naming its message type, whichever RPC it was sent to."""

    def __init__(self) -> None:
        self._wrapped: dict[str, tuple[_Handler, _Handler]] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[_Handler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> _Handler:
        handler = await continuation(handler_call_details)
        if handler is None or handler.request_deserializer is None:
            return handler
        method = handler_call_details.method
        # Wrapped once per method, not per call: the services' handlers never change.
        known = self._wrapped.get(method)
        if known is not None and known[0] is handler:
            return known[1]
        kind = _BEHAVIORS[(handler.request_streaming, handler.response_streaming)]
        check = _check_requests if handler.request_streaming else _check_request
        # RpcMethodHandler is a namedtuple in grpc's own implementation.
        wrapped = cast(Any, handler)._replace(
            request_deserializer=_decoding(handler.request_deserializer, method),
            **{kind: _checked(getattr(handler, kind), check)},
        )
        self._wrapped[method] = (handler, wrapped)
        return cast(_Handler, wrapped)


class _HealthServicer(Protocol):
    async def set(self, service: str, status: Any) -> None: ...


def _aio_health_servicer() -> _HealthServicer:
    # grpcio-health-checking ships an asyncio servicer its type stubs do not describe.
    return cast(_HealthServicer, health.aio.HealthServicer())  # type: ignore[attr-defined]


@dataclass
class Service:
    """A servicer and what it takes to serve it."""

    name: str
    """Full service name, e.g. `tideflow.api.v1.FlowService`, for health and reflection."""
    register: Callable[[grpc.aio.Server], None]
    on_stop: Callable[[], None] | None = None
    """Called when the server starts stopping, before in-flight calls get their grace period
    (a servicer's StreamServer.close, so that long-lived streams end)."""


@dataclass
class RoleServer:
    role: str
    server: grpc.aio.Server
    address: str
    health: _HealthServicer
    services: list[str] = field(default_factory=list)
    on_stop: list[Callable[[], None]] = field(default_factory=list)

    async def set_serving(self, serving: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ["", *self.services]:
            await self.health.set(name, status)

    async def stop(self, grace_s: float) -> None:
        """Stop accepting calls, let in-flight ones finish within `grace_s`, then cancel."""
        await self.set_serving(False)
        for callback in self.on_stop:
            callback()
        await self.server.stop(grace_s)


async def start_role_server(
    role: str, endpoint: RoleEndpoint, services: Sequence[Service]
) -> RoleServer:
    server = grpc.aio.server(options=_OPTIONS, interceptors=[_DecodeRequests()])
    health_servicer = _aio_health_servicer()
    health_pb2_grpc.add_HealthServicer_to_server(cast(Any, health_servicer), server)
    for service in services:
        service.register(server)
    names = [s.name for s in services]
    reflection.enable(server, [*names, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name])
    port = server.add_insecure_port(f"{endpoint.host}:{endpoint.port}")
    if port == 0:
        raise OSError(f"{role}: cannot listen on {endpoint.host}:{endpoint.port}")
    await server.start()
    address = endpoint.advertise or f"{endpoint.host}:{port}"
    role_server = RoleServer(
        role,
        server,
        address,
        health_servicer,
        names,
        [s.on_stop for s in services if s.on_stop is not None],
    )
    await role_server.set_serving(True)
    return role_server


async def wait_for_termination(servers: Sequence[RoleServer]) -> None:
    await asyncio.gather(*(s.server.wait_for_termination() for s in servers))
