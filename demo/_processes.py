"""The demos' child processes: a throwaway `tideflow-server start-dev`, worker processes with
their logs, and the folder they work in."""

from __future__ import annotations

import contextlib
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

ROOT = Path(__file__).resolve().parent.parent
READY_LINE = "tideflow dev server: frontend at"
STARTUP_TIMEOUT_S = 30.0


@dataclass
class Processes:
    """Every child process the demo started, with its log file; stopped in reverse order."""

    children: list[tuple[str, subprocess.Popen[bytes], IO[bytes]]] = field(default_factory=list)

    def spawn(self, name: str, argv: list[str], log: Path) -> subprocess.Popen[bytes]:
        out = log.open("ab")
        try:
            proc = subprocess.Popen(
                argv, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        except BaseException:
            out.close()
            raise
        self.children.append((name, proc, out))
        return proc

    def stop(self, grace_s: float = 5.0) -> None:
        for _, proc, _ in reversed(self.children):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for _, proc, out in reversed(self.children):
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            out.close()
        self.children.clear()


def server_argv(db: Path, port: int, namespace: str) -> list[str]:
    exe = Path(sys.executable).with_name("tideflow-server")
    server = str(exe) if exe.exists() else shutil.which("tideflow-server")
    prefix = [server] if server else [sys.executable, "-m", "tideflow_server.main"]
    return [*prefix, "start-dev", "--db", str(db), "--port", str(port), "--namespace", namespace]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_ready(proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if READY_LINE in log.read_text(errors="replace"):
            return
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
    raise RuntimeError(f"tideflow-server did not become ready (see {log}):\n{tail}")


def run_id_for(path: Path) -> str:
    """A run id from a file name: its stem, with what a run id may not spell replaced."""
    return re.sub(r"[^A-Za-z0-9_.-]", "-", path.stem)


@contextlib.contextmanager
def workspace(keep: bool) -> Iterator[Path]:
    if keep:
        path = ROOT / ".tideflow"
        path.mkdir(exist_ok=True)
        yield path
    else:
        with tempfile.TemporaryDirectory(prefix="tideflow-demo-") as tmp:
            yield Path(tmp)
