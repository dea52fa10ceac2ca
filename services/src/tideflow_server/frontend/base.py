"""What every frontend use case shares: its dependencies, the namespace a request names, and
the two checks the interceptor chain runs before any of them (validation and the rate limit).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from google.protobuf.message import Message

from tideflow_server.auth import ApiKeys
from tideflow_server.config import EventsConfig
from tideflow_server.frontend import validation
from tideflow_server.frontend.events import EventPublisher
from tideflow_server.frontend.limits import DEFAULT_LIMITS, RequestLimits
from tideflow_server.frontend.ratelimit import NamespaceRateLimiter, overrides_from_config
from tideflow_server.frontend.rules import FLOW_SERVICE, Scope, rule_for
from tideflow_server.history.interpreter import Limits
from tideflow_server.internal.v1 import records_pb2
from tideflow_server.namespaces import NamespaceCache
from tideflow_server.persistence.manager import PersistenceManager
from tideflow_server.rpc.clients import HistoryClient, MatchingClient
from tideflow_server.rpc.errors import Internal
from tideflow_server.rpc.interceptors import Method
from tideflow_server.taskqueue_configs import TaskQueueConfigs
from tideflow_server.tokens import TokenKeys


@dataclass
class Timeouts:
    """The three long polls' (settings `matching.long_poll_timeout_s`,
    `history.long_poll_timeout_s`, `history.wait_for_close_timeout_s`): the frontend sizes its
    calls to matching and history by them."""

    long_poll_s: float = 20.0
    history_long_poll_s: float = 20.0
    wait_for_close_s: float = 30.0


@dataclass
class Frontend:
    manager: PersistenceManager
    namespaces: NamespaceCache
    limiter: NamespaceRateLimiter
    history: HistoryClient
    matching: MatchingClient
    token_keys: TokenKeys
    api_keys: ApiKeys
    limits: RequestLimits = DEFAULT_LIMITS
    timeouts: Timeouts = field(default_factory=Timeouts)
    blueprint_limits: Limits | None = None
    """The `blueprint` settings registration checks (nesting depth, loop iterations)."""
    events_config: EventsConfig = field(default_factory=EventsConfig)
    task_queue_configs: TaskQueueConfigs | None = None

    def __post_init__(self) -> None:
        self.task_queues = self.task_queue_configs or TaskQueueConfigs(
            self.manager.persistence.tasks
        )
        self.events = EventPublisher(
            self.manager.persistence.events, self.history, self.events_config
        )

    async def namespace(self, name: str) -> records_pb2.NamespaceRecord:
        """The namespace a request names (cached), NOT_FOUND when it is not registered."""
        return await self.namespaces.by_name(name)

    def within_namespace_limits(
        self, record: records_pb2.NamespaceRecord, request: Message
    ) -> None:
        """`request` checked again under the namespace's own limits. The server's limits were
        checked before the namespace was known; a namespace's own (NamespaceConfig.limits) can
        only be tighter, so most namespaces skip this."""
        limits = self.limits.with_namespace_limits(record.config.limits)
        if limits is not self.limits:
            validation.validate(request, limits)

    async def charge(self, name: str, cost: float) -> records_pb2.NamespaceRecord:
        """The namespace `name`, charged `cost` tokens of its rate limit."""
        record = await self.namespaces.by_name(name)
        override = overrides_from_config(record.config.rate_limits)
        self.limiter.check(name, rps=override.rps, burst=override.burst, cost=cost)
        return record

    # The interceptor chain's policies (rpc/interceptors.py: Validation, RateLimiting).

    async def validate(self, method: Method, request: Any) -> None:
        """Every field, under the server's limits, then under the namespace's own."""
        validation.validate(request, self.limits)
        rule = rule_for(method.path)
        if rule is not None and rule.scope is Scope.NAMESPACE and method.service == FLOW_SERVICE:
            self.within_namespace_limits(await self.namespace(request.namespace), request)

    async def rate_limit(self, method: Method, request: Any) -> None:
        rule = rule_for(method.path)
        if rule is None:
            raise Internal(f"{method.path} has no rule in frontend/rules.py")
        if rule.cost is not None and rule.scope is Scope.NAMESPACE:
            await self.charge(request.namespace, rule.cost)
