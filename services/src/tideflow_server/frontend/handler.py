"""The public API: FlowService (its use cases, one module each) and OperatorService, and the
interceptor chain the frontend's server runs them behind.

Every request is authenticated, authorized, validated and counted against its namespace's
rate limit by the chain (rpc/interceptors.py, with the per-method rules of frontend/rules.py)
before a use case sees it. A use case then either serves it here (namespaces, flows,
visibility: data that is not sharded) or routes it (run operations to the history host that
owns the run's shard, polls to the matching host that owns the task queue partition).
"""

from __future__ import annotations

from tideflow.api.v1 import flow_service_pb2_grpc
from tideflow_server.frontend.access import Access, public
from tideflow_server.frontend.base import Frontend
from tideflow_server.frontend.flows import Flows
from tideflow_server.frontend.namespaces import Namespaces
from tideflow_server.frontend.operator import OperatorHandler
from tideflow_server.frontend.polls import Polls
from tideflow_server.frontend.rules import FLOW_SERVICE, OPERATOR_SERVICE
from tideflow_server.frontend.runs import Runs
from tideflow_server.frontend.task_queues import TaskQueues
from tideflow_server.rpc.interceptors import (
    Audit,
    Authentication,
    Authorization,
    Layer,
    Method,
    RateLimiting,
    Validation,
    base_layers,
)


class FlowHandler(
    Namespaces, Flows, Runs, Polls, TaskQueues, flow_service_pb2_grpc.FlowServiceServicer
):
    def __init__(self, frontend: Frontend) -> None:
        self._f = frontend


def _flow_service(method: Method) -> bool:
    return method.service == FLOW_SERVICE


def frontend_layers(frontend: Frontend, *, auth: bool) -> list[Layer]:
    """The frontend's chain after tracing and metrics, in the order rpc/interceptors.py
    states. Without `auth` there is no key to read and everything is allowed: those two layers
    are left out, not run idle."""
    access = Access(frontend.api_keys if auth else None)
    return [
        *base_layers(),
        *([Authentication(access.authenticate, applies=public)] if auth else []),
        Audit(access.record, applies=access.audited),
        *([Authorization(access.authorize, applies=public)] if auth else []),
        Validation(frontend.validate, applies=public),
        RateLimiting(frontend.rate_limit, applies=_flow_service),
    ]


__all__ = [
    "FLOW_SERVICE",
    "OPERATOR_SERVICE",
    "FlowHandler",
    "Frontend",
    "OperatorHandler",
    "frontend_layers",
]
