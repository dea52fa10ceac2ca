"""Ports for local servers come from below the kernel's ephemeral range, so no outgoing
connection can take one between its choice and the server's bind."""

from __future__ import annotations

import socket
from pathlib import Path

from deploy.ports import LOWEST, free_port, port_is_free


def _ephemeral_floor() -> int:
    return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])


def test_ports_are_below_the_ephemeral_range_and_never_repeat() -> None:
    ports = [free_port() for _ in range(500)]
    assert len(set(ports)) == len(ports)
    assert all(LOWEST <= port < _ephemeral_floor() for port in ports)


def test_a_listening_port_is_not_free_and_clients_get_ports_above_the_picks() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        taken = listener.getsockname()[1]
        assert not port_is_free(taken)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as client:
            client.connect(("127.0.0.1", taken))
            # The client's own port came from the ephemeral range, above every pick.
            assert client.getsockname()[1] >= _ephemeral_floor()


def test_a_run_of_ports_is_free_on_every_host() -> None:
    hosts = ("127.0.0.1", "127.0.0.2")
    first = free_port(hosts, run=3)
    assert all(port_is_free(first + i, host) for i in range(3) for host in hosts)
    assert free_port() not in range(first, first + 3)
