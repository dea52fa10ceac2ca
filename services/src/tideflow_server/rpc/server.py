"""One grpc.aio server per role, with health checking and reflection, shut down gracefully."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, cast

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from tideflow_server.config import RoleEndpoint
from tideflow_server.rpc import reflection
from tideflow_server.rpc.interceptors import Chain, Layer, base_layers

_OPTIONS = [
    ("grpc.max_receive_message_length", 8 * 1024 * 1024),
    ("grpc.max_send_message_length", 8 * 1024 * 1024),
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.so_reuseport", 0),
]


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
    role: str,
    endpoint: RoleEndpoint,
    services: Sequence[Service],
    *,
    layers: Sequence[Layer] | None = None,
    tls: grpc.ServerCredentials | None = None,
) -> RoleServer:
    """`layers`: the interceptor chain (rpc/interceptors.py), by default error mapping and
    decoding only. `tls`: serve TLS only (see `server_credentials`)."""
    chain = Chain(base_layers() if layers is None else layers)
    server = grpc.aio.server(options=_OPTIONS, interceptors=[chain])
    health_servicer = _aio_health_servicer()
    health_pb2_grpc.add_HealthServicer_to_server(cast(Any, health_servicer), server)
    for service in services:
        service.register(server)
    names = [s.name for s in services]
    reflection.enable(server, [*names, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name])
    listen = f"{endpoint.host}:{endpoint.port}"
    port = server.add_secure_port(listen, tls) if tls else server.add_insecure_port(listen)
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


def server_credentials(
    cert_file: Path, key_file: Path, client_ca_file: Path | None
) -> grpc.ServerCredentials:
    """TLS with this certificate; with `client_ca_file`, only clients with a certificate that
    CA signed get through (mutual TLS)."""
    return grpc.ssl_server_credentials(
        [(key_file.read_bytes(), cert_file.read_bytes())],
        root_certificates=client_ca_file.read_bytes() if client_ca_file else None,
        require_client_auth=client_ca_file is not None,
    )


def channel_credentials(
    ca_file: Path | None, cert_file: Path | None = None, key_file: Path | None = None
) -> grpc.ChannelCredentials:
    """TLS to a server whose certificate `ca_file` signed (the system's roots without it),
    presenting `cert_file` when given (mutual TLS)."""
    return grpc.ssl_channel_credentials(
        root_certificates=ca_file.read_bytes() if ca_file else None,
        private_key=key_file.read_bytes() if key_file else None,
        certificate_chain=cert_file.read_bytes() if cert_file else None,
    )


async def wait_for_termination(servers: Sequence[RoleServer]) -> None:
    await asyncio.gather(*(s.server.wait_for_termination() for s in servers))
