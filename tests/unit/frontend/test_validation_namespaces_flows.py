"""Namespace and flow requests."""

from __future__ import annotations

import math

import pytest
from google.protobuf import duration_pb2, field_mask_pb2, struct_pb2

from tests.unit.frontend._support import LIMITS, description_of, fields_of, with_fields
from tideflow.api.v1 import blueprint_pb2, flow_service_pb2, namespace_pb2
from tideflow_server.frontend.limits import RequestLimits
from tideflow_server.frontend.validation import (
    validate_describe_flow,
    validate_describe_namespace,
    validate_list_flows,
    validate_list_namespaces,
    validate_register_flow,
    validate_register_namespace,
    validate_update_namespace,
)

State = namespace_pb2.NamespaceState


def config(**overrides: object) -> namespace_pb2.NamespaceConfig:
    return with_fields(
        namespace_pb2.NamespaceConfig(
            retention=duration_pb2.Duration(seconds=7 * 86400),
            rate_limits=namespace_pb2.RateLimits(requests_per_second=200, burst=400),
            limits=namespace_pb2.NamespaceLimits(max_payload_bytes=1024),
        ),
        overrides,
    )


def register_namespace(**overrides: object) -> flow_service_pb2.RegisterNamespaceRequest:
    return with_fields(
        flow_service_pb2.RegisterNamespaceRequest(
            namespace="docs",
            description="Document processing",
            owner_email="platform@example.com",
            data={"team": "ml", "cost-center": "42"},
            config=config(),
        ),
        overrides,
    )


# RegisterNamespace.


def test_register_namespace_accepts_a_well_formed_request() -> None:
    validate_register_namespace(register_namespace(), LIMITS)
    validate_register_namespace(flow_service_pb2.RegisterNamespaceRequest(namespace="d"), LIMITS)


def test_register_namespace_reports_every_problem() -> None:
    request = register_namespace(
        namespace="",
        description="d" * 1025,
        owner_email="not-an-email",
        config=config(
            retention=duration_pb2.Duration(seconds=-1),
            rate_limits=namespace_pb2.RateLimits(requests_per_second=-2),
        ),
    )
    request.data[""] = "empty key"
    assert fields_of(validate_register_namespace, request) == [
        "namespace",
        "description",
        "owner_email",
        'data[""]',
        "config.retention",
        "config.rate_limits.requests_per_second",
    ]


@pytest.mark.parametrize("email", ["a@b", "first.last@example.co.uk"])
def test_owner_email_accepted(email: str) -> None:
    validate_register_namespace(register_namespace(owner_email=email), LIMITS)


@pytest.mark.parametrize("email", ["@b", "a@", "a@b@c", "a b@c", "x" * 250 + "@example.com"])
def test_owner_email_rejected(email: str) -> None:
    assert fields_of(validate_register_namespace, register_namespace(owner_email=email)) == [
        "owner_email"
    ]


@pytest.mark.parametrize("rps", [math.nan, math.inf])
def test_rate_limit_must_be_finite(rps: float) -> None:
    request = register_namespace(
        config=config(rate_limits=namespace_pb2.RateLimits(requests_per_second=rps))
    )
    assert fields_of(validate_register_namespace, request) == [
        "config.rate_limits.requests_per_second"
    ]


@pytest.mark.parametrize("rps", [1e-320, 1e-300, 0.009, -1.0, 1_000_001.0])
def test_rate_limit_is_zero_or_in_the_sane_range(rps: float) -> None:
    request = register_namespace(
        config=config(rate_limits=namespace_pb2.RateLimits(requests_per_second=rps))
    )
    assert description_of(
        validate_register_namespace, request, "config.rate_limits.requests_per_second"
    ) == (f"is {rps:g}, must be 0 (the server default) or 0.01 to 1e+06")


@pytest.mark.parametrize("rps", [0.0, 0.01, 1_000_000.0])
def test_rate_limit_range_bounds_are_accepted(rps: float) -> None:
    validate_register_namespace(
        register_namespace(
            config=config(rate_limits=namespace_pb2.RateLimits(requests_per_second=rps))
        ),
        LIMITS,
    )


