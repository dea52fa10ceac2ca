"""Issue 17: bad input at the edge is never INTERNAL or UNKNOWN. Each case answers
INVALID_ARGUMENT naming its field (or another precise status), and changes nothing."""

from __future__ import annotations

from typing import Any

import grpc
import pytest

from tests.support.cluster import Cluster
from tests.support.flows import Client
from tideflow.api.v1 import flow_service_pb2
from tideflow_server.rpc.errors import InvalidArgument, ServiceError, from_rpc_error


async def _rejected(call: Any) -> ServiceError:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call
    return from_rpc_error(raised.value)


async def test_a_huge_namespace_data_key_is_not_echoed_whole(
    cluster: Cluster, client: Client
) -> None:
    """Item 8: the 16 KB key made the status bigger than the client takes (it saw
    RESOURCE_EXHAUSTED); the violation names the key, cut short."""
    key = "k" * 20_000
    request = flow_service_pb2.RegisterNamespaceRequest(namespace="huge-key", data={key: "v"})
    error = await _rejected(client.stub.RegisterNamespace(request, timeout=10))
    assert isinstance(error, InvalidArgument), error
    [violation] = error.violations
    assert violation.field.startswith('data["kkkk')
    assert violation.field.endswith("characters)")
    assert "over the limit of 255" in violation.description
