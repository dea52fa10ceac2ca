"""Who calls: API keys (stored hashed), their roles, and the principal a call runs as."""

from tideflow_server.auth.keys import (
    CLUSTER,
    ApiKeys,
    Principal,
    Role,
    parse_bearer,
)

__all__ = ["CLUSTER", "ApiKeys", "Principal", "Role", "parse_bearer"]