def test_burst_is_bounded_on_register_and_update() -> None:
    rate_limits = namespace_pb2.RateLimits(requests_per_second=1, burst=1_000_001)
    request = register_namespace(config=config(rate_limits=rate_limits))
    assert description_of(validate_register_namespace, request, "config.rate_limits.burst") == (
        "is 1000001, over the limit of 1000000 (0 = the server default)"
    )
    burst = update("config.rate_limits.burst", config=config(rate_limits=rate_limits))
    assert fields_of(validate_update_namespace, burst) == ["config.rate_limits.burst"]
    too_slow = namespace_pb2.RateLimits(requests_per_second=1e-320)
    rate = update("config.rate_limits", config=config(rate_limits=too_slow))
    assert fields_of(validate_update_namespace, rate) == ["config.rate_limits.requests_per_second"]


def test_retention_is_bounded() -> None:
    request = register_namespace(config=config(retention=duration_pb2.Duration(seconds=10**10)))
    assert "over the limit of 315360000s" in description_of(
        validate_register_namespace, request, "config.retention"
    )


def test_namespace_data_size_is_bounded() -> None:
    limits = RequestLimits(max_namespace_data_bytes=10)
    request = register_namespace(data={"key": "0123456789"})
    assert description_of(validate_register_namespace, request, "data", limits) == (
        "is 13 bytes, over the limit of 10 bytes"
    )


def test_describe_namespace() -> None:
    validate_describe_namespace(flow_service_pb2.DescribeNamespaceRequest(namespace="d"), LIMITS)
    request = flow_service_pb2.DescribeNamespaceRequest(namespace="UPPER")
    assert fields_of(validate_describe_namespace, request) == ["namespace"]
    assert "must match" in description_of(validate_describe_namespace, request, "namespace")


def test_list_namespaces() -> None:
    validate_list_namespaces(flow_service_pb2.ListNamespacesRequest(), LIMITS)
    validate_list_namespaces(
        flow_service_pb2.ListNamespacesRequest(page_size=1000, next_page_token=b"t"), LIMITS
    )
    request = flow_service_pb2.ListNamespacesRequest(page_size=5000, next_page_token=b"t" * 5000)
    assert fields_of(validate_list_namespaces, request) == ["page_size", "next_page_token"]


# UpdateNamespace.


def update(*paths: str, **overrides: object) -> flow_service_pb2.UpdateNamespaceRequest:
    return with_fields(
        flow_service_pb2.UpdateNamespaceRequest(
            namespace="docs", update_mask=field_mask_pb2.FieldMask(paths=list(paths))
        ),
        overrides,
    )


def test_update_namespace_accepts_updatable_paths() -> None:
    info = namespace_pb2.NamespaceInfo(
        description="new", owner_email="a@b", state=State.NAMESPACE_STATE_DEPRECATED
    )
    request = update(
        "info.description",
        "info.owner_email",
        "info.state",
        "info.data",
        "config.retention",
        "config.rate_limits.burst",
        "config.limits.max_payload_bytes",
        info=info,
        config=config(),
    )
    validate_update_namespace(request, LIMITS)
    validate_update_namespace(update("config", config=config()), LIMITS)


def test_update_namespace_requires_a_mask() -> None:
    assert fields_of(validate_update_namespace, update()) == ["update_mask"]


def test_update_namespace_rejects_fixed_and_unknown_paths_by_index() -> None:
    request = update("info.description", "info.name", "info.id", "config.nope", "info")
    assert fields_of(validate_update_namespace, request) == [
        "update_mask.paths[1]",
        "update_mask.paths[2]",
        "update_mask.paths[3]",
        "update_mask.paths[4]",
    ]
    assert "never change" in description_of(
        validate_update_namespace, request, "update_mask.paths[1]"
    )


