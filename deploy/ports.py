"""Ports for the local servers (Tideflow's roles, PostgreSQL, Cassandra, peers), chosen below
the kernel's ephemeral range.

A port found by binding port 0 comes from the range the kernel also gives to outgoing
connections. Between choosing it and the server binding it, any client socket on the machine (a
database driver's, one role's channel to another) can be given that port, and the server then
fails to start with "address already in use". Ports below the range are never handed to
connections, so only another explicit bind can take one; the picks walk forward from a random
start, so one process never hands out the same port twice and two processes rarely meet.

Standard library only: deploy/cassandra/cassandra.py runs as a script and imports this.
"""

from __future__ import annotations

import itertools
import random
import socket
import threading
from pathlib import Path

LOWEST = 10_000
"""The lowest port handed out; below it live the well-known and registered services."""


def _ephemeral_floor() -> int:
    """The first port the kernel may give an outgoing connection (Linux's default: 32768)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32_768


_CEILING = max(_ephemeral_floor(), LOWEST + 1_000)
_lock = threading.Lock()
_next = itertools.count(random.randrange(LOWEST, _CEILING))


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """Whether nothing listens on it (connections of a killed server in TIME_WAIT do not count:
    the servers bind with SO_REUSEADDR, so they do not keep a restart from binding)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def free_port(hosts: tuple[str, ...] = ("127.0.0.1",), *, run: int = 1) -> int:
    """A port below the ephemeral range, free on every one of `hosts` (a Cassandra ring's nodes
    share their ports) together with the `run - 1` ports after it, and not handed out before
    by this process."""
    span = _CEILING - LOWEST
    for _ in range(span):
        with _lock:
            port = LOWEST + next(_next) % span
            for _ in range(run - 1):
                next(_next)
        if port + run > _CEILING:
            continue
        if all(port_is_free(port + i, host) for i in range(run) for host in hosts):
            return port
    raise RuntimeError(f"no free port between {LOWEST} and {_CEILING}")
