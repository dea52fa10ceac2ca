"""A Tideflow server process: any subset of the three roles, over one persistence backend.

Roles talk to each other only through their gRPC services, also when they share a process,
so the same code runs as one `start-dev` process or as a cluster of role processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import secrets
import uuid
from collections.abc import Awaitable, Callable, Iterable
from typing import TypeVar

import grpc
import structlog

from tideflow.api.v1 import flow_service_pb2_grpc, operator_service_pb2_grpc
from tideflow_server import observability
from tideflow_server.auth import ApiKeys
from tideflow_server.config import Settings
from tideflow_server.frontend.base import Frontend, Timeouts
from tideflow_server.frontend.handler import FlowHandler, OperatorHandler, frontend_layers
from tideflow_server.frontend.ratelimit import NamespaceRateLimiter
from tideflow_server.history.handler import HistoryHandler
from tideflow_server.history.interpreter import Limits
from tideflow_server.history.shard.controller import ShardController
from tideflow_server.history.tasks import timer, transfer
from tideflow_server.internal.v1 import (
    history_service_pb2_grpc,
    matching_service_pb2_grpc,
    records_pb2,
)
from tideflow_server.matching import MatchingConfig, MatchingEngine, MatchingHandler
from tideflow_server.membership import Membership
from tideflow_server.namespaces import NamespaceCache
from tideflow_server.persistence import faults, instrumented, schema
from tideflow_server.persistence.errors import Unavailable as PersistenceUnavailable
from tideflow_server.persistence.factory import AnyPersistence, open_persistence, schema_databases
from tideflow_server.persistence.group import GROUP_OBSERVERS
from tideflow_server.persistence.interfaces import Persistence
from tideflow_server.persistence.manager import PersistenceManager
from tideflow_server.persistence.records import ClusterMetadataRow, TaskQueueKey
from tideflow_server.rpc.clients import (
    HISTORY,
    MATCHING,
    ChannelPool,
    HistoryClient,
    MatchingClient,
    partition_key,
)
from tideflow_server.rpc.interceptors import base_layers
from tideflow_server.rpc.server import (
    RoleServer,
    Service,
    channel_credentials,
    server_credentials,
    start_role_server,
)
from tideflow_server.taskqueue_configs import TaskQueueConfigs
from tideflow_server.tokens import CLUSTER_KEY_ID, TokenKeys

log = structlog.get_logger(__name__)
T = TypeVar("T")

ROLES = ("frontend", "history", "matching")
FLOW_SERVICE = "tideflow.api.v1.FlowService"
OPERATOR_SERVICE = "tideflow.api.v1.OperatorService"
HISTORY_SERVICE = "tideflow_server.internal.v1.HistoryService"
MATCHING_SERVICE = "tideflow_server.internal.v1.MatchingService"


class TideflowServer:
    def __init__(self, settings: Settings, roles: Iterable[str]) -> None:
        self.settings = settings
        self.roles = [r for r in ROLES if r in set(roles)]
        unknown = set(roles) - set(ROLES)
        if unknown or not self.roles:
            raise ValueError(f"roles must be among {', '.join(ROLES)}: got {sorted(roles)}")
        self.servers: dict[str, RoleServer] = {}
        self._persistence: AnyPersistence | None = None
        self._membership: Membership | None = None
        internal = settings.security.internal_tls
        self._channels = ChannelPool(
            channel_credentials(internal.ca_file, internal.cert_file, internal.key_file)
            if internal.enabled
            else None,
            server_name=internal.server_name,
        )
        self._controller: ShardController | None = None
        self._matching_engine: MatchingEngine | None = None

    @property
    def persistence(self) -> AnyPersistence:
        assert self._persistence is not None, "server not started"
        return self._persistence

    def address(self, role: str) -> str:
        return self.servers[role].address

    async def start(self, *, setup_schema: bool = False) -> None:
        settings = self.settings
        persistence = await _retrying(
            "open the database", lambda: open_persistence(settings.persistence)
        )
        self._persistence = persistence

        async def prepare() -> ClusterMetadataRow:
            for db in schema_databases(persistence):
                if setup_schema and await schema.current_version(db) is None:
                    await schema.setup_schema(db)
                await schema.check_schema(db)
            # The first process of a new cluster generates its token key; every later one
            # reads the same (the insert is conditional).
            data = records_pb2.ClusterMetadata(task_token_secret=secrets.token_bytes(32))
            return await persistence.cluster.init_cluster_metadata(
                ClusterMetadataRow(
                    settings.cluster.name,
                    settings.cluster.history_shard_count,
                    data.SerializeToString(),
                )
            )

        metadata = await _retrying("read the cluster metadata", prepare)
        token_keys = task_token_keys(settings, metadata)
        shard_count = metadata.history_shard_count
        if shard_count != settings.cluster.history_shard_count:
            log.warning(
                "history_shard_count is fixed by the cluster's database",
                configured=settings.cluster.history_shard_count,
                using=shard_count,
            )
        manager = PersistenceManager(
            _instrumented(faults.inject(persistence, settings.persistence.faults)),
            settings.persistence.limits,
        )
        membership = Membership(persistence.cluster, settings.membership)
        self._membership = membership
        history = HistoryClient(membership, self._channels, shard_count)
        matching = MatchingClient(membership, self._channels)
        namespaces = NamespaceCache(manager)
        task_queues = TaskQueueConfigs(
            manager.persistence.tasks, ttl_s=settings.matching.config_cache_ttl_s
        )
        endpoints = settings.services

        if "matching" in self.roles:

            def owns_root(key: TaskQueueKey) -> bool:
                # The hop from a leaf to its root stays in this process when this host owns
                # the root in the current view.
                owner = membership.owner(
                    MATCHING, partition_key(key.namespace_id, key.name, key.kind, 0)
                )
                server = self.servers.get("matching")
                return owner is None or server is None or owner.rpc_address == server.address

            engine = MatchingEngine(
                manager,
                history,
                host_id=f"matching-{uuid.uuid4().hex[:8]}",
                config=MatchingConfig(
                    long_poll_timeout=settings.matching.long_poll_timeout_s,
                    max_outstanding_polls=settings.matching.max_polls_per_partition,
                    sync_match_wait=settings.matching.sync_match_wait_s,
                    config_refresh=settings.matching.config_refresh_s,
                    fair_window=settings.matching.fair_window,
                    sticky_poller_gone_after=settings.matching.sticky_poller_gone_s,
                    affinity_live_for=settings.matching.affinity_live_s,
                ),
                peers=matching,
                owns_root=owns_root,
            )
            self._matching_engine = engine
            handler = MatchingHandler(engine)
            server = await start_role_server(
                "matching",
                endpoints.matching,
                [
                    Service(
                        MATCHING_SERVICE,
                        lambda s: matching_service_pb2_grpc.add_MatchingServiceServicer_to_server(
                            handler, s
                        ),
                        on_stop=handler.streams.close,
                    )
                ],
                tls=internal_server_tls(settings),
                layers=[*observability.layers(), *base_layers()],
            )
            self.servers["matching"] = server
            await _retrying("join the cluster", lambda: membership.join(MATCHING, server.address))

        if "history" in self.roles:
            controller = ShardController(
                manager=manager,
                membership=membership,
                matching=matching,
                history=history,
                namespaces=namespaces,
                config=settings.history,
                blueprint_limits=blueprint_limits(settings),
                shard_count=shard_count,
                timer_executor=timer.fire,
                transfer_executor=transfer.execute,
                task_queues=task_queues,
            )
            self._controller = controller
            history_handler = HistoryHandler(controller, shard_count)
            server = await start_role_server(
                "history",
                endpoints.history,
                [
                    Service(
                        HISTORY_SERVICE,
                        lambda s: history_service_pb2_grpc.add_HistoryServiceServicer_to_server(
                            history_handler, s
                        ),
                        on_stop=history_handler.streams.close,
                    )
                ],
                tls=internal_server_tls(settings),
                layers=[*observability.layers(), *base_layers()],
            )
            self.servers["history"] = server
            await _retrying("join the cluster", lambda: membership.join(HISTORY, server.address))
            await controller.start(server.address)

        if "frontend" in self.roles:
            limiter = NamespaceRateLimiter(
                settings.frontend.namespace_rps, settings.frontend.namespace_burst
            )
            frontend = Frontend(
                manager=manager,
                namespaces=namespaces,
                limiter=limiter,
                history=history,
                matching=matching,
                token_keys=token_keys,
                api_keys=ApiKeys(persistence.metadata, cache_s=settings.security.auth.key_cache_s),
                timeouts=Timeouts(
                    long_poll_s=settings.matching.long_poll_timeout_s,
                    history_long_poll_s=settings.history.long_poll_timeout_s,
                    wait_for_close_s=settings.history.wait_for_close_timeout_s,
                ),
                blueprint_limits=blueprint_limits(settings),
                events_config=settings.events,
                task_queue_configs=task_queues,
            )
            await self._serve_frontend(frontend, membership, shard_count)

        membership.start()
        log.info(
            "tideflow server started",
            roles=self.roles,
            addresses={role: s.address for role, s in self.servers.items()},
            backend=persistence.backend,
            shards=shard_count,
        )
        if "frontend" in self.roles and not settings.security.auth.enabled:
            log.warning(
                "auth is off: any caller that reaches the frontend's port may call anything "
                "in any namespace (set security.auth.enabled: true, and make a cluster admin "
                "key with 'tideflow-server auth create-key')"
            )

    async def _serve_frontend(
        self, frontend: Frontend, membership: Membership, shard_count: int
    ) -> None:
        settings = self.settings
        endpoints = settings.services
        flow_handler = FlowHandler(frontend)
        operator_handler = OperatorHandler(
            frontend, membership=membership, settings=settings, shard_count=shard_count
        )
        server = await start_role_server(
            "frontend",
            endpoints.frontend,
            [
                Service(
                    FLOW_SERVICE,
                    lambda s: flow_service_pb2_grpc.add_FlowServiceServicer_to_server(
                        flow_handler, s
                    ),
                ),
                Service(
                    OPERATOR_SERVICE,
                    lambda s: operator_service_pb2_grpc.add_OperatorServiceServicer_to_server(
                        operator_handler, s
                    ),
                ),
            ],
            layers=[
                *observability.layers(),
                *frontend_layers(frontend, auth=settings.security.auth.enabled),
            ],
            tls=public_server_tls(settings),
        )
        self.servers["frontend"] = server
        await _retrying("join the cluster", lambda: membership.join("frontend", server.address))

    async def stop(self, *, grace_s: float = 5.0) -> None:
        """Stop taking calls (frontend first), let in-flight ones finish, release shards and
        partitions with their ack levels persisted, and leave the membership."""
        for role in ROLES:
            server = self.servers.get(role)
            if server is not None:
                await server.stop(grace_s)
        if self._matching_engine is not None:
            await self._matching_engine.stop()
        if self._controller is not None:
            await self._controller.stop()
        if self._membership is not None:
            await self._membership.leave()
        await self._channels.close()
        observability.flush()
        if self._persistence is not None:
            await self._persistence.close()
        log.info("tideflow server stopped", roles=self.roles)

    async def wait(self) -> None:
        await asyncio.gather(*(s.server.wait_for_termination() for s in self.servers.values()))


STARTUP_RETRY_S = 60.0
"""How long a starting process keeps retrying a database that is away or busy."""


def _instrumented(persistence: Persistence) -> Persistence:
    """The stores measured (and traced) when telemetry is on; as they are otherwise."""
    t = observability.telemetry()
    if not (t.tracing or observability.metrics_on()):
        return persistence
    if observability.metrics_on() and not GROUP_OBSERVERS:
        GROUP_OBSERVERS.append(t.commit_batch_size.series().observe)
    return instrumented.instrument(
        persistence,
        duration=t.persistence_duration,
        errors=t.persistence_errors,
        tracer=t.tracer if t.tracing else None,
    )


def internal_server_tls(settings: Settings) -> grpc.ServerCredentials | None:
    """History's and matching's ports: mutual TLS with the roles' own CA, when configured."""
    tls = settings.security.internal_tls
    if not tls.enabled:
        return None
    assert tls.cert_file and tls.key_file and tls.ca_file  # validated together
    return server_credentials(tls.cert_file, tls.key_file, tls.ca_file)