def test_update_namespace_checks_only_masked_values() -> None:
    info = namespace_pb2.NamespaceInfo(description="d" * 2000, owner_email="bad")
    bad_config = config(retention=duration_pb2.Duration(seconds=-1))
    request = update("info.description", info=info, config=bad_config)
    assert fields_of(validate_update_namespace, request) == ["info.description"]
    request = update("config", info=info, config=bad_config)
    assert fields_of(validate_update_namespace, request) == ["config.retention"]


def test_update_namespace_state_must_be_registered_or_deprecated() -> None:
    for state in (State.NAMESPACE_STATE_UNSPECIFIED, State.NAMESPACE_STATE_DELETED):
        request = update("info.state", info=namespace_pb2.NamespaceInfo(state=state))
        assert fields_of(validate_update_namespace, request) == ["info.state"]


# RegisterFlow: the envelope only.


def blueprint(name: str = "ingest", blocks: int = 1) -> blueprint_pb2.Blueprint:
    return blueprint_pb2.Blueprint(
        name=name,
        blocks=[
            blueprint_pb2.Block(id=f"b{i}", external=blueprint_pb2.ExternalBlock(block="ocr@1"))
            for i in range(blocks)
        ],
    )


def test_register_flow_accepts_a_blueprint_without_judging_its_contents() -> None:
    # Blocks that could never run (a dangling need) are the engine's to report, not ours.
    dangling = blueprint()
    dangling.blocks[0].needs.append("nowhere")
    request = flow_service_pb2.RegisterFlowRequest(
        namespace="docs", blueprint=dangling, identity="ci"
    )
    validate_register_flow(request, LIMITS)


def test_register_flow_requires_a_blueprint() -> None:
    request = flow_service_pb2.RegisterFlowRequest(namespace="docs")
    assert fields_of(validate_register_flow, request) == ["blueprint"]


def test_register_flow_checks_the_blueprint_name() -> None:
    for name in ("", "1st", "a b", "x" * 129):
        request = flow_service_pb2.RegisterFlowRequest(namespace="docs", blueprint=blueprint(name))
        assert fields_of(validate_register_flow, request) == ["blueprint.name"], name


def test_register_flow_bounds_the_blueprint_size() -> None:
    big = blueprint()
    big.vars["blob"].CopyFrom(struct_pb2.Value(string_value="v" * 2_000_000))
    request = flow_service_pb2.RegisterFlowRequest(namespace="docs", blueprint=big)
    assert description_of(validate_register_flow, request, "blueprint") == (
        f"is {big.ByteSize()} bytes, over the limit of 1048576 bytes"
    )


def test_register_flow_reports_all_problems() -> None:
    request = flow_service_pb2.RegisterFlowRequest(
        namespace="no spaces", blueprint=blueprint("-"), identity="\x00"
    )
    assert fields_of(validate_register_flow, request) == ["namespace", "blueprint.name", "identity"]


# DescribeFlow, ListFlows.


def test_describe_flow() -> None:
    validate_describe_flow(
        flow_service_pb2.DescribeFlowRequest(namespace="docs", name="ingest", version=0), LIMITS
    )
    validate_describe_flow(
        flow_service_pb2.DescribeFlowRequest(namespace="docs", name="ingest", version=2**32 - 1),
        LIMITS,
    )
    assert fields_of(validate_describe_flow, flow_service_pb2.DescribeFlowRequest()) == [
        "namespace",
        "name",
    ]


def test_list_flows() -> None:
    validate_list_flows(flow_service_pb2.ListFlowsRequest(namespace="docs"), LIMITS)
    validate_list_flows(
        flow_service_pb2.ListFlowsRequest(namespace="docs", name="ingest", page_size=10), LIMITS
    )
    request = flow_service_pb2.ListFlowsRequest(namespace="docs", name="?", page_size=-1)
    assert fields_of(validate_list_flows, request) == ["page_size", "name"]


def test_a_namespace_may_bound_its_maps_items_now_that_map_blocks_exist() -> None:
    limits = namespace_pb2.NamespaceLimits(max_map_items=10)
    validate_register_namespace(register_namespace(config=config(limits=limits)), LIMITS)
    validate_update_namespace(update("config.limits", config=config(limits=limits)), LIMITS)
