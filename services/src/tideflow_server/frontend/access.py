"""The frontend's part of the interceptor chain: who calls (API keys), whether they may
(frontend/rules.py), and the audit record of what they did.

With auth off (`security.auth.enabled: false`, start-dev's default) every call runs as an
anonymous cluster admin and no key is read; the rules still decide what is audited.
"""

from __future__ import annotations

from typing import Any

import structlog

from tideflow.api.v1 import common_pb2
from tideflow_server.auth import CLUSTER, ApiKeys, Principal
from tideflow_server.auth.keys import ANONYMOUS
from tideflow_server.frontend.rules import FLOW_SERVICE, OPERATOR_SERVICE, Rule, Scope, rule_for
from tideflow_server.rpc.errors import PermissionDenied
from tideflow_server.rpc.interceptors import Call, Method, service_error

audit_log = structlog.get_logger("tideflow.audit")


def public(method: Method) -> bool:
    """FlowService and OperatorService; health checks and reflection need no key."""
    return method.service in (FLOW_SERVICE, OPERATOR_SERVICE)


def _rule(method: Method) -> Rule:
    rule = rule_for(method.path)
    if rule is None:
        raise PermissionDenied(f"{method.path} has no access rule", reason="NO_ACCESS_RULE")
    return rule


def _principal(call: Call) -> Principal:
    principal = call.principal
    assert isinstance(principal, Principal), "authentication runs before authorization"
    return principal


class Access:
    def __init__(self, keys: ApiKeys | None) -> None:
        """`keys`: None with auth off."""
        self.keys = keys

    async def authenticate(self, call: Call) -> Principal:
        if self.keys is None:
            return ANONYMOUS
        return await self.keys.authenticate(call.metadata("authorization"))

    def authorize(self, call: Call, request: Any) -> None:
        rule = _rule(call.method)
        principal = _principal(call)
        name = call.method.name
        if not principal.role.grants(rule.role):
            raise PermissionDenied(
                f"{name} takes a key with role {rule.role.label}; this key is "
                f"{principal.role.label}",
                reason="ROLE_NOT_ALLOWED",
            )
        if rule.scope is Scope.CLUSTER and principal.namespace != CLUSTER:
            raise PermissionDenied(
                f"{name} takes a cluster key (namespace {CLUSTER!r}); this key is of "
                f"namespace {principal.namespace!r}",
                reason="CLUSTER_KEY_REQUIRED",
            )
        if rule.scope is Scope.NAMESPACE:
            self._namespace(principal, name, request.namespace)
            if name == "PollBlockTask":
                self._task_queue(principal, request)
        elif rule.scope is Scope.ITEMS:
            for item in request.completions:
                self._namespace(principal, name, item.namespace)
        _stamp(request, principal)

    @staticmethod
    def _namespace(principal: Principal, name: str, namespace: str) -> None:
        if not principal.acts_on(namespace):
            raise PermissionDenied(
                f"this key is of namespace {principal.namespace!r}, not {namespace!r}",
                reason="NAMESPACE_NOT_ALLOWED",
                metadata={"namespace": namespace},
            )

    @staticmethod
    def _task_queue(principal: Principal, request: Any) -> None:
        queue = request.task_queue
        allowed = principal.task_queues
        if (
            allowed
            and queue.kind != common_pb2.TASK_QUEUE_KIND_STICKY
            and queue.name not in allowed
        ):
            raise PermissionDenied(
                f"this key may poll {sorted(allowed)}, not {queue.name!r}",
                reason="TASK_QUEUE_NOT_ALLOWED",
                metadata={"task_queue": queue.name},
            )

    # -- audit -------------------------------------------------------------------------------

    @staticmethod
    def audited(method: Method) -> bool:
        rule = rule_for(method.path)
        return rule is not None and rule.audit

    @staticmethod
    def record(call: Call, request: Any, response: Any, error: BaseException | None) -> None:
        """One structured record per audited call (logger `tideflow.audit`)."""
        principal = call.principal
        fields: dict[str, Any] = {
            # No principal: auth is off (with it on, an unauthenticated call ends before this).
            "who": principal.name if isinstance(principal, Principal) else "anonymous",
            "action": call.method.name,
            "namespace": getattr(request, "namespace", ""),
            "peer": call.context.peer(),
        }
        fields.update(_details(request, response))
        if error is None:
            fields["outcome"] = "OK"
        elif isinstance(error, Exception):
            fields["outcome"] = service_error(error).code.name
            fields["error"] = str(error)[:200]
        else:
            fields["outcome"] = "CANCELLED"
        audit_log.info("audit", **fields)


MAX_IDENTITY = 255
"""RequestLimits.max_identity_length's default: a stamped identity stays within it."""


def _stamp(request: Any, principal: Principal) -> None:
    """What history records as who did it (a worker's answer, a start, a termination) names
    the key that authenticated the call after what the caller says it is: a self-declared
    identity cannot pass for another's. In place: the request is this call's own."""
    fields = request.DESCRIPTOR.fields_by_name
    if "identity" in fields:
        request.identity = stamped(request.identity, principal)
    elif "completions" in fields:
        for item in request.completions:
            item.identity = stamped(item.identity, principal)


def stamped(identity: str, principal: Principal) -> str:
    suffix = f" key:{principal.key_id}"
    if identity.endswith(suffix):
        return identity
    return identity[: MAX_IDENTITY - len(suffix)] + suffix


def _details(request: Any, response: Any) -> dict[str, Any]:
    """What the action was done to, where the request or response says."""
    details: dict[str, Any] = {}
    descriptor = request.DESCRIPTOR.fields_by_name
    if "run" in descriptor and request.run.run_id:
        details["run_id"] = request.run.run_id
    if "reason" in descriptor and request.reason:
        details["reason"] = request.reason[:200]
    if "key_id" in descriptor:
        details["key_id"] = request.key_id
    if "task_queue" in descriptor:
        details["task_queue"] = request.task_queue.name
    if "update_mask" in descriptor:
        details["fields"] = list(request.update_mask.paths)
    if "role" in descriptor:
        details["role"] = request.role
    if response is not None and "info" in response.DESCRIPTOR.fields_by_name:
        key_id = getattr(response.info, "key_id", "")
        if key_id:
            details["key_id"] = key_id
    return details
