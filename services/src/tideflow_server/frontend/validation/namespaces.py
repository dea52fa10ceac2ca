"""Namespace and flow requests."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

from google.protobuf import descriptor

from tideflow.api.v1 import (
    flow_service_pb2,
    namespace_pb2,
)
from tideflow_server.frontend.limits import RequestLimits
from tideflow_server.frontend.validation._checker import (
    _SETTABLE_NAMESPACE_STATES,
    _Checker,
)


def validate_register_namespace(
    req: flow_service_pb2.RegisterNamespaceRequest, limits: RequestLimits
) -> None:
    check = _Checker(limits)
    check.namespace(req.namespace)
    check.description(req.description, "description")
    check.owner_email(req.owner_email, "owner_email")
    check.namespace_data(req.data.items(), "data")
    check.namespace_config(req.config, "config")
    check.done()


def validate_describe_namespace(
    req: flow_service_pb2.DescribeNamespaceRequest, limits: RequestLimits
) -> None:
    check = _Checker(limits)
    check.namespace(req.namespace)
    check.done()


def validate_list_namespaces(
    req: flow_service_pb2.ListNamespacesRequest, limits: RequestLimits
) -> None:
    check = _Checker(limits)
    check.page(req.page_size, req.next_page_token)
    check.done()


def _message_paths(message_type: descriptor.Descriptor, prefix: str) -> Iterable[str]:
    """`prefix` and every field path below it, down through Tideflow's own messages."""
    yield prefix
    for field in message_type.fields:
        path = f"{prefix}.{field.name}"
        sub = field.message_type
        if sub is not None and sub.full_name.startswith("tideflow."):
            yield from _message_paths(sub, path)
        else:
            yield path


_UPDATABLE_PATHS: Final = frozenset(
    (
        "info.description",
        "info.owner_email",
        "info.data",
        "info.state",
        *_message_paths(namespace_pb2.NamespaceConfig.DESCRIPTOR, "config"),
    )
)
_FIXED_PATHS: Final = frozenset(("info", "info.name", "info.id"))


def validate_update_namespace(
    req: flow_service_pb2.UpdateNamespaceRequest, limits: RequestLimits
) -> None:
    check = _Checker(limits)
    check.namespace(req.namespace)
    paths = list(req.update_mask.paths)
    accepted = [p for p in paths if p in _UPDATABLE_PATHS]
    if not paths:
        check.add("update_mask", 'required: name the fields to change, e.g. "info.description"')
    for i, path in enumerate(paths):
        if path in _FIXED_PATHS:
            check.add(
                f"update_mask.paths[{i}]",
                f'"{path}" cannot be updated: the namespace name and id never change; name the '
                'fields to change, e.g. "info.description"',
            )
        elif path not in _UPDATABLE_PATHS:
            check.add(
                f"update_mask.paths[{i}]",
                f'"{path}" is not an updatable field; one of {", ".join(sorted(_UPDATABLE_PATHS))}',
            )

    def masked(target: str) -> bool:
        # A path covers itself and every field below it ("config" covers "config.retention").
        return any(p == target or target.startswith(p + ".") for p in accepted)

    # Only the masked values are applied, so only they are checked.
    if masked("info.description"):
        check.description(req.info.description, "info.description")
    if masked("info.owner_email"):
        check.owner_email(req.info.owner_email, "info.owner_email")
    if masked("info.data"):
        check.namespace_data(req.info.data.items(), "info.data")
    if masked("info.state") and req.info.state not in _SETTABLE_NAMESPACE_STATES:
        check.add(
            "info.state",
            "must be NAMESPACE_STATE_REGISTERED or NAMESPACE_STATE_DEPRECATED",
        )
    if masked("config.retention"):
        check.retention(req.config.retention, "config.retention")
    if masked("config.rate_limits.requests_per_second"):
        check.requests_per_second(
            req.config.rate_limits.requests_per_second,
            "config.rate_limits.requests_per_second",
        )
    if masked("config.rate_limits.burst"):
        check.burst(req.config.rate_limits.burst, "config.rate_limits.burst")
    check.done()


# Flows.


def validate_register_flow(
    req: flow_service_pb2.RegisterFlowRequest, limits: RequestLimits
) -> None:
    """The envelope only: the engine validates the blueprint's contents and reports each error
    with its path."""
    check = _Checker(limits)
    check.namespace(req.namespace)
    if req.WhichOneof("definition") != "blueprint":
        check.add("blueprint", "required: the blueprint to register")
    else:
        # Every uint32 is a valid version; 0 asks the engine for the next one.
        check.flow_name(req.blueprint.name, "blueprint.name", required=True)
        check.size(req.blueprint, "blueprint", limits.max_blueprint_bytes)
    check.identity(req.identity)
    check.done()


def validate_describe_flow(
    req: flow_service_pb2.DescribeFlowRequest, limits: RequestLimits
) -> None:
    check = _Checker(limits)
    check.namespace(req.namespace)
    check.flow_name(req.name, "name", required=True)
    check.done()


def validate_list_flows(req: flow_service_pb2.ListFlowsRequest, limits: RequestLimits) -> None:
    check = _Checker(limits)
    check.namespace(req.namespace)
    check.page(req.page_size, req.next_page_token)
    check.flow_name(req.name, "name", required=False)
    check.done()


# Runs.
