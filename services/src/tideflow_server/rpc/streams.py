"""Request and answer over one long-lived bidirectional stream, for the internal calls made
once or more per run (history adding block tasks to matching, the frontend forwarding
completions to history).

In grpc.aio a unary call costs the two processes about twice the CPU of a message on a
stream that is already open (call setup, metadata, status and the completion-queue round trips
of each), and on the bench's hot path that overhead, not Tideflow's own work, is most of the
CPU. So each such call goes as a message carrying an id, on one stream per caller and peer
host; the peer handles every message concurrently, as it would a unary call, and answers it
once, by id, in whatever order the answers are ready.

Failure keeps the unary call's meaning. When a stream ends or breaks, every request still
waiting fails with UNAVAILABLE: its outcome is unknown, as it is for a unary call cut off,
and callers retry it the way they retry that call. The next request opens a new stream. A
request with no answer by its timeout fails with DEADLINE_EXCEEDED (the peer may still carry
it out, as a peer may after a unary call's deadline). A peer that does not serve the stream (an
older version) makes `StreamClient.exchange` raise `NotServed`, and the caller uses the unary
call from then on. A server that is stopping stops reading its streams, answers what it has
read and ends them, so a stream never holds a shutdown up for the grace period.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar, cast

import grpc

from tideflow_server.rpc.errors import DeadlineExceeded, Unavailable

W = TypeVar("W")
"""What goes on the stream: a request with its id."""
R = TypeVar("R")
"""What comes back: an answer with its id."""

OpenStream = Callable[[], "grpc.aio.StreamStreamCall[W, R]"]


# What ServicerContext.read returns once the caller half-closes; the type stubs omit it.
_EOF: object = grpc.aio.EOF  # type: ignore[attr-defined]


class NotServed(Exception):
    """The peer does not serve this stream: use the unary call."""


def _expire(answer: asyncio.Future[R], timeout_s: float) -> None:
    if not answer.done():
        answer.set_exception(DeadlineExceeded(f"no answer on the stream within {timeout_s:g} s"))


class _Stream(Generic[W, R]):
    def __init__(self, call: grpc.aio.StreamStreamCall[W, R]) -> None:
        self.call = call
        self.writing = asyncio.Lock()  # one write at a time on a call
        self.waiting: dict[int, asyncio.Future[R]] = {}
        self.reader: asyncio.Task[None] | None = None


class StreamClient(Generic[W, R]):
    """The caller's end: one stream to one peer host, opened on first use and after a break."""

    def __init__(self, open_stream: OpenStream[W, R], answer_id: Callable[[R], int]) -> None:
        self._open_stream = open_stream
        self._answer_id = answer_id
        self._stream: _Stream[W, R] | None = None
        self._ids = itertools.count(1)
        self._not_served = False

    async def exchange(self, message: Callable[[int], W], *, timeout_s: float) -> R:
        """Send `message(id)` and wait for the answer with that id.

        The caller writes its own message (a writer task would cost a task switch per
        message). So a caller cancelled in the middle of its write ends the stream, as gRPC
        cancels a call whose write is cancelled; the requests waiting then fail with
        UNAVAILABLE and are retried like any cut-off call."""
        if self._not_served:
            raise NotServed
        stream = self._stream or self._open()
        request_id = next(self._ids)
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[R] = loop.create_future()
        stream.waiting[request_id] = answer
        # A timer rather than asyncio.wait_for, which wraps every wait in a future of its own.
        timer = loop.call_later(timeout_s, _expire, answer, timeout_s)
        try:
            try:
                async with stream.writing:
                    await stream.call.write(message(request_id))
            except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
                pass  # the stream is gone: its reader fails `answer` with the reason
            return await answer
        finally:
            timer.cancel()
            stream.waiting.pop(request_id, None)

    def _open(self) -> _Stream[W, R]:
        stream: _Stream[W, R] = _Stream(self._open_stream())
        stream.reader = asyncio.create_task(self._read(stream))
        self._stream = stream
        return stream

    async def _read(self, stream: _Stream[W, R]) -> None:
        call = stream.call
        error: Exception = Unavailable("the peer ended the stream", reason="STREAM_ENDED")
        try:
            async for answer in call:
                waiting = stream.waiting.pop(self._answer_id(answer), None)
                if waiting is not None and not waiting.done():
                    waiting.set_result(answer)
        except grpc.aio.AioRpcError as e:
            if e.code() == grpc.StatusCode.UNIMPLEMENTED:
                self._not_served = True
                error = NotServed()
            else:
                error = Unavailable(
                    f"the stream broke: {e.code().name} {e.details() or ''}".rstrip(),
                    reason="STREAM_BROKEN",
                )
        except asyncio.CancelledError:
            error = Unavailable("the stream was closed", reason="STREAM_BROKEN")
            raise
        finally:
            if self._stream is stream:
                self._stream = None
            call.cancel()
            for waiting in stream.waiting.values():
                if not waiting.done():
                    waiting.set_exception(error)
            stream.waiting.clear()


class StreamServer:
    """The peer's end, for one servicer: answers each stream's messages concurrently, and on
    `close` (the server is stopping) stops reading, answers what it read and ends them."""

    def __init__(self) -> None:
        self._readers: set[asyncio.Task[None]] = set()
        self._closed = False

    async def serve(
        self,
        context: grpc.aio.ServicerContext[W, R],
        answer: Callable[[W], Awaitable[R]],
    ) -> None:
        """Read the stream's messages until it ends (or `close`), write `answer(message)` for
        each as it is ready, then return once every answer is written. `answer` turns every
        error into an answer of its own."""
        if self._closed:
            return
        writing = asyncio.Lock()
        tasks: set[asyncio.Task[None]] = set()
        idle = asyncio.Event()
        idle.set()

        async def one(message: W) -> None:
            ready = await answer(message)
            async with writing:
                await context.write(ready)

        def finished(task: asyncio.Task[None]) -> None:
            tasks.discard(task)
            if not task.cancelled():
                task.exception()  # a write to a broken stream: the caller learns it there
            if not tasks:
                idle.set()

        async def read() -> None:
            while True:
                message: object = await context.read()
                if message is _EOF:
                    return
                task = asyncio.create_task(one(cast(W, message)))
                tasks.add(task)
                idle.clear()
                task.add_done_callback(finished)

        reader = asyncio.create_task(read())
        self._readers.add(reader)
        reader.add_done_callback(self._readers.discard)
        try:
            await asyncio.wait([reader])
            if reader.cancelled() or reader.exception() is None:
                await idle.wait()  # ended by the caller or by `close`: answer what was read
        finally:
            reader.cancel()
            for task in list(tasks):
                task.cancel()

    def close(self) -> None:
        self._closed = True
        for reader in list(self._readers):
            reader.cancel()
