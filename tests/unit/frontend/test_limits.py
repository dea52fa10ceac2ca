"""RequestLimits defaults and namespace tightening."""

from __future__ import annotations

from datetime import timedelta

import pytest
from pydantic import ValidationError

from tideflow.api.v1 import namespace_pb2
from tideflow_server.frontend.limits import DEFAULT_LIMITS, RequestLimits


def test_defaults() -> None:
    limits = RequestLimits()
    assert limits == DEFAULT_LIMITS
    assert limits.max_payload_bytes == 2 * 1024 * 1024
    assert limits.max_memo_bytes == 32 * 1024
    assert limits.max_blueprint_bytes == 1024 * 1024
    assert limits.max_task_token_bytes == 4096
    assert (limits.max_page_size, limits.default_page_size) == (1000, 100)
    assert limits.max_run_id_length == limits.max_identity_length == 255
    assert limits.max_reason_length == 1024
    assert limits.max_run_timeout == timedelta(days=3650)


def test_limits_are_frozen_and_checked() -> None:
    with pytest.raises(ValidationError):
        DEFAULT_LIMITS.max_payload_bytes = 1
    with pytest.raises(ValidationError):
        RequestLimits(max_payload_bytes=0)
    with pytest.raises(ValidationError):
        RequestLimits(default_page_size=2000)
    with pytest.raises(ValidationError):
        RequestLimits(namespace_pattern="(")
    with pytest.raises(ValidationError):
        RequestLimits(max_page_sise=10)  # type: ignore[call-arg]


def test_a_namespace_can_only_tighten_the_payload_limit() -> None:
    tight = DEFAULT_LIMITS.with_namespace_limits(
        namespace_pb2.NamespaceLimits(max_payload_bytes=1024)
    )
    assert tight.max_payload_bytes == 1024
    assert tight.max_memo_bytes == DEFAULT_LIMITS.max_memo_bytes
    loose = namespace_pb2.NamespaceLimits(max_payload_bytes=10 * 1024 * 1024)
    assert DEFAULT_LIMITS.with_namespace_limits(loose) is DEFAULT_LIMITS
    default = namespace_pb2.NamespaceLimits()
    assert DEFAULT_LIMITS.with_namespace_limits(default) is DEFAULT_LIMITS
