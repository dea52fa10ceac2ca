"""Bounds the frontend enforces on every public request before it reaches history or matching.

Lengths count characters; sizes count serialized protobuf bytes. A pattern and a length both
apply to the same field: the length is checked first so that the error names the length.
"""

from __future__ import annotations

import re
from datetime import timedelta

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from tideflow.api.v1 import namespace_pb2

KIB = 1024
MIB = 1024 * KIB


class RequestLimits(BaseModel):
    """Server-wide request limits. A namespace may only tighten them, see
    `with_namespace_limits`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # Identifiers.
    namespace_pattern: str = r"^[a-z0-9][a-z0-9._-]{0,62}$"
    max_namespace_length: int = Field(default=63, gt=0)
    max_run_id_length: int = Field(default=255, gt=0)
    """run_id: printable characters only (no control or format characters)."""
    max_request_id_length: int = Field(default=255, gt=0)
    max_identity_length: int = Field(default=255, gt=0)
    """Client and poller identities alike."""
    max_signal_name_length: int = Field(default=255, gt=0)
    max_event_type_length: int = Field(default=255, gt=0)
    max_correlation_key_length: int = Field(default=255, gt=0)
    """Event blocks compute keys of at most 255 characters: a longer one matches no block."""
    task_queue_pattern: str = r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,254}$"
    max_task_queue_name_length: int = Field(default=255, gt=0)
    flow_name_pattern: str = r"^[A-Za-z][A-Za-z0-9_.-]{0,127}$"
    """Flow names and blueprint names are the same thing."""
    max_flow_name_length: int = Field(default=128, gt=0)

    # Sizes.
    max_payload_bytes: int = Field(default=2 * MIB, gt=0)
    """Sum of the serialized payloads of one Payloads field (input, result, details...)."""
    max_json_depth: int = Field(default=24, gt=0, le=32)
    """Nesting of arrays and objects in a JSON payload the engine reads (inputs, results).
    The engine keeps such values as google.protobuf.Value, up to three message levels per
    JSON level, and protobuf decoders refuse messages nested more than 100 levels: past 32
    a run's state could no longer be read back, and the rest leaves room for blueprints
    that wrap these values in their own objects."""
    max_memo_bytes: int = Field(default=32 * KIB, gt=0)
    max_blueprint_bytes: int = Field(default=1 * MIB, gt=0)
    max_failure_bytes: int = Field(default=2 * MIB, gt=0)
    """A worker's Failure, message, stack trace, cause chain and details included."""
    max_failure_causes: int = Field(default=16, gt=0, le=64)
    """Failures a worker's Failure may wrap through `cause`, one under the other. The engine
    stores the Failure under its own wrapper inside events and run state, and protobuf
    decoders refuse messages nested more than 100 levels: a longer chain could be accepted
    here and never read back."""
    max_task_token_bytes: int = Field(default=4 * KIB, gt=0)
    max_page_token_bytes: int = Field(default=4 * KIB, gt=0)

    # Free text.
    max_reason_length: int = Field(default=1024, gt=0)
    max_description_length: int = Field(default=1024, gt=0)
    max_email_length: int = Field(default=255, gt=0)
    max_namespace_data_bytes: int = Field(default=32 * KIB, gt=0)
    """Keys and values of a namespace's `data` labels, UTF-8 bytes summed."""
    max_map_key_length: int = Field(default=255, gt=0)
    """Keys of memo fields and namespace data labels."""

    # Pages.
    max_page_size: int = Field(default=1000, gt=0)
    default_page_size: int = Field(default=100, gt=0)
    """What page_size 0 means."""

    # Durations (all must also be non-negative).
    max_run_timeout: timedelta = timedelta(days=3650)
    max_retention: timedelta = timedelta(days=3650)

    # A namespace's own rate limit (`NamespaceConfig.rate_limits`; 0 = the server default).
    min_namespace_rps: float = Field(default=0.01, gt=0)
    """The slowest rate a namespace may set: one call every 100 s. Slower rates only lock the
    namespace out, and their waits overflow the bucket arithmetic."""
    max_namespace_rps: float = Field(default=1_000_000.0, gt=0)
    max_namespace_burst: int = Field(default=1_000_000, gt=0)

    @field_validator("namespace_pattern", "task_queue_pattern", "flow_name_pattern")
    @classmethod
    def _compiles(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as e:
            raise ValueError(f"not a regular expression: {e}") from e
        return value

    @model_validator(mode="after")
    def _default_page_fits(self) -> RequestLimits:
        if self.default_page_size > self.max_page_size:
            raise ValueError("default_page_size must not exceed max_page_size")
        return self

    @model_validator(mode="after")
    def _rate_range_is_a_range(self) -> RequestLimits:
        if self.min_namespace_rps > self.max_namespace_rps:
            raise ValueError("min_namespace_rps must not exceed max_namespace_rps")
        return self

    def with_namespace_limits(self, limits: namespace_pb2.NamespaceLimits) -> RequestLimits:
        """These limits, tightened by a namespace's own (`NamespaceConfig.limits`). Zero there
        means the server default, and a namespace cannot raise a server limit."""
        if limits.max_payload_bytes and limits.max_payload_bytes < self.max_payload_bytes:
            return self.model_copy(update={"max_payload_bytes": limits.max_payload_bytes})
        return self


DEFAULT_LIMITS = RequestLimits()
