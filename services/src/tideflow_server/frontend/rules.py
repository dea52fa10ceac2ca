"""What each public RPC asks of its caller: the least role it takes, which namespace it acts
on, and what it costs that namespace's rate limit.

One row per method of FlowService and OperatorService. A method without a row is refused
(PERMISSION_DENIED) and fails the suite's table test, so a new RPC cannot ship without saying
who may call it.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Final

from tideflow_server.auth import Role

FLOW_SERVICE: Final = "tideflow.api.v1.FlowService"
OPERATOR_SERVICE: Final = "tideflow.api.v1.OperatorService"


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
    audit: bool = False
    """Every call is written as an audit record (who, namespace, what, when, outcome)."""


ADMIN_COST: Final = 0.0
"""Namespace administration is not charged to the namespace's bucket: a limit set too low must
never block the call that fixes it."""
POLL_COST: Final = 0.0
"""Long polls are limited by matching's dispatch rate instead (they wait, rather than load)."""

RULES: Final[dict[str, Rule]] = {
    # FlowService: namespaces
    f"/{FLOW_SERVICE}/RegisterNamespace": Rule(Role.ADMIN, Scope.CLUSTER, cost=None, audit=True),
    f"/{FLOW_SERVICE}/DescribeNamespace": Rule(Role.READER, cost=ADMIN_COST),
    f"/{FLOW_SERVICE}/ListNamespaces": Rule(Role.READER, Scope.CLUSTER, cost=None),
    f"/{FLOW_SERVICE}/UpdateNamespace": Rule(Role.ADMIN, cost=ADMIN_COST, audit=True),
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
    f"/{FLOW_SERVICE}/TerminateRun": Rule(Role.WRITER, audit=True),
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
    f"/{FLOW_SERVICE}/UpdateTaskQueueConfig": Rule(Role.ADMIN, cost=ADMIN_COST, audit=True),
    # OperatorService
    f"/{OPERATOR_SERVICE}/GetClusterInfo": Rule(Role.READER, Scope.ANY, cost=None),
    f"/{OPERATOR_SERVICE}/ListShards": Rule(Role.READER, Scope.CLUSTER, cost=None),
    f"/{OPERATOR_SERVICE}/ListClusterMembers": Rule(Role.READER, Scope.CLUSTER, cost=None),
    # API keys: of the request's namespace ("*": the cluster's), by its admins.
    f"/{OPERATOR_SERVICE}/CreateApiKey": Rule(Role.ADMIN, cost=None, audit=True),
    f"/{OPERATOR_SERVICE}/ListApiKeys": Rule(Role.ADMIN, cost=None),
    f"/{OPERATOR_SERVICE}/RevokeApiKey": Rule(Role.ADMIN, cost=None, audit=True),
}


def rule_for(path: str) -> Rule | None:
    return RULES.get(path)
