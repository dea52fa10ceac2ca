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
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Generic, TypeVar

import grpc

from tideflow_server.rpc.errors import DeadlineExceeded, Unavailable

W = TypeVar("W")
"""What goes on the stream: a request with its id."""
R = TypeVar("R")
"""What comes back: an answer with its id."""

OpenStream = Callable[[AsyncIterator[W]], "grpc.aio.StreamStreamCall[W, R]"]


class NotServed(Exception):
    """The peer does not serve this stream: use the unary call."""


class _Stream(Generic[W, R]):
    def __init__(self, outbox: asyncio.Queue[W]) -> None:
        self.outbox = outbox
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
        """Send `message(id)` and wait for the answer with that id."""
        if self._not_served:
            raise NotServed
        stream = self._stream or self._open()
        request_id = next(self._ids)
        answer: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        stream.waiting[request_id] = answer
        stream.outbox.put_nowait(message(request_id))
        try:
            return await asyncio.wait_for(answer, timeout_s)
        except TimeoutError:
            raise DeadlineExceeded(f"no answer on the stream within {timeout_s:g} s") from None
        finally:
            stream.waiting.pop(request_id, None)

    def _open(self) -> _Stream[W, R]:
        stream: _Stream[W, R] = _Stream(asyncio.Queue())

        async def requests() -> AsyncIterator[W]:
            while True:
                yield await stream.outbox.get()

        call = self._open_stream(requests())
        stream.reader = asyncio.create_task(self._read(stream, call))
        self._stream = stream
        return stream

    async def _read(self, stream: _Stream[W, R], call: grpc.aio.StreamStreamCall[W, R]) -> None:
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

    def close(self) -> None:
        """End the stream; requests still waiting fail with UNAVAILABLE."""
        stream, self._stream = self._stream, None
        if stream is not None and stream.reader is not None:
            stream.reader.cancel()


class StreamServer:
    """The peer's end, for one servicer: answers each stream's messages concurrently, and on
    `close` (the server is stopping) stops reading, answers what it read and ends them."""

    def __init__(self) -> None:
        self._readers: set[asyncio.Task[None]] = set()
        self._closed = False

    async def serve(
        self, requests: AsyncIterator[W], answer: Callable[[W], Awaitable[R]]
    ) -> AsyncIterator[R]:
        """Yield `answer(message)` for each message of `requests`, as each is ready.
        `answer` turns every error into an answer of its own."""
        answers: asyncio.Queue[R | None] = asyncio.Queue()
        tasks: set[asyncio.Task[None]] = set()
        reading = True

        def finish(task: asyncio.Task[None]) -> None:
            tasks.discard(task)
            if not reading and not tasks:
                answers.put_nowait(None)

        async def one(message: W) -> None:
            answers.put_nowait(await answer(message))

        async def read() -> None:
            nonlocal reading
            try:
                async for message in requests:
                    task = asyncio.create_task(one(message))
                    tasks.add(task)
                    task.add_done_callback(finish)
            finally:
                reading = False
                if not tasks:
                    answers.put_nowait(None)

        if self._closed:
            return
        reader = asyncio.create_task(read())
        self._readers.add(reader)
        reader.add_done_callback(self._readers.discard)
        try:
            while (ready := await answers.get()) is not None:
                yield ready
        finally:
            reader.cancel()
            for task in list(tasks):
                task.cancel()

    def close(self) -> None:
        self._closed = True
        for reader in list(self._readers):
            reader.cancel()
