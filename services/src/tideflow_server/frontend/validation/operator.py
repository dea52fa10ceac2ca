"""OperatorService requests: the cluster view, and API keys."""

from __future__ import annotations

import re
from typing import Final

from tideflow.api.v1 import common_pb2, operator_service_pb2
from tideflow_server.auth import CLUSTER
from tideflow_server.frontend.limits import RequestLimits
from tideflow_server.frontend.validation._checker import _Checker

MAX_KEY_TASK_QUEUES: Final = 100
MAX_KEY_DESCRIPTION: Final = 1_000
_ROLES: Final = ("", "frontend", "history", "matching")
_KEY_ID: Final = re.compile(r"^[0-9a-f]{16}$")


def _key_namespace(check: _Checker, namespace: str) -> None:
    if namespace != CLUSTER:
        check.namespace(namespace)


def validate_get_cluster_info(
    req: operator_service_pb2.GetClusterInfoRequest, limits: RequestLimits
) -> None:
    """Nothing to check: the request has no fields."""


def validate_list_shards(
    req: operator_service_pb2.ListShardsRequest, limits: RequestLimits
) -> None:
    """Nothing to check: the request has no fields."""


def validate_list_cluster_members(
    req: operator_service_pb2.ListClusterMembersRequest, limits: RequestLimits
) -> None:
    check = _Checker(limits)
    if req.role not in _ROLES:
        check.add("role", f"must be empty or one of {', '.join(_ROLES[1:])}")
    check.done()


def validate_create_api_key(
    req: operator_service_pb2.CreateApiKeyRequest, limits: RequestLimits
) -> None:
    check = _Checker(limits)
    _key_namespace(check, req.namespace)
    worker = req.role == operator_service_pb2.API_KEY_ROLE_WORKER
    if check.enum(req, "role", "role", allow_unspecified=False) and req.task_queues and not worker:
        check.add("task_queues", "only a worker key is limited to task queues")
    if len(req.task_queues) > MAX_KEY_TASK_QUEUES:
        check.add(
            "task_queues", f"has {len(req.task_queues)}, over the limit of {MAX_KEY_TASK_QUEUES}"
        )
    else:
        for i, name in enumerate(req.task_queues):
            check.task_queue(
                common_pb2.TaskQueue(name=name), f"task_queues[{i}]", allow_sticky=False
            )
    check.text(req.description, "description", MAX_KEY_DESCRIPTION)
    check.done()


def validate_list_api_keys(
    req: operator_service_pb2.ListApiKeysRequest, limits: RequestLimits
) -> None:
    check = _Checker(limits)
    _key_namespace(check, req.namespace)
    check.done()


def validate_revoke_api_key(
    req: operator_service_pb2.RevokeApiKeyRequest, limits: RequestLimits
) -> None:
    check = _Checker(limits)
    _key_namespace(check, req.namespace)
    if not _KEY_ID.match(req.key_id):
        check.add("key_id", "must be a key id: 16 lowercase hex digits (the key's 2nd part)")
    check.done()
