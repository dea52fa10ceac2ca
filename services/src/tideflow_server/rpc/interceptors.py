"""One interceptor chain per server: every cross-cutting concern of a call, in one stated order.

A call passes, outermost first:

1. tracing (a span per call, its parent from the caller's `traceparent`),
2. metrics (count and latency by method and status),
3. error mapping (whatever a layer below or the handler raises becomes one gRPC status),
4. decoding (a request that does not parse is INVALID_ARGUMENT naming its message type),
5. authentication (who calls: an API key, or nobody in particular where auth is off),
6. audit (admin actions and terminations, with who, what, on which namespace, and how they
   ended, refusals included),
7. authorization (may that caller call this method on this namespace),
8. validation (every field of the request, before anything reads it),
9. rate limiting (the namespace's token bucket),

then the handler, which sees only requests that got through and raises typed errors
(`rpc.errors`) without building statuses. Each role's server takes the layers that concern
it (validation and rate limiting are the frontend's); their order is always this one.

Each method is wrapped once, when it is first called, into a plain chain of coroutines: a
call costs one coroutine per layer and no allocation beyond its `Call`. Streaming methods
(the internal completion and task streams) get `Layer.opening` once before the stream runs,
and error mapping around the whole stream; their messages carry their own statuses.
"""

from __future__ import annotations

import contextvars
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, TypeAlias, cast

import grpc
import structlog
from google.protobuf.message import DecodeError

from tideflow_server.persistence import errors as store
from tideflow_server.rpc.errors import (
    FieldViolation,
    Internal,
    InvalidArgument,
    NotFound,
    ServiceError,
    Unavailable,
    Unimplemented,
    abort,
)

log = structlog.get_logger(__name__)

Context: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"
_Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"
if TYPE_CHECKING:
    _Interceptor = grpc.aio.ServerInterceptor[Any, Any]
else:
    _Interceptor = grpc.aio.ServerInterceptor

_FOREIGN_PAGE_TOKEN: Final = (
    "is not a page token this server issued for this query; pass the token the previous "
    "page returned, unchanged"
)


def service_error(e: Exception) -> ServiceError:
    """The one place where anything raised below a handler, in any role, becomes a status."""
    if isinstance(e, ServiceError):
        return e
    if isinstance(e, store.NotFound):
        return NotFound(str(e))
    if isinstance(e, store.SizeLimitExceeded):
        return InvalidArgument(str(e), reason="SIZE_LIMIT_EXCEEDED")
    if isinstance(e, store.InvalidPageToken):
        # Every paged request carries its token as `next_page_token`.
        return InvalidArgument([FieldViolation("next_page_token", _FOREIGN_PAGE_TOKEN)])
    if isinstance(e, store.ShardOwnershipLost | store.Unavailable | store.ConditionFailed):
        # Another host owns the shard now, the database is away, or a row moved under the
        # call: all worth the caller's retry.
        return Unavailable(str(e))
    if isinstance(e, NotImplementedError):
        # What a generated servicer's default raises for a method this server lacks.
        return Unimplemented(str(e) or "method not implemented")
    log.exception("unexpected error", exc_info=e)
    return Internal(f"internal error: {type(e).__name__}")


@dataclass(frozen=True, slots=True)
class Method:
    """One RPC of a service, as the chain sees it."""

    path: str
    """`/package.Service/Method`, as gRPC names it."""
    service: str
    name: str
    streaming: bool
    """Requests or responses (or both) stream."""

    @classmethod
    def of(cls, path: str, streaming: bool) -> Method:
        service, _, name = path.lstrip("/").rpartition("/")
        return cls(path, service, name, streaming)


class Call:
    """One call passing through the chain; layers leave what they learn on it (the caller's
    principal), and `current_call()` finds it anywhere below the handler."""

    __slots__ = ("context", "method", "principal")

    def __init__(self, method: Method, context: Context) -> None:
        self.method = method
        self.context = context
        self.principal: object | None = None
        """Who calls, once authentication has run (an `auth.Principal`)."""

    def metadata(self, key: str) -> str | None:
        """The first value of invocation metadata `key` (lower case), if the caller sent it."""
        for k, value in self.context.invocation_metadata() or ():
            if k == key:
                return value if isinstance(value, str) else value.decode("latin-1")
        return None


_CURRENT: contextvars.ContextVar[Call | None] = contextvars.ContextVar(
    "tideflow_current_call", default=None
)


