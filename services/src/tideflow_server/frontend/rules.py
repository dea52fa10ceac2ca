"""What each public RPC asks of its caller: the least role it takes, which namespace it acts
on, and what it costs that namespace's rate limit.

One row per method of FlowService and OperatorService. A method without a row is refused
(PERMISSION_DENIED when auth is on, INTERNAL otherwise) and fails the suite's table test, so
a new RPC cannot ship without saying who may call it.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Final

FLOW_SERVICE: Final = "tideflow.api.v1.FlowService"
OPERATOR_SERVICE: Final = "tideflow.api.v1.OperatorService"


class Role(enum.Enum):
    """What an API key may do. admin > writer > reader; admin > worker."""

    ADMIN = "admin"
    """The namespace's (or, on a cluster key, every namespace's and the cluster's)
    administration, and everything the other roles may do."""
    WRITER = "writer"
    """Start, signal, cancel and terminate runs, publish events, register flows; and read."""
    READER = "reader"
    """Describe and list namespaces, flows, runs, histories and task queues."""
    WORKER = "worker"
    """Poll block tasks, answer them and heartbeat, on the key's task queues."""

    def grants(self, needed: Role) -> bool:
        """Whether a key of this role may do what `needed` may."""
        return needed in _GRANTS[self]


_GRANTS: Final[dict[Role, frozenset[Role]]] = {
    Role.ADMIN: frozenset(Role),
    Role.WRITER: frozenset({Role.WRITER, Role.READER}),
    Role.READER: frozenset({Role.READER}),
    Role.WORKER: frozenset({Role.WORKER}),
}


class Scope(enum.Enum):
    NAMESPACE = "namespace"
    """The request's `namespace` field names the namespace it acts on."""
    CLUSTER = "cluster"
    """The whole cluster (or a namespace not registered yet): a cluster key only."""
    ITEMS = "items"
    """A batch whose items each name their namespace; every one must be the key's."""
    ANY = "any"
    """Any valid key, whatever its namespace (harmless facts: the cluster's name and version)."""


@dataclass(frozen=True)
class Rule:
    role: Role
    scope: Scope = Scope.NAMESPACE
    cost: float | None = 1.0
    """Tokens charged to the namespace's bucket before the handler runs; 0 resolves the
    namespace without charging it; None charges nothing here (the use case charges, or there
    is no namespace)."""


ADMIN_COST: Final = 0.0
"""Namespace administration is not charged to the namespace's bucket: a limit set too low must
never block the call that fixes it."""
POLL_COST: Final = 0.0
"""Long polls are limited by matching's dispatch rate instead (they wait, rather than load)."""

RULES: Final[dict[str, Rule]] = {
    # FlowService: namespaces
    f"/{FLOW_SERVICE}/RegisterNamespace": Rule(Role.ADMIN, Scope.CLUSTER, cost=None),
    f"/{FLOW_SERVICE}/DescribeNamespace": Rule(Role.READER, cost=ADMIN_COST),
    f"/{FLOW_SERVICE}/ListNamespaces": Rule(Role.READER, Scope.CLUSTER, cost=None),
    f"/{FLOW_SERVICE}/UpdateNamespace": Rule(Role.ADMIN, cost=ADMIN_COST),
    # flows
    f"/{FLOW_SERVICE}/RegisterFlow": Rule(Role.WRITER),
    f"/{FLOW_SERVICE}/DescribeFlow": Rule(Role.READER),
    f"/{FLOW_SERVICE}/ListFlows": Rule(Role.READER),
    # runs
    f"/{FLOW_SERVICE}/StartRun": Rule(Role.WRITER),
    f"/{FLOW_SERVICE}/SignalRun": Rule(Role.WRITER),
    f"/{FLOW_SERVICE}/SignalWithStartRun": Rule(Role.WRITER),
    f"/{FLOW_SERVICE}/PublishEvent": Rule(Role.WRITER),
    f"/{FLOW_SERVICE}/CancelRun": Rule(Role.WRITER),
    f"/{FLOW_SERVICE}/TerminateRun": Rule(Role.WRITER),
    f"/{FLOW_SERVICE}/DescribeRun": Rule(Role.READER),
    f"/{FLOW_SERVICE}/GetRunHistory": Rule(Role.READER),
    f"/{FLOW_SERVICE}/ListRuns": Rule(Role.READER),
    # block tasks
    f"/{FLOW_SERVICE}/PollBlockTask": Rule(Role.WORKER, cost=POLL_COST),
    f"/{FLOW_SERVICE}/RespondBlockCompleted": Rule(Role.WORKER),
    # Charged per namespace by the use case: its outcome is per item.
    f"/{FLOW_SERVICE}/RespondBlockCompletedBatch": Rule(Role.WORKER, Scope.ITEMS, cost=None),
    f"/{FLOW_SERVICE}/RespondBlockFailed": Rule(Role.WORKER),
    f"/{FLOW_SERVICE}/RespondBlockCanceled": Rule(Role.WORKER),
    f"/{FLOW_SERVICE}/RecordBlockHeartbeat": Rule(Role.WORKER),
    # task queues
    f"/{FLOW_SERVICE}/DescribeTaskQueue": Rule(Role.READER),
    f"/{FLOW_SERVICE}/UpdateTaskQueueConfig": Rule(Role.ADMIN, cost=ADMIN_COST),
    # OperatorService
    f"/{OPERATOR_SERVICE}/GetClusterInfo": Rule(Role.READER, Scope.ANY, cost=None),
    f"/{OPERATOR_SERVICE}/ListShards": Rule(Role.READER, Scope.CLUSTER, cost=None),
    f"/{OPERATOR_SERVICE}/ListClusterMembers": Rule(Role.READER, Scope.CLUSTER, cost=None),
}


def rule_for(path: str) -> Rule | None:
    return RULES.get(path)
