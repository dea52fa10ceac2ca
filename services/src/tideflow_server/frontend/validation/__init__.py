"""Validation of every public FlowService request, before anything is read or written.

Each `validate_<rpc>` collects every problem it finds and raises one `InvalidArgument` naming
them all, so a client fixes its request in one round trip. Field paths use proto field names,
with indices for repeated fields and quoted keys for maps: `run.run_id`, `flow.name`,
`input.payloads[0].metadata`, `memo.fields["k"]`, `statuses[1]`.

The frontend checks shape and size, and that every payload holds what its encoding says (the
rules, shared with the engine, are history/payloads.py's; what the engine reads must be one
JSON value). What needs state (does the flow exist, is the run open) or interpretation
(blueprint contents, the input against the flow's JSON Schema) is the engine's to check.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from google.protobuf.message import Message

from tideflow.api.v1 import flow_service_pb2, operator_service_pb2
from tideflow_server.frontend.limits import RequestLimits
from tideflow_server.frontend.validation._checker import page_size_or_default
from tideflow_server.frontend.validation.block_tasks import (
    validate_describe_task_queue,
    validate_poll_block_task,
    validate_record_block_heartbeat,
    validate_respond_block_canceled,
    validate_respond_block_completed,
    validate_respond_block_completed_batch,
    validate_respond_block_failed,
    validate_update_task_queue_config,
)
from tideflow_server.frontend.validation.namespaces import (
    validate_describe_flow,
    validate_describe_namespace,
    validate_list_flows,
    validate_list_namespaces,
    validate_register_flow,
    validate_register_namespace,
    validate_update_namespace,
)
from tideflow_server.frontend.validation.operator import (
    validate_create_api_key,
    validate_get_cluster_info,
    validate_list_api_keys,
    validate_list_cluster_members,
    validate_list_shards,
    validate_revoke_api_key,
)
from tideflow_server.frontend.validation.runs import (
    validate_cancel_run,
    validate_describe_run,
    validate_get_run_history,
    validate_list_runs,
    validate_publish_event,
    validate_signal_run,
    validate_signal_with_start_run,
    validate_start_run,
    validate_terminate_run,
)

__all__ = [
    "page_size_or_default",
    "validate",
    "validate_cancel_run",
    "validate_describe_flow",
    "validate_describe_namespace",
    "validate_describe_run",
    "validate_describe_task_queue",
    "validate_get_run_history",
    "validate_list_flows",
    "validate_list_namespaces",
    "validate_list_runs",
    "validate_poll_block_task",
    "validate_publish_event",
    "validate_record_block_heartbeat",
    "validate_register_flow",
    "validate_register_namespace",
    "validate_respond_block_canceled",
    "validate_respond_block_completed",
    "validate_respond_block_completed_batch",
    "validate_respond_block_failed",
    "validate_signal_run",
    "validate_signal_with_start_run",
    "validate_start_run",
    "validate_terminate_run",
    "validate_update_namespace",
    "validate_update_task_queue_config",
    "validated_request_types",
]

# One entry point for the handler, keyed by request type.

_M = TypeVar("_M", bound=Message)
_Validator = Callable[[Message, RequestLimits], None]
_VALIDATORS: dict[str, _Validator] = {}


def _register(request_type: type[_M], validator: Callable[[_M, RequestLimits], None]) -> None:
    def run(request: Message, limits: RequestLimits) -> None:
        if not isinstance(request, request_type):  # pragma: no cover - keyed by this type
            raise TypeError(f"expected {request_type.__name__}, got {type(request).__name__}")
        validator(request, limits)

    _VALIDATORS[request_type.DESCRIPTOR.full_name] = run


_register(flow_service_pb2.RegisterNamespaceRequest, validate_register_namespace)
_register(flow_service_pb2.DescribeNamespaceRequest, validate_describe_namespace)
_register(flow_service_pb2.ListNamespacesRequest, validate_list_namespaces)
_register(flow_service_pb2.UpdateNamespaceRequest, validate_update_namespace)
_register(flow_service_pb2.RegisterFlowRequest, validate_register_flow)
_register(flow_service_pb2.DescribeFlowRequest, validate_describe_flow)
_register(flow_service_pb2.ListFlowsRequest, validate_list_flows)
_register(flow_service_pb2.StartRunRequest, validate_start_run)
_register(flow_service_pb2.SignalRunRequest, validate_signal_run)
_register(flow_service_pb2.SignalWithStartRunRequest, validate_signal_with_start_run)
_register(flow_service_pb2.PublishEventRequest, validate_publish_event)
_register(flow_service_pb2.CancelRunRequest, validate_cancel_run)
_register(flow_service_pb2.TerminateRunRequest, validate_terminate_run)
_register(flow_service_pb2.DescribeRunRequest, validate_describe_run)
_register(flow_service_pb2.GetRunHistoryRequest, validate_get_run_history)
_register(flow_service_pb2.ListRunsRequest, validate_list_runs)
_register(flow_service_pb2.PollBlockTaskRequest, validate_poll_block_task)
_register(flow_service_pb2.RespondBlockCompletedRequest, validate_respond_block_completed)
_register(
    flow_service_pb2.RespondBlockCompletedBatchRequest, validate_respond_block_completed_batch
)
_register(flow_service_pb2.RespondBlockFailedRequest, validate_respond_block_failed)
_register(flow_service_pb2.RespondBlockCanceledRequest, validate_respond_block_canceled)
_register(flow_service_pb2.RecordBlockHeartbeatRequest, validate_record_block_heartbeat)
_register(flow_service_pb2.DescribeTaskQueueRequest, validate_describe_task_queue)
_register(flow_service_pb2.UpdateTaskQueueConfigRequest, validate_update_task_queue_config)
_register(operator_service_pb2.GetClusterInfoRequest, validate_get_cluster_info)
_register(operator_service_pb2.ListShardsRequest, validate_list_shards)
_register(operator_service_pb2.ListClusterMembersRequest, validate_list_cluster_members)
_register(operator_service_pb2.CreateApiKeyRequest, validate_create_api_key)
_register(operator_service_pb2.ListApiKeysRequest, validate_list_api_keys)
_register(operator_service_pb2.RevokeApiKeyRequest, validate_revoke_api_key)


def validated_request_types() -> frozenset[str]:
    """Full proto names of the request messages `validate` knows."""
    return frozenset(_VALIDATORS)


def validate(request: Message, limits: RequestLimits) -> None:
    """Validates any public FlowService or OperatorService request; raises `InvalidArgument`
    naming every problem. A request type without a validator is a server bug (`LookupError`),
    never a silent pass."""
    name = request.DESCRIPTOR.full_name
    validator = _VALIDATORS.get(name)
    if validator is None:
        raise LookupError(f"no validator for {name}")
    validator(request, limits)