def current_call() -> Call | None:
    """The call being served by this task (grpc.aio runs each call in its own task)."""
    return _CURRENT.get()


Proceed = Callable[[Any, Call], Awaitable[Any]]


class Layer:
    """One concern around every call of the methods it `applies` to. The defaults pass
    everything through; a layer overrides what it needs."""

    def applies(self, method: Method) -> bool:
        return True

    async def unary(self, call: Call, request: Any, proceed: Proceed) -> Any:
        """Around one unary call: whatever it raises, the layers above see."""
        return await proceed(request, call)

    async def opening(self, call: Call) -> None:
        """Before a streaming call starts (its messages are not seen one by one)."""


class ErrorMapping(Layer):
    """Every exception below becomes the call's status, with `google.rpc` details."""

    async def unary(self, call: Call, request: Any, proceed: Proceed) -> Any:
        try:
            return await proceed(request, call)
        except grpc.aio.AbortError:
            raise  # already ended with its status
        except Exception as e:
            await abort(call.context, service_error(e))


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


class Decoding(Layer):
    """A unary request that did not parse ends the call here, before anything reads it.
    (A streamed request is checked as it is read: see `_checked_requests`.)"""

    async def unary(self, call: Call, request: Any, proceed: Proceed) -> Any:
        if isinstance(request, _Undecodable):
            raise request.error()
        return await proceed(request, call)


Policy = Callable[[Method, Any], Awaitable[None]]
"""A check of one request of one method; raises a ServiceError to refuse it."""


class _PolicyLayer(Layer):
    def __init__(self, check: Policy, *, applies: Callable[[Method], bool] | None = None) -> None:
        self._check = check
        self._applies = applies

    def applies(self, method: Method) -> bool:
        return not method.streaming and (self._applies is None or self._applies(method))

    async def unary(self, call: Call, request: Any, proceed: Proceed) -> Any:
        await self._check(call.method, request)
        return await proceed(request, call)


class Authentication(Layer):
    """Who calls, from the call's metadata, left on `Call.principal`; a layer that cannot
    tell refuses the call (UNAUTHENTICATED) before anything else reads it."""

    def __init__(
        self,
        authenticate: Callable[[Call], Awaitable[object]],
        *,
        applies: Callable[[Method], bool] | None = None,
    ) -> None:
        self._authenticate = authenticate
        self._applies = applies

    def applies(self, method: Method) -> bool:
        return self._applies is None or self._applies(method)

    async def opening(self, call: Call) -> None:
        call.principal = await self._authenticate(call)

    async def unary(self, call: Call, request: Any, proceed: Proceed) -> Any:
        call.principal = await self._authenticate(call)
        return await proceed(request, call)


class Audit(Layer):
    """Around the methods `record` cares for: it sees each call's request and how it ended
    (the response, or the error the layers below raised)."""

    def __init__(
        self,
        record: Callable[[Call, Any, Any, BaseException | None], None],
        *,
        applies: Callable[[Method], bool],
    ) -> None:
        self._record = record
        self._applies = applies

    def applies(self, method: Method) -> bool:
        return not method.streaming and self._applies(method)

    async def unary(self, call: Call, request: Any, proceed: Proceed) -> Any:
        try:
            response = await proceed(request, call)
        except BaseException as e:
            self._record(call, request, None, e)
            raise
        self._record(call, request, response, None)
        return response


class Authorization(Layer):
    """May the caller (`Call.principal`) call this method with this request; PERMISSION_DENIED
    otherwise."""

    def __init__(
        self,
        authorize: Callable[[Call, Any], None],
        *,
        applies: Callable[[Method], bool] | None = None,
    ) -> None:
        self._authorize = authorize
        self._applies = applies

    def applies(self, method: Method) -> bool:
        return not method.streaming and (self._applies is None or self._applies(method))

    async def unary(self, call: Call, request: Any, proceed: Proceed) -> Any:
        self._authorize(call, request)
        return await proceed(request, call)


class Validation(_PolicyLayer):
    """Every field of the request (the role's validators), before anything reads it."""


class RateLimiting(_PolicyLayer):
    """The namespace's token bucket (the role's limiter), once the request is known valid."""


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
    requests: AsyncIterator[object], context: Context
) -> AsyncIterator[object]:
    async for request in requests:
        if isinstance(request, _Undecodable):
            await abort(context, request.error())
        yield request


