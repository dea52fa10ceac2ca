"""Child processes of a peer run: started in their own session, always stopped.

Every process run_peer starts goes through `Children`, which stops them in reverse order
(a signal to the process group, then SIGKILL after a grace period) on success, error or
cancellation. Each child also asks the kernel for SIGKILL should the harness itself die
(PR_SET_PDEATHSIG), so not even a killed harness leaves a server behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import time
from collections.abc import Sequence
from pathlib import Path

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def log_tail(path: Path, chars: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return "(no log)"


class ChildFailed(RuntimeError):
    """A peer process exited early or did not become ready."""


class Child:
    def __init__(self, name: str, proc: asyncio.subprocess.Process, log: Path) -> None:
        self.name = name
        self.proc = proc
        self.log = log

    @property
    def pid(self) -> int:
        return self.proc.pid

    def check_alive(self) -> None:
        if self.proc.returncode is not None:
            raise ChildFailed(
                f"{self.name} exited with {self.proc.returncode}:\n{log_tail(self.log)}"
            )

    def signal_group(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, sig)

    async def stop(self, *, sig: int = signal.SIGTERM, grace_s: float = 10.0) -> None:
        if self.proc.returncode is None:
            self.signal_group(sig)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.proc.wait(), grace_s)
        # Whatever is left of the group (the leader, or anything it started) goes now.
        self.signal_group(signal.SIGKILL)
        if self.proc.returncode is None:
            await self.proc.wait()


class Children:
    """The processes of one peer run, stopped newest first when the block exits."""

    def __init__(self) -> None:
        self._children: list[Child] = []

    async def start(
        self,
        name: str,
        argv: Sequence[str | os.PathLike[str]],
        *,
        log: Path,
        cwd: Path,
        env: dict[str, str] | None = None,
    ) -> Child:
        with log.open("ab") as out:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out,
                stderr=asyncio.subprocess.STDOUT,
                cwd=cwd,
                env=env,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        child = Child(name, proc, log)
        self._children.append(child)
        return child

    async def __aenter__(self) -> Children:
        return self

    async def __aexit__(self, *exc: object) -> None:
        try:
            for child in reversed(self._children):
                await child.stop()
        finally:
            # Cancelled again while stopping: nothing may outlive the run.
            for child in self._children:
                child.signal_group(signal.SIGKILL)


async def wait_ready(child: Child, ready: Path, *, timeout_s: float) -> None:
    """Until the child has written its readiness file."""
    deadline = time.monotonic() + timeout_s
    while not await asyncio.to_thread(ready.exists):
        child.check_alive()
        if time.monotonic() > deadline:
            raise ChildFailed(
                f"{child.name} not ready after {timeout_s:.0f} s:\n{log_tail(child.log)}"
            )
        await asyncio.sleep(0.1)


async def wait_port(child: Child, port: int, *, timeout_s: float) -> None:
    """Until something accepts TCP connections on 127.0.0.1:port."""
    deadline = time.monotonic() + timeout_s
    while True:
        child.check_alive()
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            if time.monotonic() > deadline:
                raise ChildFailed(
                    f"{child.name} not listening on {port} after {timeout_s:.0f} s:\n"
                    f"{log_tail(child.log)}"
                ) from None
            await asyncio.sleep(0.1)
        else:
            writer.close()
            return