def public_server_tls(settings: Settings) -> grpc.ServerCredentials | None:
    """The frontend's port: TLS (mutual with a client CA), when configured."""
    tls = settings.security.public_tls
    if tls.cert_file is None or tls.key_file is None:
        return None
    return server_credentials(tls.cert_file, tls.key_file, tls.client_ca_file)


def task_token_keys(settings: Settings, metadata: ClusterMetadataRow) -> TokenKeys:
    """The configured keys, or else the cluster's own (generated into its database by its
    first process)."""
    configured = settings.security.task_token_keys
    if configured:
        return TokenKeys([(k.id, k.secret.get_secret_value().encode()) for k in configured])
    secret = records_pb2.ClusterMetadata.FromString(metadata.data).task_token_secret
    if not secret:
        raise RuntimeError(
            "this cluster's database holds no task token key (it was initialised by an "
            "older version): set security.task_token_keys"
        )
    return TokenKeys([(CLUSTER_KEY_ID, secret)])


def blueprint_limits(settings: Settings) -> Limits:
    """The language's bounds from the `blueprint` settings."""
    return Limits(**settings.blueprint.model_dump())


async def _retrying(what: str, call: Callable[[], Awaitable[T]]) -> T:
    """Run a startup step, retrying while the database is unavailable (not up yet, busy,
    restarting): a process restarted next to busy peers must come up, not exit."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + STARTUP_RETRY_S
    backoff = 0.1
    while True:
        try:
            return await call()
        except PersistenceUnavailable as e:
            if loop.time() + backoff > deadline:
                raise
            log.warning("database unavailable while starting; retrying", step=what, error=str(e))
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 2.0)


def _tune_gc() -> None:
    """Move what startup allocated (modules, config, caches) out of the collector's sight, and
    collect the young generation less often: a busy server allocates many short-lived objects
    per request (futures, messages) that reference counting frees anyway, and with the default
    threshold of 700 the cyclic collector runs hundreds of times a second for little."""
    gc.collect()
    gc.freeze()
    _, second, third = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, second, third)


GC_YOUNG_THRESHOLD = 20_000


async def serve_until_signalled(
    server: TideflowServer,
    *,
    setup_schema: bool = False,
    on_started: Callable[[], Awaitable[None]] | None = None,
) -> None:
    """Run until SIGINT or SIGTERM, then stop gracefully."""
    import signal  # noqa: PLC0415

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await server.start(setup_schema=setup_schema)
        _tune_gc()
        if on_started is not None:
            await on_started()
        await stop.wait()
    finally:
        with contextlib.suppress(Exception):
            await server.stop()


__all__ = ["HISTORY", "MATCHING", "ROLES", "TideflowServer", "serve_until_signalled"]