class _CheckedContext:
    """A servicer context whose `read` ends the call on an undecodable request, for stream
    handlers that read through the context rather than the request iterator."""

    def __init__(self, context: Context) -> None:
        self._context = context

    async def read(self) -> object:
        request = await self._context.read()
        if isinstance(request, _Undecodable):
            await abort(self._context, request.error())
        return request

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)


_BEHAVIORS: dict[tuple[bool, bool], str] = {
    (False, False): "unary_unary",
    (False, True): "unary_stream",
    (True, False): "stream_unary",
    (True, True): "stream_stream",
}
"""The RpcMethodHandler attribute holding the behavior, by (request_streaming,
response_streaming)."""


def _link(layer: Layer, inner: Proceed) -> Proceed:
    async def proceed(request: Any, call: Call) -> Any:
        return await layer.unary(call, request, inner)

    return proceed


class Chain(_Interceptor):
    """The layers, outermost first, around every method of every service of one server."""

    def __init__(self, layers: Sequence[Layer]) -> None:
        self.layers = list(layers)
        self._wrapped: dict[str, tuple[_Handler, _Handler]] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[_Handler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> _Handler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        path = handler_call_details.method
        # Wrapped once per method, not per call: the services' handlers never change.
        known = self._wrapped.get(path)
        if known is not None and known[0] is handler:
            return known[1]
        wrapped = self._wrap(handler, path)
        self._wrapped[path] = (handler, wrapped)
        return wrapped

    def _wrap(self, handler: _Handler, path: str) -> _Handler:
        streams_in, streams_out = handler.request_streaming, handler.response_streaming
        kind = _BEHAVIORS[(streams_in, streams_out)]
        behavior = getattr(handler, kind)
        method = Method.of(path, streams_in or streams_out)
        layers = [layer for layer in self.layers if layer.applies(method)]
        replaced: dict[str, Any] = {}
        if handler.request_deserializer is not None:
            replaced["request_deserializer"] = _decoding(handler.request_deserializer, path)
        if method.streaming:
            replaced[kind] = _streaming(method, behavior, layers, streams_in)
        else:
            replaced[kind] = _unary(method, behavior, layers)
        # RpcMethodHandler is a namedtuple in grpc's own implementation.
        return cast(_Handler, cast(Any, handler)._replace(**replaced))


def _unary(method: Method, behavior: Callable[..., Any], layers: Sequence[Layer]) -> Any:
    async def handle(request: Any, call: Call) -> Any:
        return await behavior(request, call.context)

    proceed: Proceed = handle
    for layer in reversed(layers):
        proceed = _link(layer, proceed)

    async def response(request: Any, context: Context) -> Any:
        call = Call(method, context)
        # grpc.aio serves each call in a task of its own, so this is the call's alone.
        _CURRENT.set(call)
        return await proceed(request, call)

    return response


def _streaming(
    method: Method, behavior: Callable[..., Any], layers: Sequence[Layer], streams_in: bool
) -> Any:
    async def opened(request: Any, context: Context) -> tuple[Any, Any]:
        call = Call(method, context)
        _CURRENT.set(call)
        try:
            for layer in layers:
                await layer.opening(call)
        except grpc.aio.AbortError:
            raise
        except Exception as e:
            await abort(context, service_error(e))
        if streams_in:
            return _checked_requests(request, context), _CheckedContext(context)
        if isinstance(request, _Undecodable):
            await abort(context, request.error())
        return request, context

    # gRPC tells a response stream from a single response by the function's kind, so the
    # wrapper is of the kind of what it wraps.
    if inspect.isasyncgenfunction(behavior):

        async def responses(request: Any, context: Context) -> Any:
            request, context = await opened(request, context)
            try:
                async for response in behavior(request, context):
                    yield response
            except grpc.aio.AbortError:
                raise
            except Exception as e:
                await abort(context, service_error(e))

        return responses

    async def response(request: Any, context: Context) -> Any:
        request, context = await opened(request, context)
        try:
            result = behavior(request, context)
            return await result if inspect.isawaitable(result) else result
        except grpc.aio.AbortError:
            raise
        except Exception as e:
            await abort(context, service_error(e))

    return response


def base_layers() -> list[Layer]:
    """What every role's server runs: error mapping, then decoding."""
    return [ErrorMapping(), Decoding()]
